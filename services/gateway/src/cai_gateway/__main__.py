"""Entry point: `python -m cai_gateway`.

With `GATEWAY_WORKERS` > 1 (or 0 on a pod allowed several cores) this process is a supervisor
(cai_common.supervisor): it binds the HTTP port once and runs that many gateway processes that
accept on the inherited socket, each a `GatewayServer`; it serves their summed metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING

import anyio
import uvicorn

from cai_common.process import service_process
from cai_common.supervisor import (
    Supervisor,
    die_with_supervisor,
    module_command,
    process_count,
    worker_index,
)

if TYPE_CHECKING:
    from cai_gateway.config import Settings

LISTEN_FD = "CAI_LISTEN_FD"  # a worker's inherited listening socket


class GatewayServer(uvicorn.Server):
    """uvicorn's server, which tells the app the moment it is asked to stop.

    uvicorn drains open responses before it runs the app's shutdown, so without this the app
    would learn of the shutdown only once its streams were cut: it could not tell them from
    clients leaving, and would cancel runs whose clients it had just told to reconnect.
    """

    def __init__(self, config: uvicorn.Config, stopping: anyio.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: set `stopping` (on the event loop), then uvicorn's own handling."""
        try:
            asyncio.get_running_loop().call_soon_threadsafe(self.stopping.set)
        except RuntimeError:  # not serving yet: nothing is streaming
            pass
        super().handle_exit(sig, frame)


def supervise(settings: Settings, workers: int) -> int:
    """Bind the port, run `workers` gateways on it until SIGTERM; the exit code."""
    from cai_common.logging import setup_logging

    setup_logging("gateway", settings.log_level)
    # Bound once and inherited: a connection waiting in the backlog is accepted by whichever
    # worker is free, and is not lost when a worker dies (as it would be with SO_REUSEPORT).
    family = socket.AF_INET6 if ":" in settings.gateway_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.gateway_host, settings.gateway_port))
    sock.listen(2048)
    sock.set_inheritable(True)
    fd = sock.fileno()
    env = {"GATEWAY_WORKERS": "1", "GATEWAY_METRICS_PORT": "0", LISTEN_FD: str(fd)}
    try:
        return Supervisor(
            "gateway",
            workers,
            module_command("cai_gateway"),
            lambda index, generation: env,
            metrics_port=settings.gateway_metrics_port,
            metrics_host=settings.gateway_host,
            pass_fds=(fd,),
        ).run()
    finally:
        sock.close()


def main() -> None:
    """Load settings, set up logging and tracing, serve (or supervise the workers that serve)."""
    from cai_common import aio

    aio.install()  # before the libraries that call asyncio.wait_for are imported
    from cai_gateway.config import Settings

    settings = Settings()
    workers = process_count(settings.gateway_workers)
    if worker_index() is None and workers > 1:
        sys.exit(supervise(settings, workers))
    if worker_index() is not None:
        die_with_supervisor()

    from cai_common.grpc_tls import TLSConfigError
    from cai_common.metrics import start_metrics_server
    from cai_gateway.app import create_app

    with service_process("gateway", settings.log_level):
        try:
            app = create_app(settings)
        except TLSConfigError as exc:
            logging.getLogger("cai_gateway").error(str(exc))
            sys.stderr.write(f"cai-gateway: {exc}\n")
            sys.exit(2)
        # Prometheus metrics on their own port: the public port (behind the Ingress) has none.
        start_metrics_server(settings.gateway_metrics_port, settings.gateway_host)
        config = uvicorn.Config(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            loop="uvloop",
            http="httptools",
        )
        server = GatewayServer(config, app.state.shutdown_event)
        inherited = os.environ.get(LISTEN_FD, "")
        server.run(sockets=[socket.socket(fileno=int(inherited))] if inherited else None)
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the app failed to start (the log says why)


if __name__ == "__main__":
    main()

"""Entry point: `python -m cai_gateway`."""

from __future__ import annotations

import asyncio
import logging
import sys
from types import FrameType

import anyio
import uvicorn

from cai_common.process import service_process


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


def main() -> None:
    """Load settings, set up logging and tracing, serve."""
    from cai_common import aio

    aio.install()  # before the libraries that call asyncio.wait_for are imported
    from cai_common.grpc_tls import TLSConfigError
    from cai_common.metrics import start_metrics_server
    from cai_gateway.app import create_app
    from cai_gateway.config import Settings

    settings = Settings()
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
        server.run()
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the app failed to start (the log says why)


if __name__ == "__main__":
    main()

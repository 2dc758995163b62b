"""Entry point: `python -m cai_gateway`."""

from __future__ import annotations

import logging
import sys

import uvicorn

from cai_common.process import service_process


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
        uvicorn.run(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            loop="uvloop",
            http="httptools",
        )


if __name__ == "__main__":
    main()

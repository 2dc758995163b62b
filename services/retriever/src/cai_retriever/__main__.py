"""Entry point: `python -m cai_retriever` (console script `cai-retriever`)."""

from __future__ import annotations

import asyncio


def main() -> None:
    """Load settings, set up logging and serve until SIGTERM."""
    from cai_common import aio

    aio.install()  # before the libraries that call asyncio.wait_for are imported
    from cai_common.logging import setup_logging
    from cai_common.telemetry import setup_tracing, shutdown_tracing
    from cai_retriever.config import Settings
    from cai_retriever.server import serve

    settings = Settings()
    setup_logging("retriever", settings.log_level)
    setup_tracing("cai-retriever")
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()

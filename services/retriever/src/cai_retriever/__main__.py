"""Entry point: `python -m cai_retriever` (console script `cai-retriever`)."""

from __future__ import annotations

import asyncio


def main() -> None:
    """Load settings, set up logging and serve until SIGTERM."""
    from cai_common import aio

    aio.install()  # before the libraries that call asyncio.wait_for are imported
    from cai_common.process import service_process
    from cai_retriever.config import Settings
    from cai_retriever.server import serve

    settings = Settings()
    with service_process("retriever", settings.log_level):
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()

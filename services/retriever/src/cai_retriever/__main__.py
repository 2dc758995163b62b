"""Entry point: `python -m cai_retriever` (console script `cai-retriever`)."""

from __future__ import annotations

import asyncio
import logging
import sys


def main() -> None:
    """Load settings, set up logging and serve until SIGTERM."""
    from cai_common import aio

    aio.install()  # before the libraries that call asyncio.wait_for are imported
    from cai_common.grpc_tls import TLSConfigError
    from cai_common.process import service_process
    from cai_retriever.config import Settings
    from cai_retriever.server import serve

    settings = Settings()
    with service_process("retriever", settings.log_level):
        try:
            asyncio.run(serve(settings))
        except TLSConfigError as exc:
            logging.getLogger("cai_retriever").error(str(exc))
            sys.stderr.write(f"cai-retriever: {exc}\n")
            sys.exit(2)


if __name__ == "__main__":
    main()

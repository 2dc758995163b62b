"""Entry point: `python -m cai_orchestrator`."""

from __future__ import annotations

import logging
import sys

import uvloop

from cai_common.process import service_process


def main() -> None:
    """Load settings, set up logging, serve."""
    from cai_common import aio

    aio.install()  # before the libraries that call asyncio.wait_for are imported
    from cai_common.grpc_tls import TLSConfigError
    from cai_orchestrator.assistants import AssistantsError
    from cai_orchestrator.checkpoint import CheckpointerError
    from cai_orchestrator.config import Settings
    from cai_orchestrator.server import serve

    settings = Settings()
    with service_process("orchestrator", settings.log_level):
        try:
            uvloop.run(serve(settings))  # libuv's loop: a third less CPU per token than asyncio's
        except (CheckpointerError, AssistantsError, TLSConfigError) as exc:
            logging.getLogger("cai_orchestrator").error(str(exc))
            sys.stderr.write(f"cai-orchestrator: {exc}\n")
            sys.exit(2)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

"""Entry point: `python -m cai_orchestrator`."""

from __future__ import annotations

import logging
import sys

import uvloop

from cai_common.logging import setup_logging
from cai_common.telemetry import setup_tracing, shutdown_tracing


def main() -> None:
    """Load settings, set up logging, serve."""
    from cai_common import aio

    aio.install()  # before the libraries that call asyncio.wait_for are imported
    from cai_orchestrator.assistants import AssistantsError
    from cai_orchestrator.checkpoint import CheckpointerError
    from cai_orchestrator.config import Settings
    from cai_orchestrator.server import serve

    settings = Settings()
    setup_logging("orchestrator", settings.log_level)
    setup_tracing("cai-orchestrator")
    try:
        uvloop.run(serve(settings))  # libuv's loop: a third less CPU per token than asyncio's
    except (CheckpointerError, AssistantsError) as exc:
        logging.getLogger("cai_orchestrator").error(str(exc))
        sys.stderr.write(f"cai-orchestrator: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()

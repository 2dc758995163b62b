"""Entry point: `python -m cai_orchestrator`.

With `ORCHESTRATOR_PROCESSES` > 1 (or 0 on a pod allowed several cores) this process is a
supervisor (cai_common.supervisor) that runs that many orchestrator processes: each is a replica
of its own (queue consumer, leases, reclaim, log tailer), all serve the same gRPC port
(SO_REUSEPORT, grpc's default on Linux), and the supervisor serves their summed metrics.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import TYPE_CHECKING

import uvloop

from cai_common.process import service_process
from cai_common.supervisor import (
    Supervisor,
    die_with_supervisor,
    module_command,
    process_count,
    worker_index,
)

if TYPE_CHECKING:
    from cai_orchestrator.config import Settings


def supervise(settings: Settings, processes: int) -> int:
    """Run `processes` orchestrators until SIGTERM; the exit code."""
    from cai_common.logging import setup_logging

    setup_logging("orchestrator", settings.log_level)
    explicit_id = os.environ.get("REPLICA_ID", "")
    per_process = math.ceil(settings.max_concurrent_runs / processes)

    def worker_env(index: int, generation: int) -> dict[str, str]:
        env = {
            "ORCHESTRATOR_PROCESSES": "1",
            "METRICS_PORT": "0",  # the supervisor serves the pod's metrics
            "MAX_CONCURRENT_RUNS": str(per_process),
        }
        if explicit_id:  # (the default id names the pid: distinct already)
            env["REPLICA_ID"] = f"{explicit_id}/{index}.{generation}"
        return env

    return Supervisor(
        "orchestrator",
        processes,
        module_command("cai_orchestrator"),
        worker_env,
        metrics_port=settings.metrics_port,
    ).run()


def main() -> None:
    """Load settings, set up logging, serve (or supervise the processes that serve)."""
    from cai_common import aio

    aio.install()  # before the libraries that call asyncio.wait_for are imported
    from cai_orchestrator.config import Settings

    settings = Settings()
    processes = process_count(settings.orchestrator_processes)
    if worker_index() is None and processes > 1:
        sys.exit(supervise(settings, processes))
    if worker_index() is not None:
        die_with_supervisor()

    from cai_common.grpc_tls import TLSConfigError
    from cai_orchestrator.assistants import AssistantsError
    from cai_orchestrator.checkpoint import CheckpointerError
    from cai_orchestrator.server import serve

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

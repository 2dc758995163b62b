"""What every Cai service process sets up around its server: JSON logs and tracing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cai_common.logging import setup_logging
from cai_common.telemetry import setup_tracing, shutdown_tracing


@contextlib.contextmanager
def service_process(name: str, log_level: str) -> Iterator[None]:
    """JSON logs and tracing for the service `cai-<name>`; spans are flushed when it ends."""
    setup_logging(name, log_level)
    setup_tracing(f"cai-{name}")
    try:
        yield
    finally:
        shutdown_tracing()

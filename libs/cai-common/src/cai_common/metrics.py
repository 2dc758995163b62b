"""Prometheus helpers: a metrics HTTP server for gRPC services."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Expose the default registry on http://host:port/metrics (a daemon thread, not the loop)."""
    if port <= 0:
        return
    start_http_server(port, addr=host)
    log.info("metrics listening", extra={"port": port})

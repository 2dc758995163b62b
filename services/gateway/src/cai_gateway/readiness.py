"""Readiness of the orchestrator, cached briefly so /readyz stays cheap under frequent probes."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class Readiness:
    """Asks the orchestrator's gRPC health service at most once per `ttl_s`."""

    def __init__(self, channel: grpc.aio.Channel, ttl_s: float = 1.0, timeout_s: float = 1.0):
        self.stub = health_pb2_grpc.HealthStub(channel)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._checked_at = float("-inf")
        self._ready = False

    async def ready(self) -> bool:
        """True when the orchestrator reports SERVING."""
        now = time.monotonic()
        if now - self._checked_at < self.ttl_s:
            return self._ready
        try:
            reply = await self.stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s
            )
            self._ready = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            self._ready = False
        self._checked_at = now
        return self._ready

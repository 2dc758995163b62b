"""What /readyz reports: whether this gateway can serve, and how its dependencies are doing.

Readiness is the gateway's own state (it is up and not shutting down), not its dependencies'.
Every gateway shares the same orchestrators: failing readiness when they are away would take
every gateway out of the load balancer at once — clients would get the proxy's bare errors
instead of Cai's 503 problem with `Retry-After`, and the gateways would flap together with each
orchestrator restart. So with the orchestrator away, even entirely, a gateway stays ready: it
still authenticates, rate-limits and answers every request (503 + `Retry-After` for what needs
an orchestrator), and /readyz says `degraded`, naming the dependency, as the
`cai_gateway_dependency_up` gauge does. The orchestrators' own readiness (their gRPC health) is
what takes a broken orchestrator out of rotation.
"""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Gauge

DEPENDENCY_UP = Gauge(
    "cai_gateway_dependency_up",
    "Whether a dependency passed the gateway's last check (1) or not (0; with several worker "
    "processes, 0 when any worker's last check failed).",
    ["dependency"],
    multiprocess_mode="livemin",
)

SERVING = "serving"
NOT_SERVING = "not_serving"  # it answers, but says it cannot take work (Redis away, draining)
UNAVAILABLE = "unavailable"  # no answer


class Readiness:
    """Asks the orchestrator's gRPC health service at most once per `ttl_s`."""

    def __init__(self, channel: grpc.aio.Channel, ttl_s: float = 1.0, timeout_s: float = 1.0):
        self.stub = health_pb2_grpc.HealthStub(channel)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._checked_at = float("-inf")
        self._orchestrator = UNAVAILABLE

    async def orchestrator(self) -> str:
        """The orchestrator's health as the last check saw it: serving, not_serving or
        unavailable (with several replicas, the one the check reached)."""
        now = time.monotonic()
        if now - self._checked_at < self.ttl_s:
            return self._orchestrator
        try:
            reply = await self.stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s
            )
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            self._orchestrator = SERVING if serving else NOT_SERVING
        except grpc.aio.AioRpcError:
            self._orchestrator = UNAVAILABLE
        self._checked_at = now
        DEPENDENCY_UP.labels("orchestrator").set(1 if self._orchestrator == SERVING else 0)
        return self._orchestrator

"""A grpc.aio server runner: health service, SIGTERM drain, metrics and client channel options."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cai_common.grpc_tls import TLSFiles, TrustedClientsInterceptor
from cai_common.settings import GrpcServerSettings

log = logging.getLogger(__name__)

OVERALL = ""  # the health service name that stands for the whole server (readiness)
# Liveness: SERVING while the process runs, whatever its dependencies do, so an outage of Redis
# or Qdrant makes pods not-ready (no traffic) instead of restarting them.
LIVENESS = "liveness"


def server_options(max_connection_age_s: float = 300.0) -> list[tuple[str, int]]:
    """Server channel args: bounded connection age so round_robin clients rebalance."""
    age_ms = int(max_connection_age_s * 1000)
    return [
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]


# Reads that are safe to repeat: retried on UNAVAILABLE (a replica stopping or restarting) so a
# call that lands on a draining pod is answered by another. Writes are never retried here.
IDEMPOTENT_METHODS = {
    "cai.v1.Orchestrator": [
        "GetThread", "GetThreadState", "GetRun", "ListRuns", "StreamRun", "SearchThreads",
        "GetThreadHistory", "SearchAssistants", "GetAssistant", "GetAssistantSchemas",
    ],
    "cai.v1.Retriever": ["Search", "ListCollections", "Stats"],
    "grpc.health.v1.Health": ["Check"],
}  # fmt: skip
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method}
                    for service, methods in IDEMPOTENT_METHODS.items()
                    for method in methods
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def client_channel(
    target: str,
    interceptors: Iterable[grpc.aio.ClientInterceptor] = (),
    tls: TLSFiles | None = None,
    server_name: str = "",
) -> grpc.aio.Channel:
    """An aio channel with round_robin load balancing over every resolved address.

    Use `dns:///host:port` targets in Kubernetes (headless Services) so each pod is a subchannel.
    With `tls`, the channel is mutual TLS: the server's certificate must be signed by the CA and
    name the dialled host (or `server_name`), and ours proves who we are.
    """
    options = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
        # Replicas restart in seconds; gRPC's default reconnect backoff grows to 120 s, which
        # would keep a restarted pod unused long after it is ready.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]
    from cai_common.telemetry import grpc_client_interceptors

    chain = [*grpc_client_interceptors(), *interceptors]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=chain)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(
        target, tls.channel_credentials(), options=options, interceptors=chain
    )


class GrpcService:
    """Runs a grpc.aio server until SIGTERM/SIGINT, then drains.

    Health tells the truth: the overall status stays NOT_SERVING until `set_serving(True)` is
    called (by the service, once its dependencies answer), and turns NOT_SERVING first on shutdown.

    Args:
        tls: Serve mutual TLS with these files (plaintext when None); callers must then present
            a certificate naming one of `trusted_clients` (cai_common.grpc_tls).
        reflection: Serve grpc.reflection (off by default: it maps the API for any caller).
        health_port: Also serve grpc.health.v1, alone and in plaintext, on this port (0: a free
            one) for kubelet probes, which cannot present a client certificate. None: no such port.
    """

    def __init__(
        self,
        name: str,
        port: int,
        host: str = "0.0.0.0",
        max_connection_age_s: float = 300.0,
        interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
        *,
        tls: TLSFiles | None = None,
        trusted_clients: Iterable[str] = (),
        reflection: bool = False,
        health_port: int | None = None,
    ) -> None:
        self.name = name
        from cai_common.metrics import GrpcMetricsInterceptor
        from cai_common.telemetry import grpc_server_interceptors

        chain = [*grpc_server_interceptors(), GrpcMetricsInterceptor(), *interceptors]
        if tls is not None:
            chain.append(TrustedClientsInterceptor(trusted_clients))
        self.server = grpc.aio.server(
            options=server_options(max_connection_age_s), interceptors=chain
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.reflection = reflection
        self._service_names: list[str] = []
        address = f"{host}:{port}"
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, tls.server_credentials())
        self.tls = tls is not None
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        if health_port is not None:
            self.health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(f"{host}:{health_port}")
        self.stopping = asyncio.Event()

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: GrpcServerSettings,
        interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    ) -> GrpcService:
        """A server as the settings say: port, TLS and trusted clients, reflection, health port.

        Raises:
            TLSConfigError: the TLS settings are incomplete or unreadable.
        """
        return cls(
            name,
            settings.grpc_port,
            settings.grpc_host,
            settings.grpc_max_connection_age_seconds,
            interceptors,
            tls=settings.grpc_tls(),
            trusted_clients=settings.grpc_trusted_client_names(),
            reflection=settings.grpc_reflection,
            health_port=settings.grpc_health_port or None,
        )

    def add(self, full_name: str, register: Callable[[grpc.aio.Server], None]) -> None:
        """Register a servicer under its full proto service name (used by health and reflection)."""
        register(self.server)
        self._service_names.append(full_name)

    async def set_serving(self, serving: bool) -> None:
        """Set the overall and per-service health status."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [OVERALL, *self._service_names]:
            await self.health.set(name, status)

    async def start(self) -> None:
        """Start listening; health is NOT_SERVING until the service says otherwise."""
        if self.reflection:
            names = [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, self.server)
        await self.set_serving(False)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        log.info(
            "grpc server listening",
            extra={
                "port": self.port,
                "server": self.name,
                "tls": self.tls,
                "reflection": self.reflection,
                "health_port": self.health_port,
            },
        )

    async def stop(self, grace_s: float) -> None:
        """Stop the server within `grace_s`, then the health-only port."""
        await self.server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(0)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set `stopping`; the caller's `run` loop then drains."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

    async def run(
        self,
        grace_s: float,
        on_stop: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """Serve until `stopping` is set, then drain within one deadline `grace_s` away:
        NOT_SERVING, `on_stop(deadline)` (drain work; `deadline` on the event loop's clock), then
        stop the server in what is left, so the whole shutdown fits `grace_s`."""
        await self.stopping.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        log.info("shutting down", extra={"grace_s": grace_s, "server": self.name})
        await self.health.enter_graceful_shutdown()
        if on_stop is not None:
            await on_stop(deadline)
        await self.stop(max(deadline - loop.time(), 0.0))
        log.info("stopped", extra={"server": self.name})

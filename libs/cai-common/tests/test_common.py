"""cai_common: gRPC health semantics, JSON logs with context, secret redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cai_common.grpc_server import LIVENESS, GrpcService, client_channel
from cai_common.logging import bind, log_context, setup_logging
from cai_common.metrics import GRPC_REQUESTS
from cai_common.settings import redact_url

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(stub: health_pb2_grpc.HealthStub, name: str) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
    return int(reply.status)


async def test_health_tells_the_truth_and_liveness_does_not_follow_readiness() -> None:
    service = GrpcService("test", 0, "127.0.0.1")
    await service.start()
    channel = client_channel(f"127.0.0.1:{service.port}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        assert await _status(stub, "") == NOT_SERVING  # not ready until the service says so
        assert await _status(stub, LIVENESS) == SERVING
        await service.set_serving(True)
        assert await _status(stub, "") == SERVING
        await service.set_serving(False)  # a dependency went away
        assert await _status(stub, "") == NOT_SERVING
        assert await _status(stub, LIVENESS) == SERVING  # still alive: no restart
        checks = GRPC_REQUESTS.labels("Check", "OK")._value.get()  # noqa: SLF001
        assert checks >= 5  # every call above went through the metrics interceptor
        service.stopping.set()
        await service.run(grace_s=0.1)
        try:
            await _status(stub, "")
            raise AssertionError("server still answering after stop")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()


async def test_run_stops_the_server_in_what_the_drain_left_of_one_deadline() -> None:
    """`on_stop` and the server's stop share `grace_s`: the stop gets only what is left."""
    service = GrpcService("test", 0, "127.0.0.1")
    await service.start()
    loop = asyncio.get_running_loop()
    seen: dict[str, float] = {}
    stop_graces: list[float] = []
    real_stop = service.stop

    async def drain(deadline: float) -> None:
        seen["deadline_in"] = deadline - loop.time()
        await asyncio.sleep(0.3)

    async def stop(grace_s: float) -> None:
        stop_graces.append(grace_s)
        await real_stop(grace_s)

    service.stop = stop  # type: ignore[method-assign]
    service.stopping.set()
    await service.run(grace_s=1.0, on_stop=drain)
    assert 0.9 < seen["deadline_in"] <= 1.0
    (grace,) = stop_graces
    assert 0.5 < grace <= 0.7


def test_json_logs_carry_bound_ids() -> None:
    setup_logging("svc", "INFO")
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.setStream(buffer)  # type: ignore[attr-defined]
    token = bind(run_id="r1", thread_id="t1", tenant="acme")
    try:
        logging.getLogger("x").info("hello", extra={"k": 1})
    finally:
        log_context.reset(token)
    record = json.loads(buffer.getvalue().strip().splitlines()[-1])
    assert record["message"] == "hello" and record["level"] == "INFO"
    assert (record["service"], record["run_id"], record["thread_id"], record["tenant"]) == (
        "svc",
        "r1",
        "t1",
        "acme",
    )
    assert record["k"] == 1


def test_redact_url_hides_passwords_only() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("postgresql://u:p@db/x") == "postgresql://u:***@db/x"
    assert redact_url("redis://host:6379") == "redis://host:6379"

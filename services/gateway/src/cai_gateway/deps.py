"""Typed FastAPI dependencies: settings, the caller (auth + rate limit), the orchestrator client
bound to the caller, stream slots (the per-key concurrency cap) and the work meter (rate-limit
tokens in proportion to the records a request reads)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter

from cai.v1 import common_pb2
from cai_common.runs import parse_event_id
from cai_gateway.auth import ApiKey, KeyRing, presented_key
from cai_gateway.config import Settings
from cai_gateway.limits import Limiter, LimiterUnavailable, StreamSlot, work_cost
from cai_gateway.orchestrator import OrchestratorClient
from cai_gateway.problems import Problem

log = logging.getLogger(__name__)

AUTH_FAILURES = Counter(
    "cai_gateway_auth_failures_total", "Requests refused for a missing or unknown API key.",
    ["reason"],
)  # fmt: skip

ANONYMOUS_ID = "anonymous"

# Every dependency is a coroutine: FastAPI runs a plain function in a worker thread, a hop per
# dependency per request that cost the gateway more CPU than the work itself.

# Declared for OpenAPI (the security schemes /docs offers); parsing is done by `get_caller`.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_api_key = APIKeyHeader(name="X-Api-Key", auto_error=False, description="The API key")


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


async def get_limiter(request: Request) -> Limiter | None:
    """The Redis-backed limiter (None when limits are off)."""
    limiter: Limiter | None = request.app.state.limiter
    return limiter


@dataclass(frozen=True)
class Caller:
    """Who is calling: the principal sent to the orchestrator and the key's limits."""

    principal: common_pb2.Principal
    key_id: str
    rate_per_second: float
    burst: int
    max_streams: int
    anonymous: bool = False
    subject: str = ""  # who holds the key (the keys file's `subject`), for the access log


def _unauthorized(reason: str, detail: str) -> Problem:
    AUTH_FAILURES.labels(reason).inc()
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="cai"'})


def _caller_for(key: ApiKey, settings: Settings) -> Caller:
    def pick(override: float | int | None, default: float | int) -> float | int:
        return default if override is None else override

    return Caller(
        principal=common_pb2.Principal(
            tenant_id=key.tenant,
            subject=key.id,
            tier=key.tier,
            max_running_runs=key.max_running_runs or 0,
            max_queued_runs=key.max_queued_runs or 0,
        ),
        key_id=key.id,
        rate_per_second=float(pick(key.rate_limit_per_second, settings.rate_limit_per_second)),
        burst=int(pick(key.rate_limit_burst, settings.rate_limit_burst)),
        max_streams=int(pick(key.max_concurrent_streams, settings.max_concurrent_streams)),
        subject=key.subject or key.id,
    )


async def get_caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_api_key: Annotated[str | None, Depends(_api_key)],
) -> Caller:
    """Authenticate the request (API key, or anonymous when allowed) and apply its rate limit."""
    settings: Settings = request.app.state.settings
    keyring: KeyRing = request.app.state.keyring
    key = presented_key(request.headers.get("authorization"), x_api_key)
    caller: Caller | None = None
    if key is not None:
        await keyring.refresh()
        found = keyring.authenticate(key)
        if found is not None:
            caller = _caller_for(found, settings)
        elif not settings.allow_anonymous:
            raise _unauthorized("unknown_key", "The API key is not valid")
    elif not settings.allow_anonymous:
        raise _unauthorized(
            "missing_key", "An API key is required (Authorization: Bearer <key> or X-Api-Key)"
        )
    if caller is None:
        # Local use only: anonymous callers are not limited (benchmarks drive hundreds of
        # concurrent streams through `make up`).
        caller = Caller(
            principal=common_pb2.Principal(
                tenant_id=settings.anonymous_tenant, subject=ANONYMOUS_ID
            ),
            key_id=ANONYMOUS_ID,
            rate_per_second=0.0,
            burst=0,
            max_streams=0,
            anonymous=True,
            subject=ANONYMOUS_ID,
        )
    request.state.caller = caller
    await _take_tokens(request.app.state.limiter, caller, 1)
    return caller


async def _take_tokens(
    limiter: Limiter | None, caller: Caller, cost: int, *, debit: bool = False
) -> None:
    """Take `cost` tokens from the caller's bucket (429 when it cannot pay, unless `debit`)."""
    if limiter is None or caller.rate_per_second <= 0 or cost <= 0:
        return
    try:
        decision = await limiter.check_rate(
            caller.key_id, caller.rate_per_second, caller.burst, cost, debit=debit
        )
    except LimiterUnavailable:
        raise Problem(
            503, "Rate limits cannot be checked right now", headers={"Retry-After": "2"}
        ) from None
    if not decision.allowed:
        raise Problem(
            429,
            f"Rate limit exceeded: {caller.rate_per_second:g} requests/s, "
            f"bursts of {caller.burst}"
            + (f"; this request needs {cost} more tokens (1 per 100 records)" if cost > 1 else ""),
            headers={"Retry-After": str(decision.retry_after_s)},
            retry_after=decision.retry_after_s,
        )


@dataclass
class WorkMeter:
    """Charges a request that may read many records for them, beyond the token every request
    pays (`work_cost`): what it asks for up front, what it read in excess of that afterwards."""

    limiter: Limiter | None
    caller: Caller
    paid: int = 1  # tokens taken so far (get_caller took one)

    async def reserve(self, records: int) -> None:
        """Before the work: pay for `records` (429 if the bucket cannot). Never more than a full
        bucket holds, so every request can go through eventually."""
        cost = min(work_cost(records), max(1, self.caller.burst)) - self.paid
        await _take_tokens(self.limiter, self.caller, cost)
        self.paid += max(0, cost)

    async def settle(self, records: int) -> None:
        """After the work: pay for what was read beyond what was reserved, as a debt the
        key's next requests wait for."""
        cost = work_cost(records) - self.paid
        await _take_tokens(self.limiter, self.caller, cost, debit=True)
        self.paid += max(0, cost)


async def get_work_meter(
    request: Request, caller: Annotated[Caller, Depends(get_caller)]
) -> WorkMeter:
    """The request's work meter (rate-limit tokens in proportion to the records it reads)."""
    return WorkMeter(request.app.state.limiter, caller)


async def get_orchestrator_client(
    request: Request, caller: Annotated[Caller, Depends(get_caller)]
) -> OrchestratorClient:
    """The orchestrator, bound to the caller's principal, the RPC timeout and app shutdown."""
    settings: Settings = request.app.state.settings
    return OrchestratorClient(
        request.app.state.orchestrator,
        caller.principal,
        settings.rpc_timeout_seconds,
        request.app.state.shutdown_event,
    )


async def get_stream_slot(
    caller: Annotated[Caller, Depends(get_caller)],
    limiter: Annotated[Limiter | None, Depends(get_limiter)],
) -> AsyncIterator[StreamSlot]:
    """Lease one of the key's concurrent-stream slots (429 when all are taken).

    The route hands the slot to its response (`slot.wrap`), which releases it when the stream
    ends or the client goes away; if the request fails before that (invalid body, unknown
    thread), the slot is released here.
    """
    if limiter is None or caller.max_streams <= 0:
        yield StreamSlot(None, caller.key_id, "")
        return
    try:
        slot = await limiter.acquire_slot(caller.key_id, caller.max_streams)
    except LimiterUnavailable:
        raise Problem(
            503, "Stream limits cannot be checked right now", headers={"Retry-After": "2"}
        ) from None
    if slot is None:
        raise Problem(
            429,
            f"Too many concurrent streams for this key (at most {caller.max_streams}); "
            "close one and retry",
            headers={"Retry-After": "1"},
            retry_after=1,
        )
    try:
        yield slot
    finally:
        if not slot.handed_over:
            await slot.release()


async def last_event_id(
    value: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=64,
            description="Resume after this event id (`<ms>-<seq>`, as sent in `id:`; SSE "
            "reconnects send it).",
        ),
    ] = None,
) -> str | None:
    """The SSE `Last-Event-ID` header, checked: an event id (`<ms>-<seq>`) or "0" (422 if not)."""
    if value is not None:
        try:
            parse_event_id(value)
        except ValueError as exc:
            raise Problem(422, f"Last-Event-ID: {exc}") from None
    return value


SettingsDep = Annotated[Settings, Depends(get_settings)]
CallerDep = Annotated[Caller, Depends(get_caller)]
OrchestratorClientDep = Annotated[OrchestratorClient, Depends(get_orchestrator_client)]
StreamSlotDep = Annotated[StreamSlot, Depends(get_stream_slot)]
LastEventIdDep = Annotated[str | None, Depends(last_event_id)]
WorkMeterDep = Annotated[WorkMeter, Depends(get_work_meter)]

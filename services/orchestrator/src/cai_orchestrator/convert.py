"""Protobuf ↔ domain objects. The only module besides servicers that sees *_pb2."""

from __future__ import annotations

import re
from typing import Any

import orjson

from cai.v1 import orchestrator_pb2 as pb
from cai_common.tenants import TENANT_RULE, is_valid_tenant
from cai_orchestrator.events import dumps
from cai_orchestrator.records import NewRun
from cai_orchestrator.scheduler import TIERS

# LangGraph's Command fields a client may send (`resume` answers an interrupt).
COMMAND_FIELDS = frozenset({"resume", "update", "goto"})
# Paging and id lists: what one request may ask for.
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000
MAX_IDS = 1000


class InvalidRequest(ValueError):
    """A field of the request is invalid; the message names it."""


def json_field(raw: bytes, name: str, default: Any = None, kind: type | None = dict) -> Any:
    """Decode a JSON bytes field; empty means `default`."""
    if not raw:
        return default
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{name} is not valid JSON: {exc}") from exc
    if value is None:
        return default
    if kind is not None and not isinstance(value, kind):
        raise InvalidRequest(f"{name} must be a JSON {kind.__name__}")
    return value


def tenant_of(principal: Any) -> str:
    """The caller's tenant; required on every request, and a valid name: it is part of every
    Redis key of the tenant, and callers are not only the gateway."""
    tenant = principal.tenant_id if principal is not None else ""
    if not tenant:
        raise InvalidRequest("principal.tenant_id is required")
    if not is_valid_tenant(tenant):
        raise InvalidRequest(f"principal.tenant_id: {TENANT_RULE}")
    return tenant


def tier_of(principal: Any) -> str:
    """The caller's scheduling tier ("": the default)."""
    tier = principal.tier if principal is not None else ""
    if tier and tier not in TIERS:
        raise InvalidRequest(f"principal.tier must be one of {list(TIERS)}")
    return str(tier)


def new_run(req: pb.CreateRunRequest, stream_modes: list[str]) -> NewRun:
    """Validate a CreateRunRequest into a NewRun."""
    tenant = tenant_of(req.principal)
    command = json_field(req.command_json, "command")
    unknown = sorted(set(command or {}) - COMMAND_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"command has unknown field(s) {unknown}; allowed: {sorted(COMMAND_FIELDS)}"
        )
    run_input = json_field(req.input_json, "input", kind=None)
    if run_input is not None and not isinstance(run_input, dict):
        raise InvalidRequest("input must be a JSON object or null")
    if run_input is None and not command:
        raise InvalidRequest("a run needs an input or a command")
    config = json_field(req.config_json, "config", {})
    check_recursion_limit(config)
    metadata = json_field(req.metadata_json, "metadata", {})
    kwargs = {
        "input": run_input,
        "command": command,
        "config": config,
        "stream_mode": stream_modes,
        "on_disconnect": req.on_disconnect or "continue",
        "stream_resumable": req.stream_resumable,
    }
    return NewRun(
        tenant=tenant,
        thread_id=req.thread_id,
        assistant_id=req.assistant_id or "chat",
        kwargs=kwargs,
        metadata=metadata,
        multitask_strategy=req.multitask_strategy or "enqueue",
        if_not_exists=req.if_not_exists or "reject",
        idempotency_key=req.idempotency_key,
        temporary=not req.thread_id,
        trace=dict(req.trace_context),
        tier=tier_of(req.principal),
        max_running_runs=max(0, req.principal.max_running_runs),
        max_queued_runs=max(0, req.principal.max_queued_runs),
    )


def json_reply(obj: Any) -> pb.JsonReply:
    """A JsonReply from a JSON-able object."""
    return pb.JsonReply(json=dumps(obj))


def page(limit: int, offset: int) -> tuple[int, int]:
    """Validated paging (limit 0 means 10)."""
    limit = limit or 10
    if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise InvalidRequest(f"limit must be 1..{MAX_LIMIT} and offset 0..{MAX_OFFSET}")
    return limit, offset


# Thread and run ids become part of Redis keys and of the thread's hash tag: no braces, colons,
# spaces or newlines (the gateway sends UUIDs; gRPC callers are not only the gateway).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ID_RULE = "1-128 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"


def check_ids(request: Any) -> None:
    """Refuse a request whose `thread_id` or `run_id` (when set) breaks the id rule."""
    for name in ("thread_id", "run_id"):
        value = getattr(request, name, "")
        if value and not _ID.fullmatch(value):
            raise InvalidRequest(f"{name}: {ID_RULE}")


def id_list(values: Any, name: str) -> list[str]:
    """Distinct ids, in order; at most MAX_IDS, each following the id rule."""
    ids = list(dict.fromkeys(values))
    if len(ids) > MAX_IDS:
        raise InvalidRequest(f"{name}: at most {MAX_IDS} ids, got {len(ids)}")
    if not all(ids):
        raise InvalidRequest(f"{name}: ids must not be empty")
    if not all(_ID.fullmatch(i) for i in ids):
        raise InvalidRequest(f"{name}: every id: {ID_RULE}")
    return ids


def check_recursion_limit(config: dict[str, Any]) -> None:
    """Check `config.recursion_limit` (the assistant's limit caps it when the run executes)."""
    value = config.get("recursion_limit")
    if value is not None and (type(value) is not int or value < 1):
        raise InvalidRequest("config.recursion_limit must be a positive integer")


def run_events(batch: list[tuple[bytes, bytes, bytes]]) -> pb.StreamRunReply:
    """Log entries as one StreamRun reply (the payload bytes are relayed as they are)."""
    return pb.StreamRunReply(
        events=[pb.RunEvent(id=i.decode(), event=e.decode(), data=d) for i, e, d in batch]
    )

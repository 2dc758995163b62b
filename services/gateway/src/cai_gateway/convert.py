"""HTTP bodies ↔ orchestrator protobuf messages. Routes never build *_pb2 by hand."""

from __future__ import annotations

from typing import Any

import orjson
from opentelemetry.propagate import inject

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai_gateway.schemas import RunCreate


def dumps(value: object) -> bytes:
    """JSON bytes; None becomes empty (the proto's "not given")."""
    return b"" if value is None else orjson.dumps(value)


def trace_context() -> dict[str, str]:
    """The caller's W3C trace context, to carry into the queued job."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def create_run_request(
    principal: common_pb2.Principal,
    thread_id: str,
    body: RunCreate,
    idempotency_key: str | None,
    *,
    stream_modes: list[str] | None = None,
    on_disconnect: str | None = None,
) -> pb.CreateRunRequest:
    """A CreateRunRequest from a LangGraph run body ("" thread id: a stateless run)."""
    return pb.CreateRunRequest(
        principal=principal,
        thread_id=thread_id,
        assistant_id=body.assistant_id,
        input_json=dumps(body.input),
        command_json=dumps(body.command),
        config_json=dumps(body.merged_config()),
        metadata_json=dumps(body.metadata),
        stream_modes=stream_modes or body.modes(),
        multitask_strategy=body.multitask_strategy or "",
        idempotency_key=idempotency_key or "",
        if_not_exists=body.if_not_exists or "",
        on_disconnect=on_disconnect or body.on_disconnect or "",
        stream_resumable=bool(body.stream_resumable),
        trace_context=trace_context(),
    )


def message_run_request(
    principal: common_pb2.Principal,
    *,
    thread_id: str,
    assistant_id: str,
    messages: list[dict[str, Any]],
    stream_modes: list[str],
    metadata: dict[str, Any],
    on_disconnect: str = "",
) -> pb.CreateRunRequest:
    """A run that adds `messages` to a thread (created if missing) or runs stateless ("")."""
    return pb.CreateRunRequest(
        principal=principal,
        thread_id=thread_id,
        assistant_id=assistant_id,
        input_json=orjson.dumps({"messages": messages}),
        metadata_json=orjson.dumps(metadata),
        stream_modes=stream_modes,
        if_not_exists="create" if thread_id else "",
        on_disconnect=on_disconnect,
        stream_resumable=True,
        trace_context=trace_context(),
    )

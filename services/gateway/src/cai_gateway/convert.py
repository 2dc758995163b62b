"""HTTP bodies ↔ orchestrator protobuf messages. Routes never build *_pb2 by hand."""

from __future__ import annotations

import orjson
from opentelemetry.propagate import inject

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai_gateway.schemas import RunCreate


def _json(value: object) -> bytes:
    return b"" if value is None else orjson.dumps(value)


def create_run_request(
    principal: common_pb2.Principal,
    thread_id: str,
    body: RunCreate,
    idempotency_key: str | None,
) -> pb.CreateRunRequest:
    """A CreateRunRequest from a LangGraph run body."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return pb.CreateRunRequest(
        principal=principal,
        thread_id=thread_id,
        assistant_id=body.assistant_id,
        input_json=_json(body.input),
        command_json=_json(body.command),
        config_json=_json(body.merged_config()),
        metadata_json=_json(body.metadata),
        stream_modes=body.modes(),
        multitask_strategy=body.multitask_strategy or "",
        idempotency_key=idempotency_key or "",
        if_not_exists=body.if_not_exists or "",
        on_disconnect=body.on_disconnect or "",
        stream_resumable=bool(body.stream_resumable),
        trace_context=carrier,
    )

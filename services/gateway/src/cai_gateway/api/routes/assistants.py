"""Assistants (personas from the orchestrator's assistants file), as LangGraph Server shows them."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Response

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_gateway.api.openapi import ERRORS, json_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.config import Settings
from cai_gateway.convert import dumps
from cai_gateway.deps import OrchestratorDep, PrincipalDep, SettingsDep
from cai_gateway.models import Assistant, AssistantSchemas
from cai_gateway.schemas import AssistantIdPath, AssistantSearch

router = APIRouter(tags=["assistants"], responses=ERRORS, route_class=OrjsonRoute)

JSON = "application/json"


async def search(
    orch: OrchestratorStub,
    principal: common_pb2.Principal,
    settings: Settings,
    query: AssistantSearch,
) -> bytes:
    """SearchAssistants, with `name` (a case-insensitive substring) filtered here."""
    reply = await orch.SearchAssistants(
        pb.SearchAssistantsRequest(
            principal=principal,
            metadata_json=dumps(query.metadata or {}),
            graph_id=query.graph_id or "",
            limit=1000 if query.name else query.limit,
            offset=0 if query.name else query.offset,
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    if not query.name:
        return bytes(reply.json)
    needle = query.name.lower()
    found: list[dict[str, Any]] = [
        a for a in orjson.loads(reply.json) if needle in str(a.get("name", "")).lower()
    ]
    return orjson.dumps(found[query.offset : query.offset + query.limit])


@router.post("/assistants/search", responses=json_ok(list[Assistant]))
async def search_assistants(
    body: AssistantSearch, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Search assistants by metadata, graph id and name."""
    return Response(await search(orch, principal, settings, body), media_type=JSON)


@router.get("/assistants/search", responses=json_ok(list[Assistant]))
async def list_assistants(
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    graph_id: Annotated[str | None, Query(max_length=128)] = None,
    name: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """List assistants (the query-string form of the search)."""
    query = AssistantSearch(graph_id=graph_id, name=name, limit=limit, offset=offset)
    return Response(await search(orch, principal, settings, query), media_type=JSON)


@router.get("/assistants/{assistant_id}", responses=json_ok(Assistant))
async def get_assistant(
    assistant_id: AssistantIdPath,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Get an assistant."""
    reply = await orch.GetAssistant(
        pb.GetAssistantRequest(principal=principal, assistant_id=assistant_id),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)


@router.get("/assistants/{assistant_id}/schemas", responses=json_ok(AssistantSchemas))
async def get_assistant_schemas(
    assistant_id: AssistantIdPath,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """JSON schemas of the assistant's graph: input, output, state and config."""
    reply = await orch.GetAssistantSchemas(
        pb.GetAssistantRequest(principal=principal, assistant_id=assistant_id),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)

"""Assistants (personas from the orchestrator's assistants file), as LangGraph Server shows them."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Response

from cai_gateway.api.openapi import ERRORS, json_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.deps import OrchestratorClientDep
from cai_gateway.models import Assistant, AssistantSchemas
from cai_gateway.orchestrator import OrchestratorClient
from cai_gateway.schemas import AssistantIdPath, AssistantSearch

router = APIRouter(tags=["assistants"], responses=ERRORS, route_class=OrjsonRoute)

JSON = "application/json"


async def search(orch: OrchestratorClient, query: AssistantSearch) -> bytes:
    """SearchAssistants, with `name` (a case-insensitive substring) filtered here."""
    assistants = await orch.search_assistants(
        metadata=query.metadata,
        graph_id=query.graph_id or "",
        limit=1000 if query.name else query.limit,
        offset=0 if query.name else query.offset,
    )
    if not query.name:
        return assistants
    needle = query.name.lower()
    found: list[dict[str, Any]] = [
        a for a in orjson.loads(assistants) if needle in str(a.get("name", "")).lower()
    ]
    return orjson.dumps(found[query.offset : query.offset + query.limit])


@router.post("/assistants/search", responses=json_ok(list[Assistant]))
async def search_assistants(body: AssistantSearch, orch: OrchestratorClientDep) -> Response:
    """Search assistants by metadata, graph id and name."""
    return Response(await search(orch, body), media_type=JSON)


@router.get("/assistants/search", responses=json_ok(list[Assistant]))
async def list_assistants(
    orch: OrchestratorClientDep,
    graph_id: Annotated[str | None, Query(max_length=128)] = None,
    name: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """List assistants (the query-string form of the search)."""
    query = AssistantSearch(graph_id=graph_id, name=name, limit=limit, offset=offset)
    return Response(await search(orch, query), media_type=JSON)


@router.get("/assistants/{assistant_id}", responses=json_ok(Assistant))
async def get_assistant(
    assistant_id: AssistantIdPath,
    orch: OrchestratorClientDep,
) -> Response:
    """Get an assistant."""
    return Response(await orch.get_assistant(assistant_id), media_type=JSON)


@router.get("/assistants/{assistant_id}/schemas", responses=json_ok(AssistantSchemas))
async def get_assistant_schemas(
    assistant_id: AssistantIdPath,
    orch: OrchestratorClientDep,
) -> Response:
    """JSON schemas of the assistant's graph: input, output, state and config."""
    schemas = await orch.get_assistant(assistant_id, schemas=True)
    return Response(schemas, media_type=JSON)

"""Routes written once for a thread and for a stateless run (LangGraph Server's twin routes)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Response


@dataclass(frozen=True)
class RunScope:
    """Where a run goes: a thread, or ("") a temporary thread dropped when the run ends."""

    thread_id: str

    @property
    def on_disconnect(self) -> str:
        """What a client leaving does by default: stateless runs are cancelled (LangGraph
        Server's default), runs on a thread go on."""
        return "continue" if self.thread_id else "cancel"


async def _on_thread(thread_id: UUID) -> RunScope:
    return RunScope(str(thread_id))


async def _stateless() -> RunScope:
    return RunScope("")


Endpoint = Callable[..., Awaitable[Response]]


def on_thread_or_stateless(
    router: APIRouter, path: str, thread: tuple[str, str], stateless: tuple[str, str], **route: Any
) -> Callable[[Endpoint], Endpoint]:
    """Register an endpoint taking `scope: RunScope` as POST /threads/{thread_id}{path} and as
    POST {path}; `thread` and `stateless` are each route's (name, description)."""

    def register(endpoint: Endpoint) -> Endpoint:
        signature = inspect.signature(endpoint, eval_str=True)
        variants = (("/threads/{thread_id}", _on_thread, thread), ("", _stateless, stateless))
        for prefix, scope, (name, doc) in variants:
            scoped = Annotated[RunScope, Depends(scope)]
            params = [
                p.replace(annotation=scoped) if p.name == "scope" else p
                for p in signature.parameters.values()
            ]

            async def variant(**kwargs: Any) -> Response:
                return await endpoint(**kwargs)

            variant.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
            router.add_api_route(
                prefix + path, variant, methods=["POST"], name=name, description=doc, **route
            )
        return endpoint

    return register

"""The auth matrix over every route of the app (read from its OpenAPI document, so a new route
fails `test_every_route_is_in_the_matrix` until it is covered): no key, a bad key, another
tenant's key and the owner's key."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cai_gateway.app import create_app
from cai_gateway.config import Settings
from tests.e2e.support import KEYS, auth, client, eventually, question

PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in create_app(Settings(redis_url="")).openapi()["paths"].items()
    for method in item
    if (method.upper(), path) not in PUBLIC
)
RUN = {"assistant_id": "chat", "input": question("matrix")}


@dataclass
class Owned:
    """Tenant A's resources: a thread with a finished run (also a task) and a checkpoint."""

    thread_id: str
    run_id: str
    checkpoint_id: str


@dataclass(frozen=True)
class Spec:
    """How to call a route: path ids, body, query; what the owner and another tenant get."""

    json: Any = None
    params: dict[str, Any] | None = None
    headers: Callable[[Owned], dict[str, str]] | None = None
    body: Callable[[Owned], Any] | None = None
    owner: int = 200
    # Another tenant's answer: 404 where the request names tenant A's data; None where it names
    # none (the call is then checked to reveal nothing of tenant A's).
    foreign: int | None = 404
    # Run it on a fresh thread of its own (it changes or deletes what it is given).
    fresh: bool = False
    # It may name a thread that does not exist yet, which it then starts. Thread ids are the
    # caller's own (the tenant is part of every key): another tenant naming tenant A's id gets a
    # thread of its own by that id, which neither sees nor changes tenant A's.
    starts_a_thread: bool = False


SPECS: dict[tuple[str, str], Spec] = {
    ("POST", "/threads"): Spec(json={}, foreign=None),
    ("POST", "/threads/search"): Spec(body=lambda o: {"ids": [o.thread_id]}, foreign=None),
    ("GET", "/threads/{thread_id}"): Spec(),
    ("PATCH", "/threads/{thread_id}"): Spec(json={"metadata": {"k": "v"}}),
    ("DELETE", "/threads/{thread_id}"): Spec(owner=204, fresh=True),
    ("GET", "/threads/{thread_id}/state"): Spec(),
    ("POST", "/threads/{thread_id}/state"): Spec(
        json={"values": {"messages": [{"role": "user", "content": "note"}]}, "as_node": "agent"},
        fresh=True,
    ),
    ("POST", "/threads/{thread_id}/state/checkpoint"): Spec(
        body=lambda o: {"checkpoint": {"checkpoint_id": o.checkpoint_id}}
    ),
    ("GET", "/threads/{thread_id}/state/{checkpoint_id}"): Spec(),
    ("GET", "/threads/{thread_id}/history"): Spec(),
    ("POST", "/threads/{thread_id}/history"): Spec(json={"limit": 2}),
    ("POST", "/threads/{thread_id}/runs"): Spec(json=RUN, fresh=True),
    ("GET", "/threads/{thread_id}/runs"): Spec(),
    ("POST", "/runs"): Spec(json=RUN, foreign=None),
    ("POST", "/threads/{thread_id}/runs/stream"): Spec(json=RUN, fresh=True),
    ("POST", "/runs/stream"): Spec(json=RUN, foreign=None),
    ("GET", "/threads/{thread_id}/runs/{run_id}/stream"): Spec(),
    ("POST", "/threads/{thread_id}/runs/wait"): Spec(json=RUN, fresh=True),
    ("POST", "/runs/wait"): Spec(json=RUN, foreign=None),
    ("GET", "/threads/{thread_id}/runs/{run_id}/join"): Spec(),
    ("GET", "/threads/{thread_id}/runs/{run_id}"): Spec(),
    ("DELETE", "/threads/{thread_id}/runs/{run_id}"): Spec(owner=204, fresh=True),
    ("POST", "/threads/{thread_id}/runs/{run_id}/cancel"): Spec(),
    ("POST", "/runs/cancel"): Spec(body=lambda o: {"run_ids": [o.run_id]}, owner=204),
    ("POST", "/assistants/search"): Spec(json={}, foreign=None),
    ("GET", "/assistants/search"): Spec(foreign=None),
    ("GET", "/assistants/{assistant_id}"): Spec(foreign=None),
    ("GET", "/assistants/{assistant_id}/schemas"): Spec(foreign=None),
    ("GET", "/v1/models"): Spec(foreign=None),
    ("GET", "/v1/models/{model}"): Spec(foreign=None),
    ("POST", "/v1/chat/completions"): Spec(
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        headers=lambda o: {"X-Cai-Thread-Id": o.thread_id},
        fresh=True,
        starts_a_thread=True,
    ),
    ("POST", "/chat"): Spec(
        body=lambda o: {"message": "hi", "thread_id": o.thread_id},
        fresh=True,
        starts_a_thread=True,
    ),
    ("GET", "/chat/{task_id}/stream"): Spec(),
    ("POST", "/chat/{task_id}/stop"): Spec(),
    ("GET", "/chat/{task_id}/status"): Spec(),
}


def test_every_route_is_in_the_matrix() -> None:
    assert set(SPECS) == set(OPERATIONS)


async def new_owned(gw: str) -> Owned:
    async with client(gw, KEYS.alpha) as http:
        thread = (await http.post("/threads", json={"metadata": {"matrix": True}})).json()
        tid = thread["thread_id"]
        run = (await http.post(f"/threads/{tid}/runs", json=RUN)).json()
        await http.get(f"/threads/{tid}/runs/{run['run_id']}/join")
        state = (await http.get(f"/threads/{tid}/state")).json()
        return Owned(tid, run["run_id"], state["checkpoint"]["checkpoint_id"])


@pytest.fixture(scope="module")
async def owned(gw: str) -> Owned:
    return await new_owned(gw)


def build(method: str, path: str, spec: Spec, o: Owned) -> dict[str, Any]:
    url = path.format(
        thread_id=o.thread_id,
        run_id=o.run_id,
        task_id=o.run_id,
        checkpoint_id=o.checkpoint_id,
        assistant_id="chat",
        model="chat",
    )
    return {
        "method": method,
        "url": url,
        "json": spec.body(o) if spec.body else spec.json,
        "params": spec.params,
        "headers": spec.headers(o) if spec.headers else {},
    }


async def call(gw: str, request: dict[str, Any], key_headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw, timeout=30) as http:
        headers = {**request.pop("headers"), **key_headers}
        async with http.stream(**request, headers=headers) as response:
            await response.aread()
            return response


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == status


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
async def test_no_key_and_bad_keys_get_401(method: str, path: str, gw: str, owned: Owned) -> None:
    request = build(method, path, SPECS[(method, path)], owned)
    for headers in (
        {},
        auth("not-a-key"),
        auth("not-a-key", "x-api-key"),
        auth(KEYS.alpha[:-1]),
        {"Authorization": f"Basic {KEYS.alpha}"},
    ):
        response = await call(gw, dict(request), headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
async def test_another_tenant_gets_404_and_never_data(
    method: str, path: str, gw: str, owned: Owned
) -> None:
    spec = SPECS[(method, path)]
    target = await new_owned(gw) if spec.fresh else owned
    response = await call(gw, build(method, path, spec, target), auth(KEYS.beta))
    if spec.starts_a_thread:
        assert response.status_code < 300, response.text
        assert target.run_id not in response.text and target.checkpoint_id not in response.text
        await their_thread_is_their_own(gw, target, response)
    elif spec.foreign is not None:
        assert_problem(response, spec.foreign)
        assert set(response.json()) <= {"type", "title", "status", "detail", "error"}
    else:
        assert response.status_code < 300, response.text
        assert target.thread_id not in response.text and target.run_id not in response.text
    # Whatever it was, tenant A's data is untouched and still tenant A's.
    async with client(gw, KEYS.alpha) as http:
        assert (await http.get(f"/threads/{target.thread_id}")).status_code == 200
        run = await http.get(f"/threads/{target.thread_id}/runs/{target.run_id}")
        assert run.status_code == 200 and run.json()["status"] == "success"
        state = (await http.get(f"/threads/{target.thread_id}/state")).json()
        assert state["checkpoint"]["checkpoint_id"] == target.checkpoint_id  # nothing written


async def their_thread_is_their_own(gw: str, target: Owned, response: httpx.Response) -> None:
    """Tenant B's thread of tenant A's id ends up holding B's turn and none of A's."""
    async with client(gw, KEYS.beta) as http:
        task_id = response.json().get("task_id")
        if task_id:  # the task API answers at once: wait for the task to end

            async def ended() -> bool:
                status = (await http.get(f"/chat/{task_id}/status")).json()["status"]
                return status in ("done", "stopped", "error")

            await eventually(ended)
        theirs = (await http.get(f"/threads/{target.thread_id}/state")).json()
    async with client(gw, KEYS.alpha) as http:
        mine = (await http.get(f"/threads/{target.thread_id}/state")).json()
    their_ids = {m["id"] for m in theirs["values"]["messages"]}
    my_ids = {m["id"] for m in mine["values"]["messages"]}
    assert their_ids and my_ids and not their_ids & my_ids
    assert [m["content"] for m in theirs["values"]["messages"] if m["type"] == "human"] == ["hi"]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
async def test_the_owner_gets_through(method: str, path: str, gw: str, owned: Owned) -> None:
    spec = SPECS[(method, path)]
    target = await new_owned(gw) if spec.fresh else owned
    for style in ("bearer", "x-api-key"):
        if spec.fresh and style == "x-api-key":
            continue  # it changed or deleted its target already
        request = build(method, path, spec, target)
        response = await call(gw, request, auth(KEYS.alpha, style))
        assert response.status_code == spec.owner, (style, response.text)


async def test_search_and_bulk_cancel_never_reach_another_tenant(gw: str, owned: Owned) -> None:
    async with client(gw, KEYS.beta) as http:
        found = await http.post("/threads/search", json={"metadata": {"matrix": True}})
        assert found.status_code == 200 and found.json() == []
        by_id = await http.post("/threads/search", json={"ids": [owned.thread_id]})
        assert by_id.json() == []
        cancel = await http.post("/runs/cancel", json={"run_ids": [owned.run_id]})
        assert cancel.status_code == 404
        # The id is free for tenant B: its own thread by that id, empty, nothing of tenant A's.
        taken = await http.post("/threads", json={"thread_id": owned.thread_id})
        assert taken.status_code == 200, taken.text
        assert taken.json()["metadata"] == {} and not taken.json()["values"]
        theirs = (await http.get(f"/threads/{owned.thread_id}/state")).json()
        assert not theirs["values"] and owned.checkpoint_id not in str(theirs)
    async with client(gw, KEYS.alpha) as http:
        mine = (await http.get(f"/threads/{owned.thread_id}")).json()
        assert mine["metadata"]["matrix"] is True and mine["values"]["messages"]


async def test_same_tenant_different_keys_share_data(gw: str, owned: Owned) -> None:
    async with client(gw, KEYS.alpha2) as http:
        assert (await http.get(f"/threads/{owned.thread_id}")).status_code == 200
    unknown = str(uuid.uuid4())
    async with client(gw, KEYS.alpha) as http:
        assert (await http.get(f"/threads/{unknown}")).status_code == 404

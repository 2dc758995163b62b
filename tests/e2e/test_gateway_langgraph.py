"""LangGraph Server compatibility through the official `langgraph_sdk`, against real processes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from tests.e2e.support import GATEWAY_REPLY_TOKENS, KEYS, client, eventually, question


@pytest.fixture
def sdk(gw: str) -> LangGraphClient:
    return get_client(url=gw, api_key=KEYS.alpha)


def ai_text(parts: list) -> str:  # type: ignore[type-arg]
    return "".join(
        p.data[0]["content"]
        for p in parts
        if p.event == "messages" and p.data[0].get("type") == "AIMessageChunk"
    )


async def test_stream_all_supported_modes(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    parts = [
        p
        async for p in sdk.runs.stream(
            thread["thread_id"],
            "chat",
            input=question(),
            stream_mode=["values", "updates", "messages-tuple", "custom"],
        )
    ]
    events = {p.event for p in parts}
    assert {"metadata", "values", "updates", "messages", "end"} <= events
    state = await sdk.threads.get_state(thread["thread_id"])
    assert ai_text(parts) == state["values"]["messages"][-1]["content"]
    assert len(ai_text(parts).split()) == GATEWAY_REPLY_TOKENS


async def test_unsupported_stream_mode_is_a_clear_422(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    with pytest.raises(UnprocessableEntityError) as err:
        async for _ in sdk.runs.stream(
            thread["thread_id"], "chat", input=question(), stream_mode="debug"
        ):
            pass
    assert "not supported" in str(err.value.body)


async def test_wait_returns_final_values_and_join_matches_the_state(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    values = await sdk.runs.wait(thread["thread_id"], "chat", input=question("first"))
    assert [m["type"] for m in values["messages"]] == ["human", "ai"]  # type: ignore[index]
    run = await sdk.runs.create(thread["thread_id"], "chat", input=question("second"))
    joined = await sdk.runs.join(thread["thread_id"], run["run_id"])
    state = await sdk.threads.get_state(thread["thread_id"])
    assert joined == state["values"] and len(joined["messages"]) == 4
    assert (await sdk.runs.get(thread["thread_id"], run["run_id"]))["status"] == "success"


async def test_stateless_runs_stream_wait_and_leave_no_thread(sdk: LangGraphClient) -> None:
    created = []
    parts = [
        p
        async for p in sdk.runs.stream(
            None,
            "chat",
            input=question(),
            stream_mode="messages-tuple",
            on_run_created=created.append,
        )
    ]
    assert parts[-1].event == "end" and len(ai_text(parts).split()) == GATEWAY_REPLY_TOKENS
    values = await sdk.runs.wait(None, "chat", input=question("stateless wait"))
    assert values["messages"][-1]["type"] == "ai"  # type: ignore[index]
    run = await sdk.runs.create(None, "chat", input=question("background"))
    tid = created[0]["thread_id"]
    with pytest.raises(NotFoundError):
        await sdk.threads.get(tid)
    assert (await sdk.runs.get(tid, created[0]["run_id"]))["status"] == "success"

    async def finished() -> bool:
        return (await sdk.runs.get(run["thread_id"], run["run_id"]))["status"] == "success"

    await eventually(finished)


async def test_run_errors_come_back_as_error_events_and_error_bodies(
    gw: str, sdk: LangGraphClient
) -> None:
    thread = await sdk.threads.create()
    parts = [p async for p in sdk.runs.stream(thread["thread_id"], "broken", input=question())]
    assert parts[-1].event == "error"
    # /runs/wait answers 200 with LangGraph Server's `__error__` body; the SDK raises it as a bare
    # Exception "<error>: <message>" (a 5xx would be an APIStatusError instead).
    with pytest.raises(Exception) as raised:
        await sdk.runs.wait(thread["thread_id"], "broken", input=question())
    assert type(raised.value) is Exception
    unknown = await sdk.runs.wait(
        thread["thread_id"], "broken", input=question(), raise_error=False
    )
    error = unknown["__error__"]  # type: ignore[index]
    assert str(raised.value) == f"{error['error']}: {error['message']}"
    assert "(status 500)" in str(raised.value)  # the model's status, named
    assert error["error"] == "model_error" and error["error_id"]  # never the upstream body
    async with client(gw) as http:
        body = {"assistant_id": "broken", "input": question()}
        waited = await http.post(f"/threads/{thread['thread_id']}/runs/wait", json=body)
    assert waited.status_code == 200 and waited.json()["__error__"]["error"] == error["error"]


async def test_if_not_exists_and_multitask_strategies(sdk: LangGraphClient) -> None:
    tid = str(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await sdk.runs.create(tid, "chat", input=question())
    first = await sdk.runs.create(tid, "slow", input=question(), if_not_exists="create")
    assert (await sdk.threads.get(tid))["thread_id"] == tid
    with pytest.raises(ConflictError):
        await sdk.runs.create(tid, "chat", input=question(), multitask_strategy="reject")
    queued = await sdk.runs.create(tid, "chat", input=question(), multitask_strategy="enqueue")
    got = await sdk.runs.get(tid, queued["run_id"])
    assert got["status"] == "pending" and got["queue"]["position"] >= 0  # type: ignore[typeddict-item]
    # interrupt: the active run is cancelled and the new one goes ahead.
    third = await sdk.runs.create(tid, "chat", input=question(), multitask_strategy="interrupt")
    await sdk.runs.join(tid, third["run_id"])
    assert (await sdk.runs.get(tid, first["run_id"]))["status"] == "interrupted"
    assert (await sdk.runs.get(tid, third["run_id"]))["status"] == "success"


async def test_on_disconnect_cancel_stops_the_run(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    created = []
    stream = sdk.runs.stream(
        thread["thread_id"],
        "slow",
        input=question(),
        stream_mode="messages-tuple",
        on_disconnect="cancel",
        on_run_created=created.append,
    )
    async for part in stream:
        if part.event == "messages":
            break
    await stream.aclose()  # type: ignore[attr-defined]
    run_id = created[0]["run_id"]

    async def interrupted() -> bool:
        run = await sdk.runs.get(thread["thread_id"], run_id)
        return run["status"] == "interrupted"

    await eventually(interrupted, timeout=15)


async def test_list_cancel_delete_runs_and_bulk_cancel(sdk: LangGraphClient) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    done = await sdk.runs.create(tid, "chat", input=question())
    await sdk.runs.join(tid, done["run_id"])
    active = await sdk.runs.create(tid, "slow", input=question())
    waiting = await sdk.runs.create(tid, "slow", input=question(), multitask_strategy="enqueue")
    listed = await sdk.runs.list(tid)
    assert [r["run_id"] for r in listed] == [waiting["run_id"], active["run_id"], done["run_id"]]
    with pytest.raises(ConflictError):
        await sdk.runs.delete(tid, active["run_id"])  # still active
    await sdk.runs.cancel_many(thread_id=tid, status="all")

    async def all_cancelled() -> bool:
        runs = await sdk.runs.list(tid)
        return {r["status"] for r in runs} == {"success", "interrupted"}

    await eventually(all_cancelled)
    await sdk.runs.delete(tid, done["run_id"])
    with pytest.raises(NotFoundError):
        await sdk.runs.get(tid, done["run_id"])
    assert len(await sdk.runs.list(tid)) == 2

    other = await sdk.runs.create(tid, "slow", input=question())
    await sdk.runs.cancel_many(run_ids=[other["run_id"]], action="interrupt")
    await eventually(lambda: _status_is(sdk, tid, other["run_id"], "interrupted"), timeout=15)
    with pytest.raises(NotFoundError):
        await sdk.runs.cancel_many(run_ids=[str(uuid.uuid4())])


async def _status_is(sdk: LangGraphClient, tid: str, run_id: str, status: str) -> bool:
    return (await sdk.runs.get(tid, run_id))["status"] == status


async def test_thread_search_update_history_state_and_delete(sdk: LangGraphClient) -> None:
    tag = {"suite": "gw-threads", "n": str(uuid.uuid4())}
    thread = await sdk.threads.create(metadata=tag)
    tid = thread["thread_id"]
    await sdk.runs.wait(tid, "chat", input=question())
    found = await sdk.threads.search(metadata=tag)
    assert [t["thread_id"] for t in found] == [tid]
    assert [t["thread_id"] for t in await sdk.threads.search(ids=[tid])] == [tid]
    updated = await sdk.threads.update(tid, metadata={"extra": "yes"})
    assert updated["metadata"] == {**tag, "extra": "yes"}
    assert await sdk.threads.search(metadata={**tag, "extra": "no"}) == []

    history = await sdk.threads.get_history(tid, limit=3)
    assert len(history) == 3
    older = await sdk.threads.get_history(tid, limit=10, before=history[0]["checkpoint"])
    assert older[0]["checkpoint"]["checkpoint_id"] == history[1]["checkpoint"]["checkpoint_id"]
    note = {"messages": [{"role": "user", "content": "a note added by hand"}]}
    written = await sdk.threads.update_state(tid, note, as_node="agent")
    state = await sdk.threads.get_state(tid)
    assert state["checkpoint"]["checkpoint_id"] == written["checkpoint"]["checkpoint_id"]
    assert state["values"]["messages"][-1]["content"] == "a note added by hand"
    at = await sdk.threads.get_state(tid, checkpoint=history[0]["checkpoint"])
    assert at["values"] == history[0]["values"]
    at_id = await sdk.threads.get_state(
        tid, checkpoint_id=history[1]["checkpoint"]["checkpoint_id"]
    )
    assert at_id["values"] == history[1]["values"]

    await sdk.threads.delete(tid)
    with pytest.raises(NotFoundError):
        await sdk.threads.get(tid)
    assert await sdk.threads.search(metadata=tag) == []


async def test_assistants(sdk: LangGraphClient, gw: str) -> None:
    found = await sdk.assistants.search()
    assert [a["assistant_id"] for a in found] == ["chat", "slow", "broken"]
    assert [a["assistant_id"] for a in await sdk.assistants.search(metadata={"tier": "slow"})] == [
        "slow"
    ]
    assert [a["assistant_id"] for a in await sdk.assistants.search(limit=1, offset=1)] == ["slow"]
    slow = await sdk.assistants.get("slow")
    assert slow["graph_id"] == "agent" and slow["description"].startswith("streams")
    schemas = await sdk.assistants.get_schemas("chat")
    assert "messages" in schemas["input_schema"]["properties"]
    with pytest.raises(NotFoundError):
        await sdk.assistants.get("nobody")
    async with client(gw) as http:
        listed = await http.get("/assistants/search", params={"name": "SLO"})
        assert [a["assistant_id"] for a in listed.json()] == ["slow"]


# -- the SDK's automatic reconnect, through a proxy that drops the connection --------------------


class DroppingProxy:
    """A TCP proxy to the gateway that cuts the first response to a request carrying `match`
    after `cut_after` bytes of its body (like a restart or a load balancer dropping it)."""

    def __init__(self, upstream: str, match: bytes, cut_after: int) -> None:
        url = httpx.URL(upstream)
        self.host, self.port_up = url.host, url.port or 80
        self.match = match
        self.cut_after = cut_after
        self.cuts = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> DroppingProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port_up)
        armed = False

        async def to_server() -> None:
            nonlocal armed
            while data := await reader.read(65536):
                if self.cuts == 0 and self.match in data:
                    armed = True
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            head = b""  # the armed response's bytes until its headers end
            body = 0
            while data := await up_reader.read(65536):
                if armed and self.cuts == 0:
                    if b"\r\n\r\n" not in head:
                        head += data
                        if b"\r\n\r\n" in head:
                            body = len(head.split(b"\r\n\r\n", 1)[1])
                    else:
                        body += len(data)
                    if b"\r\n\r\n" in head and body >= self.cut_after:
                        writer.write(data[: max(0, len(data) - (body - self.cut_after))])
                        self.cuts += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for w in (writer, up_writer):
            w.transport.abort()


@contextlib.asynccontextmanager
async def proxied_sdk(
    gw: str, match: bytes, cut_after: int
) -> AsyncIterator[tuple[LangGraphClient, DroppingProxy]]:
    async with DroppingProxy(gw, match, cut_after) as proxy:
        yield get_client(url=proxy.url, api_key=KEYS.alpha), proxy


async def test_sdk_stream_reconnects_after_a_dropped_connection(
    gw: str, sdk: LangGraphClient
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    async with proxied_sdk(gw, b"/runs/stream", cut_after=1500) as (dropping, proxy):
        parts = [
            p
            async for p in dropping.runs.stream(
                tid, "chat", input=question(), stream_mode="messages-tuple"
            )
        ]
    assert proxy.cuts == 1 and proxy.connections >= 2  # dropped once, then reconnected
    assert parts[-1].event == "end"
    # Nothing lost, nothing repeated: the tokens spell the stored answer exactly.
    state = await sdk.threads.get_state(tid)
    assert ai_text(parts) == state["values"]["messages"][-1]["content"]
    assert len(ai_text(parts).split()) == GATEWAY_REPLY_TOKENS


async def test_sdk_wait_reconnects_to_join_after_a_dropped_connection(
    gw: str, sdk: LangGraphClient
) -> None:
    thread = await sdk.threads.create()
    tid = thread["thread_id"]
    # Cut the /wait response once its headers and a heartbeat are through (the slow run is
    # still going): the SDK reconnects to the Location (…/join) and gets the final values.
    async with proxied_sdk(gw, b"/runs/wait", cut_after=2) as (dropping, proxy):
        with pytest.warns(UserWarning, match=r"reconnect to Location: .*/runs/.*/join"):
            values = await dropping.runs.wait(tid, "slow", input=question())
    assert proxy.cuts == 1
    state = await sdk.threads.get_state(tid)
    assert values == state["values"] and values["messages"][-1]["type"] == "ai"  # type: ignore[index]

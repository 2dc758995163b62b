"""The agent through the real processes: RAG, tools, approval, trimming, personas, recursion."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import orjson
import pytest
from langchain_core.messages import convert_to_messages
from langchain_core.messages.utils import count_tokens_approximately
from langgraph_sdk import get_client

from cai.v1 import common_pb2, retriever_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai.v1.retriever_pb2_grpc import RetrieverStub
from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack

ME = common_pb2.Principal(tenant_id="agent-tests")
BUDGET = 300
ASSISTANTS = f"""
assistants:
  - id: chat
  - id: rag
    retrieval: {{enabled: true, collection: agent-docs, k: 2}}
  - id: persona
    system_prompt: "You are Captain Lighthouse, keeper of the northern light."
  - id: tooluser
    model_headers: {{X-Sim-Tool-Mode: never}}
    tools:
      - {{name: slow_tool, import: "tests.e2e.agent_tools:slow_tool", timeout_seconds: 0.5}}
      - "tests.e2e.agent_tools:broken_tool"
      - name: delete_everything
        import: "tests.e2e.agent_tools:delete_everything"
        requires_approval: true
  - id: looper
    recursion_limit: 4
    model_headers: {{X-Sim-Tool-Mode: always}}
    tools: ["tests.e2e.agent_tools:echo"]
  - id: small
    token_budget: {BUDGET}
  - id: pinned-prompt
    allow_system_prompt_override: true
"""
DOC = (
    "Cai resumes a stream when the client reconnects with the Last-Event-ID header. "
    "The gateway replays the run's event log after that id, so nothing is lost or repeated. "
    "Lighthouses are painted in bright stripes."
)


@pytest.fixture(scope="module")
def agent_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("agent"),
        timeout=240,
        assistants=ASSISTANTS,
        with_retriever=True,
        llm_sim_args=["--reply-tokens", "30"],
    ) as stack:
        yield stack


@pytest.fixture
async def orch(agent_stack: Stack) -> AsyncIterator[OrchestratorStub]:
    channel = grpc.aio.insecure_channel(agent_stack.orchestrator_addr())
    yield OrchestratorStub(channel)
    await channel.close()


async def run(
    orch: OrchestratorStub, assistant: str, text: str | None, thread_id: str = "", **kw: object
) -> tuple[str, list[tuple[str, object]]]:
    """Create a run (on a new thread unless given) and collect its events."""
    if not thread_id:
        created = await orch.CreateThread(pb.CreateThreadRequest(principal=ME))
        thread_id = orjson.loads(created.json)["thread_id"]
    request = pb.CreateRunRequest(
        principal=ME,
        thread_id=thread_id,
        assistant_id=assistant,
        stream_modes=["messages-tuple", "values"],
        input_json=orjson.dumps({"messages": [{"role": "user", "content": text}]}) if text else b"",
        **kw,  # type: ignore[arg-type]
    )
    run_id = orjson.loads((await orch.CreateRun(request)).json)["run_id"]
    events: list[tuple[str, object]] = []
    async for reply in orch.StreamRun(
        pb.StreamRunRequest(principal=ME, thread_id=thread_id, run_id=run_id)
    ):
        events += [(e.event, orjson.loads(e.data)) for e in reply.events]
    return thread_id, events


async def state(orch: OrchestratorStub, thread_id: str) -> dict[str, object]:
    reply = await orch.GetThreadState(pb.GetThreadStateRequest(principal=ME, thread_id=thread_id))
    return orjson.loads(reply.json)  # type: ignore[no-any-return]


def sim_requests(stack: Stack, n: int = 5) -> list[dict[str, object]]:
    reply = httpx.get(f"{stack.llm_sim_url}/v1/sim/requests", params={"limit": n})
    return reply.json()["data"]  # type: ignore[no-any-return]


async def test_rag_answer_quotes_the_retrieved_passage_and_cites_it(
    agent_stack: Stack, orch: OrchestratorStub
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{agent_stack.config.retriever_port}")
    doc = retriever_pb2.Document(document_id="resume-doc", source="docs/resume.md", text=DOC)
    summary = await RetrieverStub(channel).Ingest(
        iter([retriever_pb2.IngestRequest(principal=ME, collection="agent-docs", document=doc)])
    )
    await channel.close()
    assert summary.documents == 1 and summary.chunks >= 1
    _, events = await run(orch, "rag", "How does Cai resume a stream?")
    names = [e for e, _ in events]
    assert names[-1] == "end"
    retrieval = next(d for e, d in events if e == "retrieval")
    assert retrieval["sources"][0]["source"] == "docs/resume.md"  # type: ignore[index]
    statuses = [d["status"] for e, d in events if e == "status"]  # type: ignore[index]
    assert statuses[:2] == ["retrieving", "generating"]
    answer = "".join(d[0]["content"] for e, d in events if e == "messages")  # type: ignore[index]
    assert "Last-Event-ID" in answer
    # Tokens arriving together are coalesced into fewer events (the model sends them in bursts).
    assert len([e for e, _ in events if e == "messages"]) < len(answer.split())


async def test_persona_prompt_reaches_the_model(agent_stack: Stack, orch: OrchestratorStub) -> None:
    _, events = await run(orch, "persona", "Who are you?")
    assert events[-1][0] == "end"
    system = sim_requests(agent_stack, 1)[-1]["messages"][0]  # type: ignore[index]
    assert system["role"] == "system" and "Captain Lighthouse" in system["content"]


async def test_thread_may_override_the_system_prompt_when_allowed(
    agent_stack: Stack, orch: OrchestratorStub
) -> None:
    metadata = orjson.dumps({"system_prompt": "You speak only about tea."})
    created = await orch.CreateThread(pb.CreateThreadRequest(principal=ME, metadata_json=metadata))
    tid = orjson.loads(created.json)["thread_id"]
    await run(orch, "pinned-prompt", "hi", thread_id=tid)
    assert "only about tea" in sim_requests(agent_stack, 1)[-1]["messages"][0]["content"]  # type: ignore[index]
    await run(orch, "persona", "hi", thread_id=(await run(orch, "persona", "x"))[0])
    created = await orch.CreateThread(pb.CreateThreadRequest(principal=ME, metadata_json=metadata))
    await run(orch, "persona", "hi", thread_id=orjson.loads(created.json)["thread_id"])
    # persona does not allow overrides: its own prompt is used.
    assert "Captain" in sim_requests(agent_stack, 1)[-1]["messages"][0]["content"]  # type: ignore[index]


async def test_a_tool_that_times_out_or_raises_becomes_a_tool_error(orch: OrchestratorStub) -> None:
    for directive, expected in (
        ("[[tool:slow_tool {}]]", "timed out after 0.5s"),
        ("[[tool:broken_tool {}]]", "the tool failed (error id "),  # never its exception
    ):
        tid, events = await run(orch, "tooluser", f"please {directive}")
        assert events[-1][0] == "end", events[-1]
        messages = (await state(orch, tid))["values"]["messages"]  # type: ignore[index]
        tool_message = next(m for m in messages if m["type"] == "tool")
        assert expected in tool_message["content"]
        assert messages[-1]["type"] == "ai"  # the model answered after the error
        statuses = [d["status"] for e, d in events if e == "status"]  # type: ignore[index]
        assert "tool_start" in statuses and "tool_end" in statuses


async def test_recursion_limit_ends_the_run_with_a_clear_error(orch: OrchestratorStub) -> None:
    _, events = await run(orch, "looper", "loop forever")
    name, data = events[-1]
    assert name == "error" and "Recursion limit" in data["message"]  # type: ignore[index]


async def test_approval_pauses_then_rejects_or_approves(orch: OrchestratorStub) -> None:
    directive = '[[tool:delete_everything {"what": "the logs"}]]'
    tid, events = await run(orch, "tooluser", f"clean up {directive}")
    assert events[-1][0] == "end"
    thread = orjson.loads(
        (await orch.GetThread(pb.GetThreadRequest(principal=ME, thread_id=tid))).json
    )
    assert thread["status"] == "interrupted"
    (pending,) = [i for items in thread["interrupts"].values() for i in items]
    assert pending["value"]["tool"] == "delete_everything"
    assert pending["value"]["args"] == {"what": "the logs"}

    reject = orjson.dumps({"resume": {"approved": False, "reason": "not today"}})
    _, events = await run(orch, "tooluser", None, thread_id=tid, command_json=reject)
    assert events[-1][0] == "end"
    messages = (await state(orch, tid))["values"]["messages"]  # type: ignore[index]
    assert "rejected" in [m for m in messages if m["type"] == "tool"][-1]["content"]

    tid, _ = await run(orch, "tooluser", f"clean up {directive}")
    approve = orjson.dumps({"resume": "approve"})
    _, events = await run(orch, "tooluser", None, thread_id=tid, command_json=approve)
    messages = (await state(orch, tid))["values"]["messages"]  # type: ignore[index]
    assert [m for m in messages if m["type"] == "tool"][-1]["content"] == "deleted the logs"
    thread = orjson.loads(
        (await orch.GetThread(pb.GetThreadRequest(principal=ME, thread_id=tid))).json
    )
    assert thread["status"] == "idle" and thread["interrupts"] == {}


async def test_a_500_turn_thread_never_sends_more_than_the_budget(
    agent_stack: Stack, orch: OrchestratorStub
) -> None:
    created = await orch.CreateThread(pb.CreateThreadRequest(principal=ME))
    tid = orjson.loads(created.json)["thread_id"]
    turns = []
    for i in range(500):
        turns += [
            {"role": "user", "content": f"Question {i}: tell me about lighthouse number {i}."},
            {"role": "assistant", "content": f"Lighthouse {i} stands on a rock and is tall."},
        ]
    await orch.UpdateThreadState(
        pb.UpdateThreadStateRequest(
            principal=ME, thread_id=tid, values_json=orjson.dumps({"messages": turns}),
            as_node="agent",
        )
    )  # fmt: skip
    httpx.delete(f"{agent_stack.llm_sim_url}/v1/sim/requests")
    _, events = await run(orch, "small", "What about the last one?", thread_id=tid)
    assert events[-1][0] == "end"
    requests = sim_requests(agent_stack, 10)
    assert len(requests) == 2  # a summary of the older turns, then the answer
    for request in requests:
        sent = convert_to_messages(request["messages"])  # type: ignore[arg-type]
        assert count_tokens_approximately(sent) <= BUDGET
    answer_prompt = requests[-1]["messages"]  # type: ignore[index]
    assert answer_prompt[-1]["content"] == "What about the last one?"  # type: ignore[index]
    final = await state(orch, tid)
    assert final["values"]["summary"]  # type: ignore[index]
    assert len(final["values"]["messages"]) < 100  # type: ignore[index]


async def test_approval_through_langgraph_sdk(agent_stack: Stack) -> None:
    client = get_client(url=agent_stack.gateway_url())
    thread = await client.threads.create()
    tid = thread["thread_id"]
    directive = '[[tool:delete_everything {"what": "old backups"}]]'
    await client.runs.wait(
        tid, "tooluser", input={"messages": [{"role": "user", "content": f"tidy {directive}"}]}
    )
    paused = await client.threads.get(tid)
    assert paused["status"] == "interrupted"
    (pending,) = [i for items in paused["interrupts"].values() for i in items]
    assert pending["value"]["tool"] == "delete_everything"
    state = await client.threads.get_state(tid)
    assert state["next"] == ["tools"]

    await client.runs.wait(tid, "tooluser", command={"resume": {"approved": False}})
    messages = (await client.threads.get_state(tid))["values"]["messages"]
    assert "rejected" in [m for m in messages if m["type"] == "tool"][-1]["content"]
    assert (await client.threads.get(tid))["status"] == "idle"

    await client.runs.wait(
        tid, "tooluser", input={"messages": [{"role": "user", "content": f"again {directive}"}]}
    )
    await client.runs.wait(tid, "tooluser", command={"resume": "approve"})
    messages = (await client.threads.get_state(tid))["values"]["messages"]
    assert [m for m in messages if m["type"] == "tool"][-1]["content"] == "deleted old backups"

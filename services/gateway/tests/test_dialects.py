"""Run events → OpenAI chunks and task events: text extraction, retries, usage, and whole
streams (run event batches in, the dialect's bytes out)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, get_args

import orjson
import pytest

from cai.v1 import orchestrator_pb2 as pb
from cai_common import runs
from cai_gateway.api.routes.runs import RunStatus
from cai_gateway.dialects import (
    ENDED_BECAUSE,
    TASK_STATUS,
    AnswerText,
    CompletionIds,
    ai_text_and_usage,
    chunk,
    error_chunk,
    error_message,
    openai_chunks,
    openai_completion,
    task_event,
    task_events,
    usage_chunk,
)
from cai_gateway.problems import Problem
from cai_gateway.runs import StreamInterrupted


def messages_event(message: dict[str, object]) -> bytes:
    return orjson.dumps([message, {"langgraph_node": "agent"}])


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"type": "AIMessageChunk", "content": "Hel"}, "Hel"),
        ({"type": "ai", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}, "a"),
        ({"type": "tool", "content": "tool output"}, ""),
        ({"type": "human", "content": "question"}, ""),
        ({"type": "AIMessageChunk", "content": None}, ""),
    ],
)
def test_only_the_assistants_text_is_taken(message: dict[str, object], text: str) -> None:
    assert ai_text_and_usage(messages_event(message))[0] == text


def test_usage_is_read_and_summed_and_bad_payloads_are_ignored() -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    text, found = ai_text_and_usage(
        messages_event({"type": "AIMessageChunk", "content": "", "usage_metadata": usage})
    )
    assert text == "" and found == usage
    answer = AnswerText()
    answer.add_usage(usage)
    answer.add_usage(usage)
    assert answer.openai_usage() == {
        "prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30
    }  # fmt: skip
    assert ai_text_and_usage(b"not json") == ("", None)
    assert ai_text_and_usage(b"[]") == ("", None)
    assert ai_text_and_usage(b'["x"]') == ("", None)


def test_text_repeated_after_a_retry_is_not_sent_twice() -> None:
    answer = AnswerText()
    assert [answer.add(t) for t in ("The ", "answer ")] == ["The ", "answer "]
    answer.retry()  # the run restarts its answer from the last checkpoint
    assert [answer.add(t) for t in ("The ", "ans", "wer ", "is 42")] == ["", "", "", "is 42"]
    assert answer.sent == "The answer is 42"


def test_a_retry_that_says_something_else_continues_after_what_was_sent() -> None:
    answer = AnswerText()
    answer.add("Hello wor")
    answer.retry()
    assert answer.add("Goodbye") == "Goodbye"
    assert answer.add("!") == "!"
    assert answer.sent == "Hello worGoodbye!"


def test_openai_chunks_have_the_sdk_shape() -> None:
    ids = CompletionIds("chatcmpl-1", 1700000000, "chat", include_usage=True)
    raw = chunk(ids, {"content": "hi"})
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    body = orjson.loads(raw[6:])
    assert body["object"] == "chat.completion.chunk" and body["usage"] is None
    assert body["choices"] == [
        {"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}
    ]
    usage = orjson.loads(usage_chunk(ids, {"prompt_tokens": 1})[6:])
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 1}
    assert "usage" not in orjson.loads(chunk(CompletionIds("i", 1, "m", False), {})[6:])
    assert orjson.loads(error_chunk("boom")[6:])["error"]["message"] == "boom"


def test_error_messages_and_task_events() -> None:
    assert error_message("error", b'{"error":"X","message":"model down"}') == "model down"
    assert error_message("timeout", b"null") == "The run passed its deadline"
    assert error_message("cancelled", b"garbage") == "The run was cancelled"
    raw = task_event("1-0", "token", "hi")
    assert raw == b'id: 1-0\ndata: {"type":"token","data":"hi"}\n\n'


def test_the_gateway_knows_every_run_status_of_the_shared_vocabulary() -> None:
    every_status = {runs.PENDING, runs.RUNNING} | runs.TERMINAL_STATUSES
    # The `status` filter of GET /threads/{id}/runs accepts exactly the statuses runs have.
    assert set(get_args(RunStatus)) == every_status
    # Every status has a task-API name, and every terminal event an end the dialects describe.
    assert set(TASK_STATUS) == every_status
    assert set(ENDED_BECAUSE) | {runs.END, runs.ERROR} == runs.TERMINAL_EVENTS


# -- whole streams: run event batches in, dialect bytes out ---------------------------------------


def ev(event_id: str, event: str, data: bytes = b"{}") -> pb.RunEvent:
    return pb.RunEvent(id=event_id, event=event, data=data)


def token(event_id: str, text: str, usage: dict[str, int] | None = None) -> pb.RunEvent:
    message: dict[str, object] = {"type": "AIMessageChunk", "content": text}
    if usage:
        message["usage_metadata"] = usage
    return ev(event_id, "messages", messages_event(message))


# A run whose first attempt is lost after "The ans"; the second regenerates the whole answer.
RETRIED_RUN = [
    [ev("1-0", runs.METADATA), token("2-0", "The "), token("3-0", "ans")],
    [ev("4-0", runs.RETRY, b'{"attempt":2}'), token("5-0", "The answer")],
    [token("6-0", " is 42", {"input_tokens": 7, "output_tokens": 4, "total_tokens": 11})],
    [ev("7-0", runs.END, b"null")],
]


async def batches_of(
    batches: list[list[pb.RunEvent]], then: Exception | None = None
) -> AsyncIterator[list[pb.RunEvent]]:
    for batch in batches:
        yield batch
    if then is not None:
        raise then


def sse_datas(raw: bytes) -> list[Any]:
    """The JSON of every `data:` line ([DONE] as the string)."""
    out: list[Any] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            payload = line[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


async def never_asked() -> str:
    raise AssertionError("the run's record is read only when its log has expired")


async def test_task_stream_sends_each_word_once_across_a_retry_and_ends_with_done() -> None:
    raw = b"".join([c async for c in task_events("t1", batches_of(RETRIED_RUN), never_asked)])
    events = sse_datas(raw)
    tokens = "".join(e["data"] for e in events if e["type"] == "token")
    assert tokens == "The answer is 42"
    assert {"type": "status", "data": {"status": "retrying", "attempt": 2}} in events
    assert events[-1] == {"type": "done", "data": {"task_id": "t1", "status": "done"}}
    assert b"id: 7-0\n" in raw  # resumable: every message carries its run event id


@pytest.mark.parametrize(
    ("terminal", "data", "last"),
    [
        (runs.CANCELLED, b'{"action":"interrupt"}',
         {"type": "stopped", "data": {"task_id": "t", "status": "stopped", "action": "interrupt"}}),
        (runs.ERROR, b'{"error":"ModelError","message":"model down"}',
         {"type": "error", "data": {"task_id": "t", "status": "error", "error": "ModelError",
                                    "message": "model down"}}),
        (runs.TIMEOUT, b"null",
         {"type": "error", "data": {"task_id": "t", "status": "error", "error": "timeout",
                                    "message": "The task failed"}}),
    ],
)  # fmt: skip
async def test_task_stream_says_how_a_run_that_did_not_succeed_ended(
    terminal: str, data: bytes, last: dict[str, Any]
) -> None:
    run = [[token("1-0", "Hi")], [ev("2-0", terminal, data)]]
    raw = b"".join([c async for c in task_events("t", batches_of(run), never_asked)])
    assert sse_datas(raw)[-1] == last


async def test_task_stream_expired_log_ends_from_the_record_interrupted_one_retries() -> None:
    async def stopped() -> str:
        return "stopped"

    raw = b"".join([c async for c in task_events("t", batches_of([]), stopped)])
    assert raw == b'id: 0\ndata: {"type":"stopped","data":{"task_id":"t","status":"stopped"}}\n\n'
    interrupted = batches_of([[token("1-0", "Hi")]], StreamInterrupted("shutting down"))
    chunks = [c async for c in task_events("t", interrupted, never_asked)]
    assert chunks[-1] == b"retry: 250\n\n"  # the client reconnects with Last-Event-ID


IDS = CompletionIds("chatcmpl-r", 1700000000, "chat", include_usage=True)


async def test_openai_stream_is_role_then_text_once_then_stop_usage_and_done() -> None:
    raw = b"".join([c async for c in openai_chunks(batches_of(RETRIED_RUN), IDS, 0.0)])
    datas = sse_datas(raw)
    assert datas[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(
        d["choices"][0]["delta"].get("content", "")
        for d in datas[1:]
        if d != "[DONE]" and d["choices"]
    )
    assert text == "The answer is 42"
    assert datas[-3]["choices"][0]["finish_reason"] == "stop"
    assert datas[-2]["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert datas[-1] == "[DONE]"


async def test_openai_stream_ends_with_an_error_chunk_when_the_run_fails_or_breaks() -> None:
    failed = [[token("1-0", "Hi")], [ev("2-0", runs.ERROR, b'{"message":"model down"}')]]
    datas = sse_datas(b"".join([c async for c in openai_chunks(batches_of(failed), IDS, 0.0)]))
    assert datas[-1] == {"error": {"message": "model down", "type": "server_error", "param": None,
                                   "code": None}}  # fmt: skip
    assert "[DONE]" not in datas
    broken = batches_of([[token("1-0", "Hi")]], StreamInterrupted("no orchestrator"))
    datas = sse_datas(b"".join([c async for c in openai_chunks(broken, IDS, 0.0)]))
    assert "no orchestrator" in datas[-1]["error"]["message"]


async def test_openai_completion_is_the_whole_answer_with_usage() -> None:
    body = orjson.loads(await openai_completion(batches_of(RETRIED_RUN), IDS))
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-r"
    assert body["choices"][0]["message"]["content"] == "The answer is 42"
    assert body["usage"]["total_tokens"] == 11


@pytest.mark.parametrize(
    ("terminal", "status"), [(runs.TIMEOUT, 504), (runs.CANCELLED, 409), (runs.ERROR, 502)]
)
async def test_openai_completion_of_a_run_that_did_not_succeed_is_a_problem(
    terminal: str, status: int
) -> None:
    run = [[token("1-0", "Hi")], [ev("2-0", terminal, b"null")]]
    with pytest.raises(Problem) as caught:
        await openai_completion(batches_of(run), IDS)
    assert caught.value.status == status
    broken = batches_of([[token("1-0", "Hi")]], StreamInterrupted("no orchestrator"))
    with pytest.raises(Problem) as caught:
        await openai_completion(broken, IDS)
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}

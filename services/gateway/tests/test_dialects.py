"""Run events → OpenAI chunks and task events: text extraction, retries, usage."""

from __future__ import annotations

from typing import get_args

import orjson
import pytest

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
    task_event,
    usage_chunk,
)


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

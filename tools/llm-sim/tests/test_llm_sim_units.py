"""llm-sim's pure parts, in process: ranking, planning, knobs, config, faults, embeddings."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest

from llm_sim.answer import argument_fragments, plan_reply
from llm_sim.chat_request import parse_chat_request
from llm_sim.config import SimConfig, parse_config
from llm_sim.embeddings import embed
from llm_sim.errors import InvalidRequest
from llm_sim.faults import FaultSampler
from llm_sim.knobs import apply_overrides, server_knobs
from llm_sim.recorder import RequestLog
from llm_sim.text import passages_from, rank_sentences, sentences

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_knowledge_base",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


def request(messages: list[dict[str, Any]], **extra: Any):  # type: ignore[no-untyped-def]
    return parse_chat_request({"model": "m", "messages": messages, **extra})


def test_sentences_split_on_stops_and_lines_and_cut_long_runs() -> None:
    assert sentences("One. Two!\nThree?  Four") == ("One.", "Two!", "Three?", "Four")
    long = " ".join(["word"] * 130)
    assert [len(s.split()) for s in sentences(long)] == [60, 60, 10]


def test_ranking_prefers_overlap_and_fresh_tool_results() -> None:
    passages = passages_from(
        [("Cats purr. The Rhine flows through Basel. Basel has a zoo.", 1), ("Result 42.", 0)]
    )
    ranked = rank_sentences("Where does the Rhine flow?", passages)
    assert ranked == ["Result 42.", "The Rhine flows through Basel."]
    assert rank_sentences("quasars", passages_from([("Cats purr.", 1)])) == []


def test_plan_answers_with_relevant_sentences_and_exact_length() -> None:
    req = request(
        [
            {"role": "system", "content": "Cats purr. The Rhine flows through Basel."},
            {"role": "user", "content": "Rhine?"},
        ]
    )
    reply = plan_reply(req, "auto", None, None)
    assert "".join(reply.tokens) == "The Rhine flows through Basel."
    assert reply.tokens[1] == " Rhine"
    exact = plan_reply(req, "auto", 13, None)
    assert len(exact.tokens) == 13 and "".join(exact.tokens).split()[5] == "The"
    capped = plan_reply(req, "auto", 13, 4)
    assert len(capped.tokens) == 4 and capped.finish_reason == "length"


def test_tool_call_precedence() -> None:
    user = {"role": "user", "content": 'Hi [[tool:get_weather {"city": "Rome"}]]'}
    tools = [SEARCH_TOOL, WEATHER_TOOL]
    directive = plan_reply(request([user], tools=tools), "never", None, None)
    assert [(c.name, c.arguments) for c in directive.tool_calls] == [
        ("get_weather", '{"city":"Rome"}')
    ]
    none = plan_reply(request([user], tools=tools, tool_choice="none"), "always", None, None)
    assert none.tool_calls == [] and none.finish_reason == "stop"

    forced = request(
        [{"role": "user", "content": "Rome"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = plan_reply(forced, "auto", None, None).tool_calls[0]
    assert (call.name, orjson.loads(call.arguments)) == ("get_weather", {"city": "Rome", "days": 1})

    plain = request([{"role": "user", "content": "Rome"}], tools=[WEATHER_TOOL])
    assert plan_reply(plain, "auto", None, None).tool_calls == []  # no search tool: answer
    assert plan_reply(plain, "always", None, None).tool_calls[0].name == "get_weather"

    answered = request(
        [
            user,
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "tool", "tool_call_id": "c", "content": "Sunny in Rome."},
        ],
        tools=tools,
    )
    reply = plan_reply(answered, "auto", None, None)
    assert reply.tool_calls == [] and "".join(reply.tokens) == "Sunny in Rome."


def test_argument_fragments_reassemble() -> None:
    args = '{"query": "what is the refund policy?", "top_k": 3}'
    pieces = argument_fragments(args)
    assert "".join(pieces) == args and len(pieces) > 5


def test_headers_override_metadata_which_overrides_flags() -> None:
    base = server_knobs(SimConfig(ttft_ms=5, reply_tokens=3))
    knobs = apply_overrides(
        base,
        {b"x-sim-ttft-ms": b"50", b"x-sim-cut-after": b"none"},
        {"sim_ttft_ms": "20", "sim_reply_tokens": 9, "unrelated": "x"},
    )
    assert (knobs.ttft_ms, knobs.reply_tokens, knobs.cut_after) == (50.0, 9, None)
    with pytest.raises(InvalidRequest) as bad:
        apply_overrides(base, {b"x-sim-fail-status": b"200"}, None)
    assert bad.value.param == "x-sim-fail-status"


def test_config_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_SIM_TTFT_MS", "250")
    monkeypatch.setenv("LLM_SIM_TOOL_MODE", "never")
    config = parse_config(["--token-delay-ms", "3", "--tool-mode", "always", "--models", "a,b"])
    assert (config.ttft_ms, config.token_delay_ms, config.tool_mode) == (250.0, 3.0, "always")
    assert config.models == ("a", "b") and config.reply_tokens is None
    monkeypatch.setenv("LLM_SIM_FAIL_RATE", "1.5")
    with pytest.raises(SystemExit):
        parse_config([])


def test_fault_sampling_is_reproducible_with_a_seed() -> None:
    config = SimConfig(fail_rate=0.3, cut_after=2, cut_rate=0.5, seed=42)
    runs = []
    for _ in range(2):
        sampler = FaultSampler(config)
        base = server_knobs(config)
        sampled = [sampler.sample(base) for _ in range(50)]
        runs.append([(k.fail_status, k.cut_after) for k in sampled])
    assert runs[0] == runs[1]
    rng = random.Random(42)
    expected_first = (500 if rng.random() < 0.3 else None, 2 if rng.random() < 0.5 else None)
    assert runs[0][0] == expected_first
    assert {f for f, _ in runs[0]} == {500, None} and {c for _, c in runs[0]} == {2, None}


def test_request_log_is_bounded_and_newest_last() -> None:
    log = RequestLog(3)
    for i in range(5):
        log.add({"i": i})
    assert [r["i"] for r in log.recent()] == [2, 3, 4]
    assert [r["i"] for r in log.recent(2)] == [3, 4] and log.recent(0) == []
    log.clear()
    assert log.recent() == []


def test_embeddings_are_unit_vectors_and_stable() -> None:
    for text in ("The Rhine flows through Basel", "", "the of and"):
        vector = embed(text, 384)
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0)
        assert vector == embed(text, 384)
    assert len(embed("x", 17)) == 17

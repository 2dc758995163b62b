"""The integrity tally: streamed replies against the ones Cai stored."""

from __future__ import annotations

from cai_bench.loadgen import StreamResult
from cai_bench.verify import Integrity


def streamed(text: str, message_id: str = "m1") -> StreamResult:
    r = StreamResult("cai", thread_id="t1", terminal="end")
    r.text, r.message_id = text, message_id
    return r


def test_an_identical_reply_is_checked_and_clean() -> None:
    tally = Integrity()
    tally.compare(streamed("a b c"), "m1", "a b c")
    assert tally.record() == {
        "streams_checked": 1, "state_unavailable": 0, "text_mismatch": 0, "tokens_lost": 0,
        "tokens_repeated": 0, "event_ids_repeated_or_reordered": 0, "examples": [],
    }  # fmt: skip


def test_lost_and_repeated_tokens_are_counted() -> None:
    tally = Integrity()
    tally.compare(streamed("a b"), "m1", "a b c d")  # the stream lost two
    tally.compare(streamed("a b c c"), "m1", "a b c")  # the stream repeated one
    rec = tally.record()
    assert (rec["text_mismatch"], rec["tokens_lost"], rec["tokens_repeated"]) == (2, 2, 1)
    assert rec["examples"][0].startswith("t1: streamed 'a b' stored 'a b c d'")


def test_another_message_id_is_a_mismatch_unless_the_stream_had_none() -> None:
    tally = Integrity()
    tally.compare(streamed("a", "m1"), "m2", "a")
    tally.compare(streamed("a", ""), "m2", "a")
    assert tally.record()["text_mismatch"] == 1


def test_unreadable_state_is_counted_with_at_most_three_examples() -> None:
    tally = Integrity()
    for _ in range(5):
        tally.unavailable("t9", ValueError("boom"))
    rec = tally.record()
    assert rec["state_unavailable"] == 5 and rec["streams_checked"] == 0
    assert rec["examples"] == ["state of t9: boom"] * 3

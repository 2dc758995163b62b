"""The run vocabulary every component shares: event names and run statuses.

The orchestrator writes these names into a run's event log, the gateway frames them, the bench and
the chaos tests read them. Defined once here so the five places that once spelled them agree.
"""

from __future__ import annotations

import re

# The last event of every run's log. Exactly one of them ends a log.
END = "end"  # the graph finished
ERROR = "error"  # the graph failed, or the run gave up after its attempts
CANCELLED = "cancelled"  # a client cancelled the run (interrupt or rollback)
TIMEOUT = "timeout"  # the run passed its deadline
TERMINAL_EVENTS: frozenset[str] = frozenset({END, ERROR, CANCELLED, TIMEOUT})
TERMINAL_EVENTS_BYTES: frozenset[bytes] = frozenset(e.encode() for e in TERMINAL_EVENTS)

# Events a run writes before its terminal one, besides LangGraph's stream modes.
METADATA = "metadata"  # the first event of an attempt: run id and attempt number
RETRY = "retry"  # a new attempt starts: clients drop what the previous attempt streamed

# A run's status in its record (LangGraph Server's names).
PENDING = "pending"
RUNNING = "running"
SUCCESS = "success"
INTERRUPTED = "interrupted"
TERMINAL_STATUSES: frozenset[str] = frozenset({SUCCESS, ERROR, TIMEOUT, INTERRUPTED})
TERMINAL_STATUSES_BYTES: frozenset[bytes] = frozenset(s.encode() for s in TERMINAL_STATUSES)

# The terminal event each final status is written with.
TERMINAL_EVENT_OF_STATUS: dict[str, str] = {
    SUCCESS: END,
    ERROR: ERROR,
    TIMEOUT: TIMEOUT,
    INTERRUPTED: CANCELLED,
}

# Trailing metadata of the orchestrator's reads that can be large (SearchThreads, ListRuns,
# CancelRuns): how many records the call read. The gateway charges rate-limit tokens by it.
WORK_TRAILER = "cai-work"

# A run's event ids are its log's Redis Stream entry ids: "<ms>-<seq>", both unsigned 64-bit.
EVENT_ID_PART_MAX = 2**64 - 1
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def parse_event_id(event_id: str | bytes) -> tuple[int, int]:
    """Parse an event id ("1700000000000-3"); "", "0" and "0-0" mean the beginning.

    Redis rejects a whole XREAD when one of its ids is malformed, so every id a client sends is
    checked here, before it can reach a read that other clients' streams share.

    Raises:
        ValueError: not `<ms>-<seq>` with both parts decimal and below 2**64.
    """
    if isinstance(event_id, bytes):
        event_id = event_id.decode("ascii", "replace")
    if event_id in ("", "0"):
        return (0, 0)
    match = _EVENT_ID.fullmatch(event_id)
    if match is None:
        raise ValueError(f"not an event id: {event_id[:64]!r} (expected <ms>-<seq>)")
    ms, seq = int(match[1]), int(match[2])
    if ms > EVENT_ID_PART_MAX or seq > EVENT_ID_PART_MAX:
        raise ValueError(f"not an event id: {event_id!r} (each part must be below 2**64)")
    return (ms, seq)

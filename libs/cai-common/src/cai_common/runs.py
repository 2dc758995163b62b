"""The run vocabulary every component shares: event names and run statuses.

The orchestrator writes these names into a run's event log, the gateway frames them, the bench and
the chaos tests read them. Defined once here so the five places that once spelled them agree.
"""

from __future__ import annotations

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

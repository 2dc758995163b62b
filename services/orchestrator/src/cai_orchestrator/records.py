"""The run engine's records: what a run and a thread are, what creating a run asks, its errors.

Plain data, decoded from and encoded to Redis hashes by the store; no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from cai_orchestrator.keys import RunKeys, ThreadKeys, run_keys

STRATEGIES = frozenset({"reject", "enqueue", "interrupt", "rollback"})
CANCEL_ACTIONS = frozenset({"interrupt", "rollback"})


def now_iso() -> str:
    """UTC timestamp in LangGraph Server's format."""
    return datetime.now(UTC).isoformat()


class StoreError(Exception):
    """A request the engine refuses; `code` maps onto gRPC status codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(what: str, ident: str) -> StoreError:
    """The error for an unknown (or another tenant's) thread, run or assistant."""
    return StoreError("not_found", f"{what} {ident} not found")


def state_too_large(thread_id: str, current: int, adding: int, limit: int) -> StoreError | None:
    """The error for a write of `adding` bytes that would grow a thread's state of `current`
    bytes past `limit` (0: no limit), or None."""
    if limit <= 0 or current + adding <= limit:
        return None
    where = f"Thread {thread_id}'s state" if thread_id else "The run's state"
    return StoreError(
        "too_large",
        f"{where} would grow to {current + adding} bytes, past the limit of {limit} bytes "
        "(MAX_THREAD_STATE_BYTES); continue on a new thread",
    )


@dataclass(frozen=True, slots=True)
class RunRef:
    """Where a run lives: enough to build every key of it."""

    tenant: str
    thread_id: str
    run_id: str

    @property
    def keys(self) -> RunKeys:
        """The run's Redis keys."""
        return run_keys(self.tenant, self.thread_id, self.run_id)

    @property
    def thread_keys(self) -> ThreadKeys:
        """Its thread's Redis keys."""
        return ThreadKeys(self.tenant, self.thread_id)


@dataclass
class RunRecord:
    """A run as stored in Redis."""

    run_id: str
    thread_id: str
    tenant: str
    assistant_id: str
    status: str
    created_at: str
    updated_at: str
    multitask_strategy: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    attempt: int = 0
    replica: str = ""
    error: str = ""
    temporary: bool = False
    trace: dict[str, str] = field(default_factory=dict)
    # The thread's head checkpoint when the run first started ("" = none; None = not started).
    base_checkpoint: str | None = None
    # JSON bytes the run's input adds to its thread's state (the state limit checks it again when
    # the run starts: the thread may have grown while the run waited). None: not recorded.
    write_bytes: int | None = None
    # A stream a server ended left a cancel waiting for the client to re-join (reattach.py).
    reattach: bool = False
    tier: str = "standard"

    @property
    def ref(self) -> RunRef:
        """Where the run lives."""
        return RunRef(self.tenant, self.thread_id, self.run_id)

    @classmethod
    def pending(
        cls, new: NewRun, run_id: str, thread_id: str, created_at: str, write_bytes: int = 0
    ) -> RunRecord:
        """A new run's record, before it is queued."""
        return cls(
            run_id=run_id,
            thread_id=thread_id,
            tenant=new.tenant,
            assistant_id=new.assistant_id,
            status="pending",
            created_at=created_at,
            updated_at=created_at,
            multitask_strategy=new.multitask_strategy,
            kwargs=new.kwargs,
            metadata=new.metadata,
            temporary=new.temporary,
            trace=new.trace,
            write_bytes=write_bytes,
            tier=new.tier or "standard",
        )

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> RunRecord:
        """Decode the Redis hash."""
        s = {k.decode(): v.decode() for k, v in h.items()}
        return cls(
            run_id=s["run_id"],
            thread_id=s.get("thread_id", ""),
            tenant=s["tenant"],
            assistant_id=s.get("assistant_id", ""),
            status=s.get("status", "pending"),
            created_at=s.get("created_at", ""),
            updated_at=s.get("updated_at", ""),
            multitask_strategy=s.get("multitask_strategy", "enqueue"),
            kwargs=orjson.loads(s.get("kwargs") or "{}"),
            metadata=orjson.loads(s.get("metadata") or "{}"),
            attempt=int(s.get("attempt") or 0),
            replica=s.get("replica", ""),
            error=s.get("error", ""),
            temporary=s.get("temporary") == "1",
            trace=orjson.loads(s.get("trace") or "{}"),
            base_checkpoint=s.get("base_checkpoint"),
            write_bytes=int(s["write_bytes"]) if s.get("write_bytes") else None,
            reattach=s.get("reattach") == "1",
            tier=s.get("tier") or "standard",
        )

    def to_hash(self) -> dict[str, str]:
        """The fields a new run's hash starts with."""
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "tenant": self.tenant,
            "assistant_id": self.assistant_id,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "multitask_strategy": self.multitask_strategy,
            "kwargs": orjson.dumps(self.kwargs).decode(),
            "metadata": orjson.dumps(self.metadata).decode(),
            "attempt": str(self.attempt),
            "temporary": "1" if self.temporary else "0",
            "trace": orjson.dumps(self.trace).decode(),
            "write_bytes": str(self.write_bytes or 0),
            "tier": self.tier,
        }


@dataclass
class ThreadRecord:
    """A thread as stored in Redis (its state lives in the checkpointer)."""

    thread_id: str
    tenant: str
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    status: str
    active_run: str
    # JSON bytes of the thread's values when a run or update last wrote them (the state limit).
    # The hash also holds `temporary` (a stateless run's thread, which takes no other run; the
    # store never returns it) and `deleting` (no new run starts on it), read by the Lua scripts.
    state_bytes: int = 0

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> ThreadRecord:
        """Decode the Redis hash."""
        s = {k.decode(): v.decode() for k, v in h.items()}
        return cls(
            thread_id=s["thread_id"],
            tenant=s["tenant"],
            created_at=s.get("created_at", ""),
            updated_at=s.get("updated_at", ""),
            metadata=orjson.loads(s.get("metadata") or "{}"),
            status=s.get("status", "idle"),
            active_run=s.get("active_run", ""),
            state_bytes=int(s.get("state_bytes") or 0),
        )


@dataclass
class NewRun:
    """What CreateRun asks for, already validated."""

    tenant: str
    thread_id: str
    assistant_id: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    multitask_strategy: str = "enqueue"
    if_not_exists: str = "reject"
    idempotency_key: str = ""
    temporary: bool = False
    trace: dict[str, str] = field(default_factory=dict)
    # The caller's scheduling tier (premium | standard | batch; "": the default) and quotas
    # (0: the defaults), from its API key (scheduler.py).
    tier: str = ""
    max_running_runs: int = 0
    max_queued_runs: int = 0


@dataclass(frozen=True, slots=True)
class Created:
    """What creating a run decided."""

    run: RunRecord
    existed: bool = False  # an earlier run with the same Idempotency-Key
    dispatched: bool = False  # it is the thread's active run now: it goes to the queue
    interrupts: str = ""  # the active run it asked to stop (interrupt/rollback strategies)

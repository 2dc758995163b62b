"""Every Redis key name the orchestrator uses, built here and nowhere else.

Layout (docs/architecture.md, "Redis keys"): every key of one thread and of its runs carries the
thread's hash tag `{t:<tenant>:<thread_id>}`, so each Lua script about one thread touches one Redis
Cluster slot, and the tenant is part of the name (two tenants may both have a thread "x"). The
queue, the dispatch intents, the tenant indexes and the replica's wake stream are keys of their
own; no script touches both a thread's keys and one of those.

Lua scripts never spell a key: they get every key in KEYS, or (for a run whose id they learn
inside the script) the thread's run-key prefix from `run_prefix()` in ARGV.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

QUEUE = "cai:runs:queue"
GROUP = "cai-orchestrators"
# Runs about to be appended to the queue (sorted set, score = when to check): the queue append
# is a second step after the run is recorded, and a crash between the two must not lose the run.
DISPATCHING = "cai:runs:dispatching"
CANCEL_CHANNEL = "cai:cancel"
# Cancels waiting for a client to re-join its run's stream (sorted set, score = deadline); see
# reattach.py.
REATTACH = "cai:runs:reattach"


# Names the checkpointer's threads (see ThreadKeys.checkpoint_thread).
_CHECKPOINT_THREADS = uuid.UUID("0d4f6b1e-2c53-4c5e-8a3c-6f2a9b7e41d0")


def thread_tag(tenant: str, thread_id: str) -> str:
    """The hash tag shared by a thread's keys and its runs' keys.

    Unambiguous because a tenant name never contains ':' (cai_common.tenants, checked on every
    RPC): tenant `a:b` with thread `c` would otherwise share keys with tenant `a`, thread `b:c`.
    """
    return "{t:" + tenant + ":" + thread_id + "}"


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The keys of one thread (all in one cluster slot)."""

    tenant: str
    thread_id: str

    @property
    def prefix(self) -> str:
        """`cai:{t:<tenant>:<thread>}:`, the start of every key of the thread."""
        return "cai:" + thread_tag(self.tenant, self.thread_id) + ":"

    @property
    def record(self) -> str:
        """Hash: the thread record."""
        return self.prefix + "thread"

    @property
    def checkpoint_thread(self) -> str:
        """The thread id the checkpointer keeps this thread's state under.

        The tenant is part of it, as of every key here: two tenants' threads "x" never share
        checkpoints. A UUID, so no saver's key syntax (the Redis saver splits keys on ':') can
        be broken by a tenant's or a thread's name.
        """
        return str(uuid.uuid5(_CHECKPOINT_THREADS, self.tenant + "\n" + self.thread_id))

    @property
    def runs(self) -> str:
        """Sorted set: the thread's newest run ids by creation time (trimmed: `RunStore`)."""
        return self.prefix + "runs"

    @property
    def pending(self) -> str:
        """List: runs waiting for the thread's active run to finish."""
        return self.prefix + "pending"

    @property
    def run_prefix(self) -> str:
        """What a run key of this thread starts with (Lua appends the run id)."""
        return self.prefix + "run:"

    def idempotency(self, key: str) -> str:
        """String: the run created on this thread for an Idempotency-Key.

        The key is the caller's text: it is named by its SHA-256, so no key (whatever its length
        or characters) reaches past `idem:` into another name.
        """
        return self.prefix + "idem:" + hashlib.sha256(key.encode()).hexdigest()

    def run(self, run_id: str) -> RunKeys:
        """The keys of one of the thread's runs."""
        return RunKeys(self, run_id)


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The keys of one run (in its thread's slot)."""

    thread: ThreadKeys
    run_id: str

    @property
    def record(self) -> str:
        """Hash: the run record."""
        return self.thread.run_prefix + self.run_id

    @property
    def events(self) -> str:
        """Stream: the run's event log; entry ids are the event ids clients resume from."""
        return self.record + ":events"

    @property
    def lease(self) -> str:
        """String with TTL: the replica executing the run."""
        return self.record + ":lease"

    @property
    def cancel(self) -> str:
        """String: the cancel action requested for the run (interrupt | rollback)."""
        return self.record + ":cancel"


def run_keys(tenant: str, thread_id: str, run_id: str) -> RunKeys:
    """The keys of a run."""
    return ThreadKeys(tenant, thread_id).run(run_id)


def tenant_threads(tenant: str) -> str:
    """Sorted set: the tenant's thread ids by creation time (for search)."""
    return "cai:tenant:" + tenant + ":threads"


def tenant_unfinished_runs(tenant: str) -> str:
    """Sorted set: the tenant's runs on real threads that may not have ended, by creation time.

    For bulk cancels by status. Written before a run's record and cleared when it finishes, so an
    entry may name a run that ended or never was: readers check the record and drop such entries.
    """
    return "cai:tenant:" + tenant + ":unfinished"


# Fair dispatch (scheduler.FairQueue): runs wait here, per tenant, until a replica has room;
# then they go to QUEUE in fair order. One hash tag: the scheduler's scripts touch one slot.
SCHED = "cai:{sched}:"
SCHED_TENANTS = SCHED + "tenants"  # sorted set: tenant -> start tag of its first waiting run
SCHED_VTIME = SCHED + "vtime"  # string: the start tag of the run dispatched last
SCHED_FINISH = SCHED + "finish"  # hash: tenant -> finish tag of its last run (list ran empty)
SCHED_WEIGHT = SCHED + "weight"  # hash: tenant -> weight of its tier
SCHED_WAITING = SCHED + "waiting"  # string: runs waiting in every tenant's list
SCHED_FEEDING = SCHED + "feeding"  # sorted set: jobs taken to be appended to QUEUE, by time
SCHED_LIST_PREFIX = SCHED + "t:"  # + tenant: list of the tenant's waiting jobs, oldest first


def sched_list(tenant: str) -> str:
    """List: the tenant's jobs waiting for fair dispatch, oldest first."""
    return SCHED_LIST_PREFIX + tenant


def tenant_admitted(tenant: str) -> str:
    """Sorted set: the tenant's admitted runs that have not ended (`thread\nrun`, score = when
    admitted), counted against its quotas (scheduler.py). Not in any thread's slot."""
    return "cai:sched:tenant:" + tenant + ":admitted"


def tenant_repair(tenant: str) -> str:
    """String with TTL: a repair of the tenant's admitted runs ran recently (scheduler.py)."""
    return "cai:sched:tenant:" + tenant + ":repair"


def run_thread(tenant: str, run_id: str) -> str:
    """String: the thread of a run on a real thread, for callers that know only the run id.

    Stateless runs have none: their temporary thread's id is the run id.
    """
    return "cai:tenant:" + tenant + ":run:" + run_id


def wake(replica_id: str) -> str:
    """Stream: pokes this replica's log tailer so it picks up new subscriptions at once."""
    return "cai:tailer:" + replica_id + ":wake"

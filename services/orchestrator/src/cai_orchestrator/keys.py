"""Redis key names. One place, so the queue, the worker and the servicer agree."""

QUEUE = "cai:runs:queue"
GROUP = "cai-orchestrators"


def run(run_id: str) -> str:
    """Hash: the run record."""
    return f"cai:run:{run_id}"


def events(run_id: str) -> str:
    """Stream: the run's event log."""
    return f"cai:run:{run_id}:events"


def lease(run_id: str) -> str:
    """String with TTL: the replica executing the run."""
    return f"cai:run:{run_id}:lease"


def cancel(run_id: str) -> str:
    """String: the cancel action requested for the run (interrupt | rollback)."""
    return f"cai:run:{run_id}:cancel"


CANCEL_CHANNEL = "cai:cancel"


def thread(thread_id: str) -> str:
    """Hash: the thread record."""
    return f"cai:thread:{thread_id}"


def thread_runs(thread_id: str) -> str:
    """Sorted set: the thread's run ids by creation time."""
    return f"cai:thread:{thread_id}:runs"


def thread_pending(thread_id: str) -> str:
    """List: runs waiting for the thread's active run to finish (enqueue strategy)."""
    return f"cai:thread:{thread_id}:pending"


def tenant_threads(tenant: str) -> str:
    """Sorted set: the tenant's thread ids by creation time (for search)."""
    return f"cai:tenant:{tenant}:threads"


def idempotency(tenant: str, key: str) -> str:
    """String: run id created for an Idempotency-Key."""
    return f"cai:idem:{tenant}:{key}"


def wake(replica_id: str) -> str:
    """Stream: pokes this replica's log tailer so it picks up new subscriptions at once."""
    return f"cai:tailer:{replica_id}:wake"

"""Every Redis key, field and state name of the queue, in one place (producer and worker share it).

Key (type)                        holds                                              bounded by
sandboxd:tenants (set)            tenants whose stream has entries            removed when empty
sandboxd:rr (string)              the fleet's round-robin counter                    one integer
sandboxd:queue:{tenant} (stream)  one entry per runnable execution; group "workers";
                                  pending while a worker runs it     entry deleted when acked,
                                                                     key when the stream empties
sandboxd:delayed (zset)           execution id -> run-at ms (delayed and retried)  drained when due
sandboxd:wake (stream)            "work arrived", for idle workers to block on     MAXLEN ~ 100
sandboxd:dead (stream)            dead letters: id, tenant, attempts, kind, reason  MAXLEN ~ 10000
sandboxd:job:{id} (hash)          request, tenant, state, attempts, times          TTL: retention
sandboxd:events:{id} (stream)     the execution's events; entry ids ATTEMPT-SEQ    TTL: retention
sandboxd:blob:{id}:{a}:{n}        one event too large for the stream               TTL: retention

Times are Redis server time in milliseconds (scripts read TIME), so producers' and workers' clocks
never have to agree.
"""

from __future__ import annotations

PREFIX = "sandboxd:"
GROUP = "workers"

TENANTS = PREFIX + "tenants"
ROUND_ROBIN = PREFIX + "rr"
DELAYED = PREFIX + "delayed"
WAKE = PREFIX + "wake"
DEAD = PREFIX + "dead"
QUEUE_PREFIX = PREFIX + "queue:"
JOB_PREFIX = PREFIX + "job:"

WAKE_MAXLEN = 100
DEAD_MAXLEN = 10_000

# An event whose serialized size is above this lives in its own key; stream entries stay small.
INLINE_EVENT_BYTES = 64 * 1024
# The largest request or event the queue stores (as the daemon's default max_input_bytes).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_RETENTION_S = 24 * 3600.0


def queue(tenant_id: str) -> str:
    """The tenant's stream of runnable executions."""
    return QUEUE_PREFIX + tenant_id


def job(execution_id: str) -> str:
    """The execution's record: request, tenant, state, attempts, times."""
    return JOB_PREFIX + execution_id


def events(execution_id: str) -> str:
    """The execution's event stream."""
    return f"{PREFIX}events:{execution_id}"


def blob(execution_id: str, attempt: int, seq: int) -> str:
    """Where one large event of an attempt is kept."""
    return f"{PREFIX}blob:{execution_id}:{attempt}:{seq}"


# Fields of a tenant stream entry.
ENTRY_ID = "id"

# Fields of an event stream entry: the serialized ExecutionEvent, or the key of its blob.
EVENT_INLINE = "e"
EVENT_BLOB = "b"

# Fields of the job hash.
REQUEST = "request"
TENANT = "tenant"
STATE = "state"
ATTEMPTS = "attempts"
LAST_KIND = "last_kind"  # ErrorKind name of the last attempt's failure
LAST_ERROR = "last_error"
WORKER = "worker"
ENQUEUED_MS = "enqueued_ms"
RUN_AT_MS = "run_at_ms"
STARTED_MS = "started_ms"
FINISHED_MS = "finished_ms"

# Values of the job's state field.
QUEUED = "queued"
DELAYED_STATE = "delayed"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
DEAD_STATE = "dead"

# Fields of a dead letter.
DEAD_ID = "id"
DEAD_TENANT = "tenant"
DEAD_ATTEMPTS = "attempts"
DEAD_KIND = "kind"
DEAD_REASON = "reason"

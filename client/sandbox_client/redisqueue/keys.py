"""Every Redis key, field and state name of the queue, in one place (producer and worker share it).

Key (type)                          holds                                      cost per operation
sandboxd:ring (list)                tenants with waiting work, each once;      LMOVE/RPUSH/RPOP O(1)
                                    taking rotates it (round robin)
sandboxd:tenant:{tenant} (list)     the tenant's waiting execution ids, FIFO    RPUSH/LPOP O(1)
sandboxd:backlog (zset)             tenant -> waiting count (top tenants)       ZINCRBY O(log T)
sandboxd:running (hash)             tenant -> executions taken, not finished    HINCRBY O(1)
sandboxd:waiting (string)           waiting executions of every tenant          INCRBY O(1)
sandboxd:claims (zset)              execution id -> claim deadline ms           ZADD O(log R)
sandboxd:delayed (zset)             execution id -> run-at ms (delays, retries) ZADD O(log D)
sandboxd:wake (list)                at most one token: "work is waiting";       BLPOP: one waiter
                                    an idle worker blocks on it                 woken per token
sandboxd:dead (stream)              dead letters: id, tenant, attempts, kind    MAXLEN ~ 10000
sandboxd:job:{id} (hash)            request, tenant, state, attempts, claim     TTL: retention
sandboxd:events:{id} (stream)       the execution's events; entry ids ATTEMPT-SEQ  TTL: retention
sandboxd:blob:{id}:{a}:{n}          one event too large for the stream         TTL: retention

Tenant ids never collide with these keys, whatever characters they hold: a tenant's only key is
TENANT_PREFIX followed by the id, no other key starts with TENANT_PREFIX, and ids appear
elsewhere only as whole values (list elements, zset members, hash fields), never parsed out of a
longer string. Execution ids likewise: each of their keys has its own prefix, and a blob key
ends with two numbers after the id.

Times are Redis server time in milliseconds (scripts read TIME), so producers' and workers' clocks
never have to agree.
"""

from __future__ import annotations

PREFIX = "sandboxd:"

RING = PREFIX + "ring"
BACKLOG = PREFIX + "backlog"
RUNNING_BY_TENANT = PREFIX + "running"
WAITING = PREFIX + "waiting"
CLAIMS = PREFIX + "claims"
DELAYED = PREFIX + "delayed"
WAKE = PREFIX + "wake"
DEAD = PREFIX + "dead"
TENANT_PREFIX = PREFIX + "tenant:"
JOB_PREFIX = PREFIX + "job:"

# Every key of the queue that is not per tenant or per execution.
FIXED = (RING, BACKLOG, RUNNING_BY_TENANT, WAITING, CLAIMS, DELAYED, WAKE, DEAD)

DEAD_MAXLEN = 10_000

# An event whose serialized size is above this lives in its own key; stream entries stay small.
INLINE_EVENT_BYTES = 64 * 1024
# The largest request or event the queue stores (as the daemon's default max_input_bytes).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_RETENTION_S = 24 * 3600.0


def tenant_queue(tenant_id: str) -> str:
    """The tenant's list of waiting execution ids."""
    return TENANT_PREFIX + tenant_id


def job(execution_id: str) -> str:
    """The execution's record: request, tenant, state, attempts, claim, times."""
    return JOB_PREFIX + execution_id


def events(execution_id: str) -> str:
    """The execution's event stream."""
    return f"{PREFIX}events:{execution_id}"


def blob(execution_id: str, attempt: int, seq: int) -> str:
    """Where one large event of an attempt is kept."""
    return f"{PREFIX}blob:{execution_id}:{attempt}:{seq}"


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
WORKER = "worker"  # the consumer that began the last attempt
ENQUEUED_MS = "enqueued_ms"
RUN_AT_MS = "run_at_ms"
QUEUED_MS = "queued_ms"  # when it last joined its tenant's list (the age of waiting work)
STARTED_MS = "started_ms"
FINISHED_MS = "finished_ms"
# The claim: every take (new or taken over) is a new delivery, numbered from 1 per execution.
HOLDER = "holder"  # the consumer holding the current delivery
DELIVERY = "delivery"  # the current delivery's number
BEGUN = "begun"  # the delivery whose attempt was counted (BEGIN replayed counts nothing)
RELEASED = "released"  # the delivery its holder finished or handed back

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

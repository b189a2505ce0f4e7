"""Redis key names of the async queue: one place, because the operator (KEDA trigger) and docs/async.md name them too.

Per endpoint, keyed by its queue id `<namespace>/<name>` (see `queue_id`; DNS labels, so no `:`, `/` or braces):
- `bundleserve:{<namespace>/<name>}:stream`  the task stream (XLEN = pending + in flight: finished entries are deleted)
- consumer group `workers` on that stream; consumer = `<hostname>-<pid>` (one per router process), plus
  `<hostname>-<pid>:submit` for tasks a submission claimed for that process's idle worker
- `bundleserve:{<namespace>/<name>}:dead`    the dead-letter stream (tasks that failed after maxAttempts)
- `bundleserve:{<namespace>/<name>}:done`    pub/sub channel carrying the id of every task that reached a terminal state
- `bundleserve:{<namespace>/<name>}:callbacks` (the stream's name with `:callbacks` for `:stream`: the pick-up script
  derives it so) the callback outbox: a sorted set of task ids scored by the next
  delivery attempt's due time (ms since the epoch); a claimed member is re-scored to the end of its lease
- `bundleserve:{<namespace>/<name>}:task:<task_id>` per task: a hash (the task record), with a TTL
- `bundleserve:{<namespace>/<name>}:bytes` the bytes the endpoint's live task records hold (the byte quota's counter)
- `bundleserve:{<namespace>/<name>}:idem:<sha256>` one client call's task id, by a digest of its idempotency key
- `bundleserve:{<namespace>/<name>}:demand` a gateway's recent sync/streaming traffic to an endpoint that scales from
  zero: exists while calls were held or in flight within `scaleToZeroAfterSeconds` (its TTL); the value is how many
  calls that gateway holds for a replica (queue/demand.py)
- `bundleserve:{<namespace>/<name>}:wake`  pub/sub channel: a gateway began holding a call (the operator scales up now)
Every key and channel of an endpoint starts with `bundleserve:{<namespace>/<name>}:` (`endpoint_prefix`): that is what
the endpoint's own Redis ACL user may touch and nothing else (docs/security.md). The hash tag also puts all of them in
one cluster slot. A task id alone does not say where its record is: readers by id probe the endpoints the caller may
see (`gateway.tasks.EndpointQueues.owner`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid

PREFIX = "bundleserve"
GROUP = "workers"
_TASK_ID = re.compile(r"^[0-9a-f]{32}$")


def queue_id(namespace: str, name: str, variant: str | None = None) -> str:
    """The identity of an endpoint's queue: namespace and name, because same-named Endpoints in two namespaces may
    share one Redis. Both are DNS labels, so `/` cannot occur in either and the id is unambiguous.

    A declared production variant (spec.variants) has a queue of its own, `<namespace>/<name>/<variant>`: a task
    is given a variant when it is submitted and runs on that variant's workers (docs/async.md, "Variants"). The
    endpoint's own queue (no variant) is the implicit variant's."""
    return f"{namespace}/{name}" if variant is None else f"{namespace}/{name}/{variant}"


def stream(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:stream"


def dead_letter(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:dead"


def done_channel(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:done"


def callback_outbox(queue: str) -> str:
    return f"{PREFIX}:{{{queue}}}:callbacks"


def endpoint_prefix(queue: str) -> str:
    """Every key and channel of the queue starts with this (the ACL key and channel pattern is this plus `*`)."""
    return f"{PREFIX}:{{{queue}}}:"


def demand(queue: str) -> str:
    return f"{endpoint_prefix(queue)}demand"


def wake_channel(queue: str) -> str:
    return f"{endpoint_prefix(queue)}wake"


#: PSUBSCRIBE pattern of every endpoint's wake channel (braces are literal in Redis glob patterns).
WAKE_PATTERN = f"{PREFIX}:{{*}}:wake"


def queue_of_wake_channel(channel: str) -> str | None:
    """The queue id a wake channel belongs to; None for any other name."""
    head, tail = f"{PREFIX}:{{", "}:wake"
    if not (channel.startswith(head) and channel.endswith(tail)):
        return None
    queue = channel[len(head) : -len(tail)]
    return queue if queue.count("/") == 1 and "{" not in queue and "}" not in queue else None


def variant_prefix(queue: str) -> str:
    """Every key and channel of the endpoint's variant queues (`queue_id(namespace, name, variant)`) starts with this."""
    return f"{PREFIX}:{{{queue}/"


def task(queue: str, task_id: str) -> str:
    return f"{endpoint_prefix(queue)}task:{task_id}"


def byte_counter(queue: str) -> str:
    return f"{endpoint_prefix(queue)}bytes"


def idempotency(queue: str, key: str) -> str:
    """The record of one client call's task (its retries submit nothing new), by a digest of its idempotency key."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{endpoint_prefix(queue)}idem:{digest}"


def new_task_id() -> str:
    return uuid.uuid4().hex


def is_task_id(value: str) -> bool:
    return _TASK_ID.match(value) is not None


def consumer_name() -> str:
    """The consumer of this process in the endpoint's group: stable for the process, distinct across pods."""
    return f"{socket.gethostname()}-{os.getpid()}"


def submit_consumer(consumer: str) -> str:
    """The consumer a submission claims under for `consumer`'s worker: what it holds is known to have come from a
    submission, so the worker can hand it back when that submission's reply was lost."""
    return f"{consumer}:submit"

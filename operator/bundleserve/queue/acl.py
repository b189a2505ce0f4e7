"""Per-Endpoint Redis ACL users: the credential an Endpoint's pods get reaches that Endpoint's keys and channels only.

Every key and channel of a queue starts with `keys.endpoint_prefix(queue)` (`bundleserve:{<namespace>/<name>}:`), so
one key pattern and one channel pattern describe everything a router of that endpoint may touch. The operator creates
the user with the master credential (which stays in its own namespace) on every reconcile and deletes it with the
Endpoint; the user's password lives only in the Endpoint's own credentials Secret (controller/secrets.py).

Commands: the data categories the queue uses, without the administrative and dangerous ones and without everything
that lists or names keys or channels it does not own (SCAN, KEYS, RANDOMKEY, DBSIZE, PUBSUB CHANNELS) or changes what
every user shares (FUNCTION, SCRIPT FLUSH/KILL, SELECT/SWAPDB/MOVE). Key-taking commands are checked against the key
pattern by the server itself, also inside Lua scripts.

Errors: `AclUnsupported` (the server has no ACLs: Redis < 6) and redis' own `RedisError` for everything else.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bundleserve.queue import keys
from bundleserve.queue.config import DEFAULT_REDIS_TIMEOUT_SECONDS
from bundleserve.queue.connection import connect, observed_config

USER_PREFIX = "bundleserve."
#: The categories and commands granted, in ACL SETUSER syntax (order matters: later rules win).
COMMAND_RULES = (
    "-@all",
    "+@read",
    "+@write",
    "+@stream",
    "+@hash",
    "+@sortedset",
    "+@string",
    "+@keyspace",
    "+@pubsub",
    "+@scripting",
    "+@transaction",
    "+@connection",
    "-@admin",
    "-@dangerous",
    "-scan",
    "-keys",
    "-randomkey",
    "-dbsize",
    "-pubsub",
    "-function",
    "-script|flush",
    "-script|kill",
    "-select",
    "-swapdb",
    "-move",
    "-copy",
    "-migrate",
    "-client|list",
    "-client|kill",
)


class AclUnsupported(Exception):
    """The server does not know ACL users (Redis before 6): per-Endpoint credentials are impossible there."""


def username(queue: str) -> str:
    """`bundleserve.<namespace>.<name>`: both are DNS labels (no dots), so the name is unambiguous and URL-safe."""
    return USER_PREFIX + queue.replace("/", ".")


def new_password() -> str:
    return secrets.token_hex(32)


def user_rules(queue: str, password: str) -> list[str]:
    """The complete ACL SETUSER rule list: `reset` first, so what an older operator granted never survives."""
    prefix = keys.endpoint_prefix(queue)
    # The queues of the endpoint's production variants, `<namespace>/<name>/<variant>` (keys.queue_id): names are
    # DNS labels, so the `/` after the name ends it and no other endpoint's keys match.
    variants = keys.variant_prefix(queue)
    return [
        "reset",
        "on",
        f">{password}",
        f"~{prefix}*",
        f"~{variants}*",
        "resetchannels",
        f"&{prefix}*",
        f"&{variants}*",
        *COMMAND_RULES,
    ]


def endpoint_url(master_url: str, queue: str, password: str) -> str:
    """The master URL's scheme, host, port, database and options with the endpoint's user and password instead."""
    parts = urlsplit(master_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username(queue), safe='')}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def address(master_url: str) -> str:
    """`host:port` of the master URL (what KEDA's redis-streams scaler wants)."""
    parts = urlsplit(master_url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


async def ensure_user(redis: aioredis.Redis, queue: str, password: str) -> None:
    """Create or reset the endpoint's user to exactly `user_rules` (idempotent; one command, applied atomically)."""
    try:
        await redis.execute_command("ACL", "SETUSER", username(queue), *user_rules(queue, password))  # type: ignore[no-untyped-call]
    except ResponseError as error:
        if "unknown command" in str(error).lower():
            raise AclUnsupported("the queue's Redis has no ACL users (Redis >= 6 or Valkey is needed)") from None
        raise


async def delete_user(redis: aioredis.Redis, queue: str) -> bool:
    """Remove the endpoint's user (its open connections are closed by the server); True if it existed."""
    return bool(await redis.execute_command("ACL", "DELUSER", username(queue)))  # type: ignore[no-untyped-call]


class QueueUsers:
    """The operator's handle on endpoint users, over one master connection (`connection.connect`'s timeouts)."""

    def __init__(self, master_url: str, *, timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS) -> None:
        self.redis = connect(master_url, timeout=timeout)

    async def ensure(self, queue: str, password: str) -> None:
        await ensure_user(self.redis, queue, password)

    async def delete(self, queue: str) -> bool:
        return await delete_user(self.redis, queue)

    async def observed_config(self) -> dict[str, str]:
        """The server's durability settings, as env for the routers (`connection.observed_config`)."""
        return await observed_config(self.redis)

    async def close(self) -> None:
        await self.redis.aclose()

"""Result storage for results that do not belong inline in a task record: large results and pickled results.

The router (sync `return_pickled`) and the async worker share one `ResultStore`. Every stored object has an expiry
(the endpoint's `resultTTLSeconds`); `get` never returns an expired object and `cleanup_expired` removes them, so a
crashed writer or a forgotten result does not fill the volume.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from bundleserve.api.invocation import PICKLE_CONTENT_TYPE, ModelReply

DEFAULT_TTL_SECONDS = 86400.0
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_META_SUFFIX = ".meta.json"
_TMP_SUFFIX = ".tmp"


class InvalidKey(ValueError):
    """A key that could escape the store's namespace (path separators, dot-dot, empty, too long)."""


def check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key or key.endswith((_META_SUFFIX, _TMP_SUFFIX)):
        raise InvalidKey(f"invalid result key {key!r}")
    return key


def sync_result_key(namespace: str, name: str) -> str:
    """The key of a sync `return_pickled` result: `<namespace>.<name>.<32 hex>`. Both are DNS labels (no dots), so
    the owner can be read back (`sync_result_owner`) and a route serves it only to callers of that endpoint; async
    results are keyed by their task id, whose owner is its record."""
    return f"{namespace}.{name}.{uuid.uuid4().hex}"


def sync_result_owner(key: str) -> tuple[str, str] | None:
    """(namespace, name) of a `sync_result_key`, None for any other key."""
    parts = key.split(".")
    if len(parts) != 3 or not all(parts) or not re.fullmatch(r"[0-9a-f]{32}", parts[2]):
        return None
    return parts[0], parts[1]


@runtime_checkable
class ResultStore(Protocol):
    """Where large and pickled results live; `url_for` is the URL clients fetch them from."""

    async def put(self, key: str, data: bytes, content_type: str, *, ttl_seconds: float | None = None) -> None: ...

    async def get(self, key: str) -> tuple[bytes, str] | None: ...

    async def delete(self, key: str) -> None: ...

    def url_for(self, task_id: str) -> str: ...

    async def cleanup_expired(self) -> int: ...


@dataclass(frozen=True)
class _Meta:
    content_type: str
    expires_at: float

    def dump(self) -> bytes:
        return json.dumps({"content_type": self.content_type, "expires_at": self.expires_at}).encode()

    @classmethod
    def load(cls, raw: bytes) -> _Meta:
        value = json.loads(raw)
        return cls(content_type=str(value["content_type"]), expires_at=float(value["expires_at"]))


class FilesystemResultStore:
    """Objects as files under `root` (a PVC in a cluster, `--data-dir` locally): `<key>` plus `<key>.meta.json`.

    Writes go to a temporary file and are renamed into place, so a reader never sees half an object. The data file is
    renamed before the metadata, and `get` needs both, so an object becomes visible only when complete.
    """

    def __init__(
        self, root: Path, base_path: str = "/v1/tasks", *, default_ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self.root = Path(root)
        self.base_path = base_path.rstrip("/")
        self.default_ttl_seconds = default_ttl_seconds
        self.root.mkdir(parents=True, exist_ok=True)

    def url_for(self, task_id: str) -> str:
        return f"{self.base_path}/{task_id}/result"

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self.root / key, self.root / f"{key}{_META_SUFFIX}"

    async def put(self, key: str, data: bytes, content_type: str, *, ttl_seconds: float | None = None) -> None:
        data_path, meta_path = self._paths(key)
        ttl = self.default_ttl_seconds if ttl_seconds is None else ttl_seconds
        meta = _Meta(content_type=content_type, expires_at=time.time() + ttl)
        await asyncio.to_thread(self._write, data_path, meta_path, data, meta)

    @staticmethod
    def _write(data_path: Path, meta_path: Path, data: bytes, meta: _Meta) -> None:
        for path, content in ((data_path, data), (meta_path, meta.dump())):
            # unique per write: PIDs repeat across pods (PID 1) sharing a volume, and writes of one process overlap
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
            tmp.write_bytes(content)
            os.replace(tmp, path)

    async def get(self, key: str) -> tuple[bytes, str] | None:
        data_path, meta_path = self._paths(key)
        return await asyncio.to_thread(self._read, data_path, meta_path)

    @staticmethod
    def _read(data_path: Path, meta_path: Path) -> tuple[bytes, str] | None:
        try:
            meta = _Meta.load(meta_path.read_bytes())
            if meta.expires_at <= time.time():
                return None
            return data_path.read_bytes(), meta.content_type
        except (FileNotFoundError, ValueError, KeyError):
            return None

    async def delete(self, key: str) -> None:
        data_path, meta_path = self._paths(key)
        await asyncio.to_thread(self._remove, meta_path, data_path)

    @staticmethod
    def _remove(*paths: Path) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    async def cleanup_expired(self) -> int:
        """Delete expired objects (and orphans left by a crash between the two renames); returns how many."""
        return await asyncio.to_thread(self._cleanup, time.time())

    def _cleanup(self, now: float) -> int:
        removed = 0
        for meta_path in self.root.glob(f"*{_META_SUFFIX}"):
            try:
                expired = _Meta.load(meta_path.read_bytes()).expires_at <= now
            except (FileNotFoundError, ValueError, KeyError):
                expired = True
            if expired:
                self._remove(meta_path, self.root / meta_path.name.removesuffix(_META_SUFFIX))
                removed += 1
        stale_before = now - 3600
        for path in self.root.iterdir():
            if path.name.endswith(_META_SUFFIX) or not path.is_file():
                continue
            orphan = path.name.endswith(_TMP_SUFFIX) or not (self.root / f"{path.name}{_META_SUFFIX}").exists()
            try:
                if orphan and path.stat().st_mtime < stale_before:
                    path.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def for_namespace(store: ResultStore, namespace: str) -> ResultStore:
    """The store an endpoint of `namespace` uses: in S3, the namespace's own prefix (`<prefix><namespace>/`); a
    directory store is shared as it is (one volume, docs/security.md "Known gaps")."""
    from bundleserve.queue.s3results import S3ResultStore

    return store.for_namespace(namespace) if isinstance(store, S3ResultStore) else store


def open_result_store(
    results_dir: Path,
    results_url: str | None = None,
    *,
    default_ttl_seconds: float = DEFAULT_TTL_SECONDS,
    s3_endpoint: str | None = None,
) -> ResultStore:
    """The configured store: S3 when `BUNDLESERVE_RESULTS_URL` is set (see `s3results`; `s3_endpoint`: an
    S3-compatible server, `s3results.endpoint_from_env`), else the directory."""
    if results_url:
        from bundleserve.queue.s3results import S3Location, S3ResultStore

        location = S3Location.parse(results_url)
        return S3ResultStore(location, default_ttl_seconds=default_ttl_seconds, endpoint=s3_endpoint)
    return FilesystemResultStore(results_dir, default_ttl_seconds=default_ttl_seconds)


async def keep_sync_result(store: ResultStore, namespace: str, name: str, reply: ModelReply, ttl_seconds: float) -> str:
    """Keep a sync `return_pickled` reply of endpoint `namespace/name` in `store`; the path (or URL) to fetch it.

    The one rule for every front that answers a sync call with a result URL (the router's native predict, the Launch
    dialect on the router and on the gateway): a runnable image answers plain JSON or text, so its result is pickled
    here; a Python bundle's reply is a pickle already.
    """
    if reply.is_pickle:
        data = reply.body
    else:
        import cloudpickle

        data = cloudpickle.dumps(reply.result())
    key = sync_result_key(namespace, name)
    await store.put(key, data, PICKLE_CONTENT_TYPE, ttl_seconds=ttl_seconds)
    return store.url_for(key)

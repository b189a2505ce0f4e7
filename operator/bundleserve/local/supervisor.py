"""Start, watch and stop local mode's child processes (asyncio subprocesses with prefixed, line-buffered output).

No child may outlive `bundleserve run`: each runs in its own process group (a Ctrl-C in the terminal reaches only
us, and we stop the children in order), stopping signals the whole group (a runnable image's command may fork), and
on Linux each child asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), which covers `kill -9` of
`bundleserve run` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping

import aiohttp

from bundleserve import logs
from bundleserve.local.plan import ProcessSpec

log = logging.getLogger(__name__)
forwarded = logging.getLogger(logs.FORWARDED)  # the child's own line, printed as it came (see bundleserve.logs)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive SIGKILL when this process dies (Linux only; None elsewhere).

    libc is loaded here, before the fork; in the child only the prctl call and a getppid check run (if we died
    between fork and prctl, the child's parent is already someone else and it exits at once)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class ChildFailed(RuntimeError):
    """A child process exited or never became ready; the message carries its last output lines."""


class Child:
    """One supervised process. Its output is forwarded to our log with the child's name, and kept for error messages."""

    def __init__(self, spec: ProcessSpec, inherited: Mapping[str, str]) -> None:
        """`inherited`: the environment the child starts from (local mode's own, read once by its settings), under
        the spec's own variables."""
        self.spec = spec
        self.inherited = inherited
        self.process: asyncio.subprocess.Process | None = None
        self.tail: list[str] = []
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {**self.inherited, "PYTHONUNBUFFERED": "1", **self.spec.env}
        self.process = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=str(self.spec.cwd) if self.spec.cwd else None,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
            preexec_fn=die_with_parent(),
        )
        self._pump = asyncio.create_task(self._forward_output())

    async def _forward_output(self) -> None:
        if self.process is None or self.process.stdout is None:
            return
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail = [*self.tail[-19:], line]
            forwarded.info("%s", line, extra={"child": self.spec.name})

    @property
    def exited(self) -> bool:
        return self.process is None or self.process.returncode is not None

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float) -> None:
        """Poll the child's ready route until it answers 2xx; fail fast if the child exits."""
        url = f"http://127.0.0.1:{self.spec.port}{self.spec.ready_path}"
        deadline = time.monotonic() + timeout
        while True:
            if self.exited:
                await self._drain_output()
                raise ChildFailed(self._failure(f"exited with status {self.returncode}"))
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status < 300:
                        return
            if time.monotonic() > deadline:
                raise ChildFailed(self._failure(f"not ready after {timeout:.0f}s ({url})"))
            await asyncio.sleep(0.05)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def _failure(self, what: str) -> str:
        last = "\n    ".join(self.tail[-10:]) or "(no output)"
        return f"{self.spec.name} {what}; last output:\n    {last}"

    async def _drain_output(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 2)

    async def stop(self, grace: float) -> None:
        """SIGTERM (the child drains), then SIGKILL after `grace` seconds."""
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                log.warning("%s did not stop within %.0fs; killing it", self.spec.name, grace)
        self.kill_group()
        await self.process.wait()
        await self._drain_output()

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's process group (its own children), the child included."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

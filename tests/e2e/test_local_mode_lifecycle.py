"""`bundleserve run` start and stop as a user meets them: a port in use, a bundle whose load() raises, Ctrl-C while a
model loads, `kill -9` of the run, and a chunked body over the limit. Processes are found by PID in /proc, so "no
process left behind" is checked against the kernel, not against our own bookkeeping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import REPO, Server, bundleserve, free_port
from tests.support.waiting import wait_until


def write_bundle(directory: Path, name: str, load_body: str, *, limit: int | None = None) -> Path:
    """A Python bundle whose load() runs `load_body`; its manifest path."""
    code = directory / name
    code.mkdir()
    (code / "model.py").write_text(
        "import time, pathlib\n\n\ndef load():\n"
        + textwrap.indent(textwrap.dedent(load_body), "    ")
        + "\n\n\ndef predict(model=None, **kwargs):\n    return kwargs\n"
    )
    invocation = f"\n  invocation: {{maxPayloadBytes: {limit}}}" if limit else ""
    manifest = code / "endpoint.yaml"
    manifest.write_text(
        textwrap.dedent(f"""\
        apiVersion: bundleserve.dev/v1alpha1
        kind: Endpoint
        metadata: {{name: {name}}}
        spec:
          modes: [sync]
          localOnly: true
          bundle:
            python: {{entrypoint: model:predict, load: model:load, path: .}}""")
        + invocation
        + "\n"
    )
    return manifest


def children_of(pid: int) -> set[int]:
    """Every live descendant of `pid` (zombies count as gone: they run nothing and hold no port)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def start_run(manifests: list[Path], tmp: Path, port: int) -> Server:
    argv = bundleserve("run", *map(str, manifests), "--port", str(port), "--data-dir", str(tmp / "data"))
    return Server(argv, log_path=tmp / "run.log")


def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = bundleserve(
            "run", str(REPO / "examples/echo/endpoint.yaml"), "--port", str(port), "--data-dir", str(tmp_path / "data")
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"bundleserve run: port {port} on 127.0.0.1 is already in use (choose another with --port)"
    ]
    assert not (tmp_path / "data" / "endpoints").exists()  # nothing was planned or started


def test_a_failing_load_ends_the_run_naming_the_endpoint_and_leaves_nothing(tmp_path: Path) -> None:
    broken = write_bundle(tmp_path, "broken", "raise RuntimeError('weights file missing')")
    server = start_run([REPO / "examples/echo/endpoint.yaml", broken], tmp_path, free_port())
    seen: set[int] = set()

    def exited() -> bool:
        seen.update(children_of(server.pid))
        return server.process.poll() is not None

    try:
        wait_until(exited, timeout=90, what="bundleserve run to exit after the failed load")
    finally:
        server.stop(timeout=5)
    log = server.log()
    assert server.process.returncode == 1, log
    assert "endpoint broken failed to start" in log
    assert "weights file missing" in log
    assert seen, "the run started children"
    assert not [pid for pid in seen if alive(pid)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_model_loads_stops_everything(tmp_path: Path, sig: int) -> None:
    started = tmp_path / "loading"
    manifest = write_bundle(tmp_path, "sleepy", f"pathlib.Path({str(started)!r}).touch()\ntime.sleep(3600)")
    server = start_run([manifest], tmp_path, free_port())
    try:
        wait_until(started.exists, timeout=60, what="the model's load() to begin")
        children = children_of(server.pid)
        assert children
        server.signal(sig)
        server.process.wait(timeout=60)
    finally:
        server.stop(timeout=5)
    assert server.process.returncode == 0, server.log()
    wait_until(lambda: not [p for p in children if alive(p)], timeout=10, what="every child to be gone")


def test_kill_9_of_the_run_takes_its_children_down(tmp_path: Path) -> None:
    started = tmp_path / "loading"
    manifest = write_bundle(tmp_path, "sleepy", f"pathlib.Path({str(started)!r}).touch()\ntime.sleep(3600)")
    server = start_run([manifest], tmp_path, free_port())
    try:
        wait_until(started.exists, timeout=60, what="the model's load() to begin")
        wait_until(lambda: len(children_of(server.pid)) >= 2, timeout=30, what="model and router to run")
        children = children_of(server.pid)
        os.kill(server.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        wait_until(lambda: not [p for p in children if alive(p)], timeout=20, what="the orphans to die")
    finally:
        server.stop(timeout=5)


def test_a_chunked_body_over_the_limit_is_413_like_the_router(tmp_path: Path) -> None:
    manifest = write_bundle(tmp_path, "small", "return None")  # the default limit, 6 MiB
    port = free_port()
    server = start_run([manifest], tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(f"{base}/readyz", timeout=90)

        def chunks() -> Iterator[bytes]:
            yield b'{"args": {"x": "'
            for _ in range(7):  # 7 MiB, sent as chunks: no Content-Length to refuse up front
                yield b"a" * (1 << 20)
            yield b'"}}'

        response = httpx.post(f"{base}/v1/endpoints/small/predict", content=chunks(), timeout=30)
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "payload_too_large"
        ok = httpx.post(f"{base}/v1/endpoints/small/predict", json={"args": {"x": 1}}, timeout=30)
        assert ok.json()["result"] == {"x": 1}
    finally:
        server.stop(timeout=30)

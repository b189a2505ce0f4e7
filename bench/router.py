"""Benchmark: what the router costs in front of a trivial model, against nginx and a plain aiohttp proxy, in one run.

    .venv/bin/python bench/router.py [--duration 3] [--rounds 3] [--connections 64]

Starts a trivial model server (aiohttp on uvloop, like the bundle runtime), `bundleserve router` in front of it, Debian's
nginx (installed with apt-get when missing; optional), the "aiohttp floor" (an aiohttp.web handler that only forwards
the body with the router's model client: the cost of the stack itself) and a plain aiohttp reverse proxy (aiohttp's
client), then measures with wrk
(installed with apt-get when missing; else a Python load generator in a separate process):
- latency at concurrency 1 (p50/p99) and what each proxy adds over direct;
- throughput at saturation (`--connections` keep-alive connections) and its share of direct;
- streaming time to first chunk (a raw-socket client), router vs direct.
Everything shares the machine's cores, as the sidecar shares the pod's: run it on a quiet machine and more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS_BODY = b'{"x": 1, "text": "hello"}'
ROUTER_BODY = b'{"args": {"x": 1, "text": "hello"}}'

# -- the servers ----------------------------------------------------------------------------------------------------


def serve_model(port: int) -> None:
    """The trivial model: echo the JSON args; stream two chunks (the second after 1 ms); ready at once."""
    import uvloop
    from aiohttp import web

    async def predict(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: "first"\n\n')
        await asyncio.sleep(0.001)
        await response.write(b'data: "second"\n\n')
        await response.write_eof()
        return response

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_post("/stream", stream)
    app.router.add_get("/readyz", ready)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_aiohttp_proxy(port: int, upstream: str) -> None:
    """A plain aiohttp reverse proxy (the naive sidecar): forward method, path, body and content type."""
    import aiohttp
    import uvloop
    from aiohttp import web

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
        async with request.app["session"].request(
            request.method, upstream + request.path, data=body, headers=headers
        ) as upstream_response:
            if upstream_response.content_type == "text/event-stream":
                response = web.StreamResponse(
                    status=upstream_response.status, headers={"Content-Type": "text/event-stream"}
                )
                await response.prepare(request)
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
            data = await upstream_response.read()
            return web.Response(status=upstream_response.status, body=data, content_type=upstream_response.content_type)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_floor(port: int, upstream: str) -> None:
    """The least an aiohttp.web sidecar can do: read the body, forward it with the router's model client, answer.

    Not a usable proxy (no validation, limits or error mapping): it shows what the router's stack costs by itself.
    """
    import uvloop
    from aiohttp import web

    from bundleserve.router.model_client import ModelClient

    client = ModelClient(upstream)

    async def forward(request: web.Request) -> web.Response:
        reply = await client.predict("/predict", await request.read())
        return web.Response(body=reply.body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/predict", forward)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not become ready")
        time.sleep(0.05)


def wait_http_post(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, data=ARGS_BODY, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not become ready")
        time.sleep(0.05)


NGINX_CONF = """\
worker_processes 1;
error_log {dir}/nginx-error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    upstream model {{ server 127.0.0.1:{model_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def ensure_debian_packages(*packages: str) -> None:
    """Install Debian packages the benchmark needs (never needed by the tests); failures leave them out."""
    missing = [p for p in packages if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
    if not missing:
        return
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run([*apt, "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            [*apt, "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"could not install {missing}: {error}; continuing without them", file=sys.stderr)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


# -- load generation ------------------------------------------------------------------------------------------------

LUA = """\
wrk.method = "{method}"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, body: bytes, *, connections: int, duration: float, workdir: Path, method: str = "POST") -> Load:
    script = workdir / f"{method.lower()}-{abs(hash(body))}.lua"
    script.write_text(LUA.format(body=body.decode(), method=method))
    threads = 1
    done = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
    )
    out = done.stdout
    if done.returncode != 0:
        raise SystemExit(f"wrk failed on {url}: {out}{done.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(errors_match.group(1)) if errors_match else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Load(rps, p50, p99, errors)


async def _python_load(host: str, port: int, path: str, body: bytes, connections: int, duration: float) -> Load:
    """Fallback load generator: keep-alive raw-socket clients, one request in flight each."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            latencies.append(time.perf_counter() - started)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Load(
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
        errors,
    )


def python_load_main(argv: list[str]) -> None:
    host, port, path, connections, duration = argv[0], int(argv[1]), argv[2], int(argv[3]), float(argv[4])
    body = argv[5].encode()
    import uvloop

    load = uvloop.run(_python_load(host, port, path, body, connections, duration))
    print(json.dumps(load.__dict__))


def run_python_load(url: str, body: bytes, *, connections: int, duration: float) -> Load:
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match
    done = subprocess.run(
        [sys.executable, __file__, "--python-load", *match.groups(), str(connections), str(duration), body.decode()],
        capture_output=True,
        text=True,
        check=True,
    )
    return Load(**json.loads(done.stdout))


async def _ttfb(host: str, port: int, path: str, body: bytes, samples: int) -> list[float]:
    """Time from sending a stream request to receiving its first event, on one keep-alive connection."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        writer.write(request)
        buffer = b""
        while b"data:" not in buffer:
            buffer += await reader.read(65536)
        times.append((time.perf_counter() - started) * 1000)
        # read to the end of the chunked body
        while not buffer.endswith(b"0\r\n\r\n"):
            buffer += await reader.read(65536)
    writer.close()
    return times


def measure_ttfb(url: str, body: bytes, samples: int) -> tuple[float, float]:
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match
    host, port, path = match.groups()
    import uvloop

    times = uvloop.run(_ttfb(host, int(port), path, body, samples))
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


# -- the run --------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    predict_url: str
    stream_url: str | None
    body: bytes
    latency: Load | None = None
    saturation: Load | None = None
    ttfb: tuple[float, float] | None = None
    extra: dict[str, float] = field(default_factory=dict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--connections", type=int, default=64, help="connections for the saturation run")
    parser.add_argument("--ttfb-samples", type=int, default=500)
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install nginx/wrk")
    parser.add_argument("--no-aiohttp-proxy", action="store_true")
    options = parser.parse_args()
    if not options.no_install:
        ensure_debian_packages("nginx", "wrk")
    use_wrk = shutil.which("wrk") is not None
    nginx = nginx_binary()

    workdir = Path(tempfile.mkdtemp(prefix="bundleserve-bench-"))
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        handle = open(workdir / log, "wb")  # noqa: SIM115 - lives as long as the process
        environment = {**os.environ, **env} if env else None
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=environment)
        processes.append(process)
        return process

    try:
        model_port, router_port, nginx_port, proxy_port = (free_port() for _ in range(4))
        model_url = f"http://127.0.0.1:{model_port}"
        spawn([sys.executable, __file__, "--serve-model", str(model_port)], "model.log")
        wait_http(f"{model_url}/readyz")

        endpoint = workdir / "bench.yaml"
        endpoint.write_text(
            textwrap.dedent("""\
                apiVersion: bundleserve.dev/v1alpha1
                kind: Endpoint
                metadata: {name: bench}
                spec:
                  modes: [sync, streaming]
                  localOnly: true
                  bundle: {python: {entrypoint: bench:predict}}
                  invocation: {concurrency: 256, maxQueued: 10000, timeoutSeconds: 60, maxPayloadBytes: 65536}
            """)
        )
        spawn(
            [sys.executable, "-m", "bundleserve.cli", "router", "--endpoint-file", str(endpoint),
             "--model-url", model_url, "--host", "127.0.0.1", "--port", str(router_port)],
            "router.log",
            env={"BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED": "true"},  # the SageMaker dialect's row, unsigned
        )  # fmt: skip
        router_url = f"http://127.0.0.1:{router_port}"
        wait_http(f"{router_url}/readyz")

        targets = [
            Target("direct", f"{model_url}/predict", f"{model_url}/stream", ARGS_BODY),
            Target(
                "router",
                f"{router_url}/v1/endpoints/bench/predict",
                f"{router_url}/v1/endpoints/bench/stream",
                ROUTER_BODY,
            ),
            # The SageMaker dialect on the same router: raw JSON body, InvokeEndpoint (no stream row: not SSE).
            Target("router sagemaker", f"{router_url}/endpoints/bench/invocations", None, ARGS_BODY),
        ]
        if nginx:
            conf = workdir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=workdir, model_port=model_port, port=nginx_port))
            spawn([nginx, "-c", str(conf), "-p", str(workdir), "-g", "daemon off;"], "nginx.log")
            wait_http(f"http://127.0.0.1:{nginx_port}/readyz")
            nginx_url = f"http://127.0.0.1:{nginx_port}"
            targets.append(Target("nginx", f"{nginx_url}/predict", f"{nginx_url}/stream", ARGS_BODY))
        floor_port = free_port()
        spawn([sys.executable, __file__, "--serve-floor", str(floor_port), model_url], "floor.log")
        floor_url = f"http://127.0.0.1:{floor_port}"
        wait_http_post(f"{floor_url}/predict")
        targets.append(Target("aiohttp floor", f"{floor_url}/predict", None, ARGS_BODY))
        if not options.no_aiohttp_proxy:
            spawn([sys.executable, __file__, "--serve-aiohttp-proxy", str(proxy_port), model_url], "proxy.log")
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            wait_http(f"{proxy_url}/readyz")
            targets.append(Target("aiohttp proxy", f"{proxy_url}/predict", f"{proxy_url}/stream", ARGS_BODY))

        def load(url: str, body: bytes, connections: int) -> Load:
            if use_wrk:
                return run_wrk(url, body, connections=connections, duration=options.duration, workdir=workdir)
            return run_python_load(url, body, connections=connections, duration=options.duration)

        print(f"load average before: {os.getloadavg()[0]:.2f}; tool: {'wrk' if use_wrk else 'python'}", file=sys.stderr)
        for target in targets:  # warm up every path (connection pools, code paths)
            load(target.predict_url, target.body, 8 if use_wrk else 4)
        # Interleaved rounds, median per path: load from other processes drifts, and measuring one path after the
        # other would charge the drift to whichever path ran during it.
        latencies: dict[str, list[Load]] = {t.name: [] for t in targets}
        saturations: dict[str, list[Load]] = {t.name: [] for t in targets}
        ttfbs: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
        for _ in range(options.rounds):
            for target in targets:
                latencies[target.name].append(load(target.predict_url, target.body, 1))
            for target in targets:
                saturations[target.name].append(load(target.predict_url, target.body, options.connections))
            for target in targets:
                if target.stream_url:
                    ttfbs[target.name].append(measure_ttfb(target.stream_url, target.body, options.ttfb_samples))
        for target in targets:
            target.latency = median_load(latencies[target.name])
            target.saturation = median_load(saturations[target.name])
            if ttfbs[target.name]:
                runs = ttfbs[target.name]
                target.ttfb = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        report(targets, options)
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


def median_load(runs: list[Load]) -> Load:
    return Load(
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
    )


def report(targets: list[Target], options: argparse.Namespace) -> None:
    direct = targets[0]
    assert direct.latency and direct.saturation
    header = (
        f"{'path':<14}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}"
        f"{'rps@' + str(options.connections):>10}{'% direct':>10}{'TTFB p50':>10}{'+TTFB':>8}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    for target in targets:
        assert target.latency and target.saturation
        ttfb = f"{target.ttfb[0]:>10.3f}" if target.ttfb else f"{'-':>10}"
        added_ttfb = f"{target.ttfb[0] - direct.ttfb[0]:>8.3f}" if target.ttfb and direct.ttfb else f"{'-':>8}"
        print(
            f"{target.name:<14}{target.latency.p50_ms:>9.3f}{target.latency.p99_ms:>9.3f}"
            f"{target.latency.p50_ms - direct.latency.p50_ms:>9.3f}{target.latency.p99_ms - direct.latency.p99_ms:>9.3f}"
            f"{target.saturation.rps:>10.0f}{100 * target.saturation.rps / direct.saturation.rps:>9.1f}%"
            f"{ttfb}{added_ttfb}{target.latency.errors + target.saturation.errors:>8}"
        )
    router = next(t for t in targets if t.name == "router")
    assert router.latency and router.saturation
    added = router.latency.p50_ms - direct.latency.p50_ms
    share = router.saturation.rps / direct.saturation.rps
    print()
    print(f"router adds {added:.3f} ms at p50, concurrency 1 (target <= 0.150): {'met' if added <= 0.15 else 'MISSED'}")
    print(
        f"router keeps {100 * share:.1f} % of direct throughput (target >= 50 %): {'met' if share >= 0.5 else 'MISSED'}"
    )
    if router.ttfb and direct.ttfb:
        delta = router.ttfb[0] - direct.ttfb[0]
        print(f"router adds {delta:.3f} ms to stream TTFB p50 (target <= 1.000): {'met' if delta <= 1.0 else 'MISSED'}")
    print(f"issue 18: router adds at most 0.130 ms at p50: {'met' if added <= 0.13 else 'MISSED'} ({added:.3f} ms)")
    sagemaker = next((t for t in targets if t.name == "router sagemaker"), None)
    if sagemaker is not None and sagemaker.latency and sagemaker.saturation:
        ratio = sagemaker.saturation.rps / router.saturation.rps
        slower = sagemaker.latency.p50_ms / router.latency.p50_ms
        met = ratio >= 0.9 and slower <= 1.1
        print(
            f"issue 18: the SageMaker dialect within 10 % of the native route on the router: "
            f"{'met' if met else 'MISSED'} (throughput {ratio:.2f}, p50 {slower:.2f}x)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-model":
        serve_model(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-aiohttp-proxy":
        serve_aiohttp_proxy(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-floor":
        serve_floor(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--python-load":
        python_load_main(sys.argv[2:])
    else:
        sys.exit(main())

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
- issue 18's targets, each printed as met or missed.
The gateway runs as `bundleserve gateway` listens (its fast edge in front of aiohttp when the package has one, so the
same script measures an older checkout too). Everything shares the machine's cores: run it on a quiet machine and
more than once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import router as base  # bench/router.py: the model, nginx, the load generators

ROUTER_BODY = base.ROUTER_BODY
OPENAI_BODY = b'{"model": "bench", "messages": [{"role": "user", "content": "hello"}]}'
OPENAI_STREAM_BODY = b'{"model": "bench", "messages": [{"role": "user", "content": "hello"}], "stream": true}'


def serve_gateway(port: int, router_url: str, endpoint_file: str) -> None:
    import uvloop
    from aiohttp import web

    from bundleserve.api.manifest import load_endpoints
    from bundleserve.dialects.sagemaker.sigv4 import SigV4Config
    from bundleserve.gateway.app import GatewayConfig, build_gateway_app
    from bundleserve.gateway.registry import EndpointEntry, Registry

    [(_, endpoint)] = load_endpoints([Path(endpoint_file)])
    registry = Registry([EndpointEntry(endpoint=endpoint, router_url=router_url, ready=True)])
    config = GatewayConfig(sagemaker_signing=SigV4Config(allow_unsigned=True))  # the SageMaker rows, unsigned
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--connections", type=int, default=64, help="connections for the saturation run")
    parser.add_argument("--ttfb-samples", type=int, default=300)
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install nginx/wrk")
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
        spawn(
            [sys.executable, __file__, "--serve-gateway", str(gateway_port), router_url, str(endpoint)], "gateway.log"
        )
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

        print(f"load average before: {os.getloadavg()[0]:.2f}; tool: {'wrk' if use_wrk else 'python'}", file=sys.stderr)
        for target in targets:
            load(target.predict_url, target.body, 4)
        latencies: dict[str, list[base.Load]] = {t.name: [] for t in targets}
        saturations: dict[str, list[base.Load]] = {t.name: [] for t in targets}
        ttfbs: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
        for _ in range(options.rounds):
            for target in targets:
                latencies[target.name].append(load(target.predict_url, target.body, 1))
            for target in targets:
                saturations[target.name].append(load(target.predict_url, target.body, options.connections))
            for target in targets:
                assert target.stream_url
                ttfbs[target.name].append(base.measure_ttfb(target.stream_url, target.body, options.ttfb_samples))
        for target in targets:
            target.latency = base.median_load(latencies[target.name])
            target.saturation = base.median_load(saturations[target.name])
            runs = ttfbs[target.name]
            target.ttfb = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        openai_targets = [
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
        for target in openai_targets:
            load(target.predict_url, target.body, 4)
        runs_by: dict[str, list[tuple[base.Load, base.Load, tuple[float, float] | None]]] = {
            t.name: [] for t in openai_targets
        }
        for _ in range(options.rounds):
            for target in openai_targets:
                latency = load(target.predict_url, target.body, 1)
                saturation = load(target.predict_url, target.body, options.connections)
                ttfb = (
                    base.measure_ttfb(target.stream_url, target.body, options.ttfb_samples)
                    if target.stream_url
                    else None
                )
                runs_by[target.name].append((latency, saturation, ttfb))
        for target in openai_targets:
            runs = runs_by[target.name]
            target.latency = base.median_load([r[0] for r in runs])
            target.saturation = base.median_load([r[1] for r in runs])
            if target.stream_url:
                target.ttfb = (
                    statistics.median(r[2][0] for r in runs if r[2]),
                    statistics.median(r[2][1] for r in runs if r[2]),
                )
        print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        report(targets, options.connections)
        print()
        openai_report(openai_targets, options.connections)
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


def report(targets: list[base.Target], connections: int) -> None:
    router = targets[0]
    assert router.latency and router.saturation and router.ttfb
    header = (
        f"{'path':<10}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'rps@' + str(connections):>10}"
        f"{'% router':>10}{'TTFB p50':>10}{'+TTFB':>8}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    for target in targets:
        assert target.latency and target.saturation and target.ttfb
        print(
            f"{target.name:<10}{target.latency.p50_ms:>9.3f}{target.latency.p99_ms:>9.3f}"
            f"{target.latency.p50_ms - router.latency.p50_ms:>9.3f}{target.saturation.rps:>10.0f}"
            f"{100 * target.saturation.rps / router.saturation.rps:>9.1f}%{target.ttfb[0]:>10.3f}"
            f"{target.ttfb[0] - router.ttfb[0]:>8.3f}{target.latency.errors + target.saturation.errors:>8}"
        )
    gateway = targets[1]
    assert gateway.latency and gateway.saturation
    nginx = next((t for t in targets if t.name == "nginx"), None)
    print()
    print(f"gateway/router throughput: {gateway.saturation.rps / router.saturation.rps:.2f}")
    added_gateway = gateway.latency.p50_ms - router.latency.p50_ms
    assert gateway.ttfb and router.ttfb
    added_ttfb = gateway.ttfb[0] - router.ttfb[0]
    if nginx is not None and nginx.latency and nginx.saturation:
        added_nginx = nginx.latency.p50_ms - router.latency.p50_ms
        ratio = gateway.saturation.rps / nginx.saturation.rps
        print(f"gateway/nginx throughput: {ratio:.2f} (issue 18: >= 0.80: {target_verdict(ratio >= 0.8)})")
        print(f"hop cost at p50, gateway vs nginx: {added_gateway:.3f} ms vs {added_nginx:.3f} ms")
    print(f"gateway added p50: {added_gateway:.3f} ms (issue 18: <= 0.2 ms: {target_verdict(added_gateway <= 0.2)})")
    print(f"gateway added stream TTFB: {added_ttfb:.3f} ms (issue 18: <= 0.3 ms: {target_verdict(added_ttfb <= 0.3)})")


def openai_report(targets: list[base.Target], connections: int) -> None:
    """Each dialect's row against the native route of its kind on the same path (router or gateway): whole calls
    against native predict, streams (and OpenAI's whole answer, which the dialect reads as a stream) against the
    native stream route."""
    header = (
        f"{'path':<24}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'rps@' + str(connections):>10}"
        f"{'% native':>10}{'TTFB p50':>10}{'+TTFB':>8}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    by_name = {t.name: t for t in targets}
    for target in targets:
        assert target.latency and target.saturation
        where = target.name.split(" ")[0]
        streamed = target.stream_url is not None or "openai" in target.name
        native = by_name[f"{where} native stream" if streamed else f"{where} native predict"]
        assert native.latency and native.saturation
        ttfb = f"{target.ttfb[0]:>10.3f}" if target.ttfb else f"{'-':>10}"
        added = f"{target.ttfb[0] - native.ttfb[0]:>8.3f}" if target.ttfb and native.ttfb else f"{'-':>8}"
        print(
            f"{target.name:<24}{target.latency.p50_ms:>9.3f}{target.latency.p99_ms:>9.3f}"
            f"{target.latency.p50_ms - native.latency.p50_ms:>9.3f}{target.saturation.rps:>10.0f}"
            f"{100 * target.saturation.rps / native.saturation.rps:>9.1f}%{ttfb}{added}"
            f"{target.latency.errors + target.saturation.errors:>8}"
        )
    print()
    for where in ("router", "gateway"):
        for dialect, native_kind in (
            ("sagemaker", "native predict"),
            ("launch sync", "native predict"),
            ("openai stream", "native stream"),
            ("openai whole", "native stream"),
        ):
            row, native = by_name[f"{where} {dialect}"], by_name[f"{where} {native_kind}"]
            assert row.saturation and native.saturation and row.latency and native.latency
            ratio = row.saturation.rps / native.saturation.rps
            slower = row.latency.p50_ms / native.latency.p50_ms
            print(
                f"{where}: {dialect} / {native_kind}: throughput {ratio:.2f}, p50 {slower:.2f}x "
                f"(issue 18: within 10 %: {target_verdict(ratio >= 0.9 and slower <= 1.1)})"
            )


def target_verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-gateway":
        serve_gateway(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        sys.exit(main())

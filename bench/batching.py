"""Benchmark: dynamic batching against one call per request, through the router, at several concurrencies, in one run.

    .venv/bin/python bench/batching.py [--duration 5] [--rounds 2] [--concurrency 1 8 32] [--max-batch-size 32]
                                       [--window-ms 10]

The model is examples/batch-scorer: each model call costs a fixed 20 ms plus 0.5 ms per item, one call at a time (a
lock: one device), as a GPU forward pass costs mostly per call. `time.sleep` stands in for the device, which is honest
here: what batching saves is the number of device calls, and the sleep holds no CPU, so the two paths compete only for
what they really share (the router, the runtime's HTTP edge and the load generator, all on this machine's cores).

Two endpoints run side by side, each a `bundleserve bundle serve` behind its own `bundleserve router`, with the same
code and the same router limits (concurrency 64, so admission never queues):
- **unbatched**: `entrypoint: batch_scorer:predict`, one model call per request;
- **batched**: the same plus `batchEntrypoint: batch_scorer:predict_batch` and
  `invocation.batching: {maxBatchSize: 32, maxWaitMilliseconds: 10}` (the runtime flags come from the spec through
  the same builder the operator and local mode use).
Closed-loop clients (wrk when installed, else a Python raw-socket client in its own process) keep `c` requests in flight
on `POST /v1/endpoints/{name}/predict` for `--duration` seconds; the two endpoints are measured in interleaved rounds
(unbatched, batched, then again) and the table shows each one's median round. After the runs, 64 requests at the
highest concurrency read the `batch_size` the model reports, so the table says how full the batches were.

Goal (issue 20): at concurrency 32, batched throughput >= 3x unbatched; at concurrency 1, batched p50 <= unbatched p50
plus the batching window (a lone call waits out the window: that is the price of batching). Exit status 0 when met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import router as base  # bench/router.py: free ports, readiness waits, wrk and the Python load generator

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "examples" / "batch-scorer"
BODY = b'{"args": {"text": "a short review of a good product"}}'
ROUTER_CONCURRENCY = 64


@dataclass
class Side:
    name: str
    spec: dict[str, Any]
    url: str = ""


def endpoint_document(name: str, *, batching: dict[str, int] | None) -> dict[str, Any]:
    python: dict[str, str] = {"entrypoint": "batch_scorer:predict", "path": str(BUNDLE)}
    invocation: dict[str, Any] = {"concurrency": ROUTER_CONCURRENCY, "maxQueued": 1000, "timeoutSeconds": 60}
    if batching is not None:
        python["batchEntrypoint"] = "batch_scorer:predict_batch"
        invocation["batching"] = batching
    return {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name},
        "spec": {"modes": ["sync"], "localOnly": True, "bundle": {"python": python}, "invocation": invocation},
    }


def mean_batch_size(url: str, concurrency: int, requests: int = 64) -> float:
    """Send `requests` calls, `concurrency` at a time, and average the `batch_size` the model reports."""
    import aiohttp

    async def probe() -> list[int]:
        sizes: list[int] = []
        limit = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one() -> None:
                async with limit, session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as reply:
                    sizes.append((await reply.json())["result"]["batch_size"])

            await asyncio.gather(*(one() for _ in range(requests)))
        return sizes

    return statistics.mean(asyncio.run(probe()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the table shows medians")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--window-ms", type=int, default=10, help="maxWaitMilliseconds of the batched endpoint")
    options = parser.parse_args()

    from bundleserve.api.manifest import parse_endpoint
    from bundleserve.api.runtime import bundle_runtime_args

    use_wrk = shutil.which("wrk") is not None
    workdir = Path(tempfile.mkdtemp(prefix="bundleserve-bench-batching-"))
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: str) -> None:
        handle = open(workdir / log, "wb")  # noqa: SIM115 - lives as long as the process
        processes.append(subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO))

    batching = {"maxBatchSize": options.max_batch_size, "maxWaitMilliseconds": options.window_ms}
    sides = [
        Side("unbatched", endpoint_document("unbatched", batching=None)),
        Side("batched", endpoint_document("batched", batching=batching)),
    ]
    try:
        for side in sides:
            endpoint = parse_endpoint(side.spec, source=side.name)  # the same checks as `bundleserve run`
            endpoint_file = workdir / f"{side.name}.yaml"
            endpoint_file.write_text(yaml.safe_dump(side.spec))
            model_port, router_port = base.free_port(), base.free_port()
            spawn(
                [sys.executable, "-m", "bundleserve.cli", "bundle", "serve", *bundle_runtime_args(endpoint.spec),
                 "--path", str(BUNDLE), "--port", str(model_port)],
                f"{side.name}-model.log",
            )  # fmt: skip
            spawn(
                [sys.executable, "-m", "bundleserve.cli", "router", "--endpoint-file", str(endpoint_file),
                 "--model-url", f"http://127.0.0.1:{model_port}", "--host", "127.0.0.1", "--port", str(router_port)],
                f"{side.name}-router.log",
            )  # fmt: skip
            router_url = f"http://127.0.0.1:{router_port}"
            base.wait_http(f"{router_url}/readyz", timeout=60)
            side.url = f"{router_url}/v1/endpoints/{side.name}/predict"

        def load(url: str, connections: int) -> base.Load:
            if use_wrk:
                return base.run_wrk(url, BODY, connections=connections, duration=options.duration, workdir=workdir)
            return base.run_python_load(url, BODY, connections=connections, duration=options.duration)

        before = os.getloadavg()
        print(f"load average before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}; "
              f"{os.cpu_count()} CPUs; tool: {'wrk' if use_wrk else 'python'}", file=sys.stderr)  # fmt: skip
        for side in sides:  # warm up: connection pools, the runtime's threads
            load(side.url, 4)
        runs: dict[tuple[str, int], list[base.Load]] = {}
        for _ in range(options.rounds):
            for concurrency in options.concurrency:
                for side in sides:
                    result = load(side.url, concurrency)
                    runs.setdefault((side.name, concurrency), []).append(result)
                    print(f"  {side.name} c={concurrency}: {result.rps:.1f} rps, p50 {result.p50_ms:.1f} ms, "
                          f"p99 {result.p99_ms:.1f} ms, errors {result.errors}", file=sys.stderr)  # fmt: skip
        fill = mean_batch_size(sides[1].url, max(options.concurrency))
        after = os.getloadavg()
        return report(runs, options, fill, before, after)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def report(
    runs: dict[tuple[str, int], list[base.Load]],
    options: argparse.Namespace,
    fill: float,
    before: tuple[float, float, float],
    after: tuple[float, float, float],
) -> int:
    medians = {key: base.median_load(loads) for key, loads in runs.items()}
    print(f"\nbatched: maxBatchSize {options.max_batch_size}, maxWaitMilliseconds {options.window_ms}; model: 20 ms per "
          f"call + 0.5 ms per item, one call at a time; {options.rounds} rounds x {options.duration:g} s, medians")  # fmt: skip
    print(
        "\n| concurrency | unbatched rps | unbatched p50 | batched rps | batched p50 | throughput ratio | p50 ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    errors = 0
    for concurrency in options.concurrency:
        plain, batched = medians[("unbatched", concurrency)], medians[("batched", concurrency)]
        errors += sum(load.errors for side in ("unbatched", "batched") for load in runs[(side, concurrency)])
        print(f"| {concurrency} | {plain.rps:.1f} | {plain.p50_ms:.1f} ms | {batched.rps:.1f} | {batched.p50_ms:.1f} ms "
              f"| **{batched.rps / plain.rps:.2f}x** | {batched.p50_ms / plain.p50_ms:.2f} |")  # fmt: skip
    top, low = max(options.concurrency), min(options.concurrency)
    speedup = medians[("batched", top)].rps / medians[("unbatched", top)].rps
    p50_budget = medians[("unbatched", low)].p50_ms + options.window_ms
    p50_batched = medians[("batched", low)].p50_ms
    throughput_met = speedup >= 3.0
    latency_met = p50_batched <= p50_budget
    print(f"\nmean batch size at concurrency {top}: {fill:.1f} (of at most {options.max_batch_size})")
    print(f"goal: throughput at concurrency {top} >= 3x: {speedup:.2f}x -> {'met' if throughput_met else 'NOT met'}")
    print(f"goal: p50 at concurrency {low} <= unbatched p50 + window ({p50_budget:.1f} ms): {p50_batched:.1f} ms -> "
          f"{'met' if latency_met else 'NOT met'}")  # fmt: skip
    print(f"errors (non-2xx or socket): {errors}")
    print(f"load average before {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}, "
          f"after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} (1/5/15 min)")  # fmt: skip
    print(json.dumps({"speedup": round(speedup, 2), "p50_batched_c1_ms": round(p50_batched, 2),
                      "p50_budget_ms": round(p50_budget, 2), "mean_batch_size": round(fill, 1)}))  # fmt: skip
    return 0 if throughput_met and latency_met and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

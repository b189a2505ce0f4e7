"""Benchmark: the Python SDK's own flow against running gateways, side by side, one call at a time.

    .venv/bin/python bench/sdk_flow.py URL [URL ...] [--endpoint bench] [--calls 2000] [--rounds 4]

What a user's program does: `Client(url).endpoint(name)` (which describes the endpoint first, on the client's one
pooled connection) and then `predict` calls one after another. Each round measures every URL in turn (a fresh
client, its description, then `--calls` predicts) so that the machine's drift hits them alike; it prints each URL's
calls per second per round, the median, and the ratio to the first URL's median. The servers are started by the
caller: e.g. two gateways in front of one router, one of them an older checkout (`PYTHONPATH`), each started as
`bench/gateway.py --serve-gateway PORT ROUTER_URL ENDPOINT_FILE` (docs/benchmarks.md has the exact commands).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bundleserve.client import Client, EndpointRequest


def calls_per_second(url: str, endpoint: str, calls: int) -> float:
    with Client(url) as client:
        sync = client.endpoint(endpoint, mode="sync")  # the description, as every program's first request
        request = EndpointRequest(args={"x": 1, "text": "hello"})
        started = time.perf_counter()
        for _ in range(calls):
            sync.predict(request)
        return calls / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--endpoint", default="bench")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    options = parser.parse_args()
    results: dict[str, list[float]] = {url: [] for url in options.urls}
    for url in options.urls:
        calls_per_second(url, options.endpoint, 100)  # warm-up
    for _ in range(options.rounds):
        for url in options.urls:
            results[url].append(calls_per_second(url, options.endpoint, options.calls))
    first = statistics.median(results[options.urls[0]])
    for url, rates in results.items():
        median = statistics.median(rates)
        rounds = ", ".join(f"{rate:.0f}" for rate in rates)
        print(f"{url}: {median:.0f} calls/s (rounds: {rounds}), {median / first:.2f} of the first")
    return 0


if __name__ == "__main__":
    sys.exit(main())

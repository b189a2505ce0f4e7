"""`bundleserve run` as a subprocess on a free port, for the end-to-end tests: one place that starts it, waits for
its gateway to answer /readyz, and stops it (the run drains its routers and stops every child)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tests.support.processes import REPO, Server, bundleserve, free_port

EXAMPLES = REPO / "examples"

#: The examples the e2e tests run together (sync + streaming, streaming, async).
EXAMPLE_MANIFESTS = (
    EXAMPLES / "echo" / "endpoint.yaml",
    EXAMPLES / "token-streamer" / "endpoint.yaml",
    EXAMPLES / "slow-job" / "endpoint.yaml",
)


@contextlib.contextmanager
def running_local_mode(
    directory: Path,
    manifests: Sequence[Path] = EXAMPLE_MANIFESTS,
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 90,
) -> Iterator[tuple[str, Server]]:
    """(base URL, server) of a local-mode run of `manifests`, ready; stopped on exit."""
    port = free_port()
    argv = bundleserve("run", *map(str, manifests), "--port", str(port), "--data-dir", str(directory / "data"))
    server = Server(argv, log_path=directory / "run.log", env=dict(env or {}))
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(f"{url}/readyz", timeout=ready_timeout)
        yield url, server
    finally:
        server.stop(timeout=30)

"""The bundle runtime's command-line arguments for an Endpoint's Python bundle.

One builder for both places that start the runtime (the operator's model container and local mode's model process), so a
field of `spec.bundle.python` or `spec.invocation.batching` reaches the runtime the same way in a cluster and on a laptop.
The flags themselves are defined by `bundleserve bundle serve` (cli.py) and documented in docs/bundles.md.
"""

from __future__ import annotations

from bundleserve.api.endpoint import EndpointSpec


def bundle_runtime_args(spec: EndpointSpec) -> list[str]:
    """`--entrypoint ...` and the optional load, stream and batching flags; host, port and paths are the caller's."""
    python = spec.bundle.python
    if python is None:
        raise ValueError("bundle_runtime_args needs a Python bundle (spec.bundle.python)")
    args = ["--entrypoint", python.entrypoint]
    if python.load:
        args += ["--load", python.load]
    if python.stream:
        args += ["--stream", python.stream]
    batching = spec.invocation.batching
    if batching is not None and python.batch_entrypoint:
        args += [
            "--batch-entrypoint",
            python.batch_entrypoint,
            "--max-batch-size",
            str(batching.max_batch_size),
            "--max-batch-wait-ms",
            str(batching.max_wait_milliseconds),
        ]
    return args

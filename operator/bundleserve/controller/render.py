"""`bundleserve render FILE.yaml...`: print the children the operator would create, as one YAML stream.

For review, GitOps diffs and tests. KEDA is assumed present only with BUNDLESERVE_KEDA=on (there is no cluster to ask).
Without BUNDLESERVE_REDIS_SECRET, async endpoints render against the Secret name `bundleserve-redis` (said on stderr),
so `bundleserve render examples/*/endpoint.yaml` works out of the box; the operator itself refuses async endpoints
until its Redis Secret is configured.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable
from typing import TextIO

import yaml

from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.api.manifest import ManifestError, load_endpoints
from bundleserve.controller.builders import BuildContext, BuildError, Manifest, build_children
from bundleserve.controller.config import ConfigError, KedaMode, OperatorConfig

DEFAULT_REDIS_SECRET = "bundleserve-redis"


def in_namespace(endpoint: Endpoint, namespace: str) -> Endpoint:
    if endpoint.metadata.namespace:
        return endpoint
    meta = endpoint.metadata.model_copy(update={"namespace": namespace})
    return endpoint.model_copy(update={"metadata": meta})


def render_endpoints(endpoints: Iterable[Endpoint], context: BuildContext) -> list[Manifest]:
    manifests: list[Manifest] = []
    for endpoint in endpoints:
        manifests.extend(build_children(endpoint, context))
    return manifests


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the endpoint file in the ConfigMap) as readable literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_stream(manifests: list[Manifest], out: TextIO) -> None:
    out.write(yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, default_flow_style=False))


def main(args: argparse.Namespace) -> int:
    try:
        config = OperatorConfig.from_env()
        loaded = load_endpoints(args.files)
    except (ConfigError, ManifestError) as error:
        print(f"bundleserve render: {error}", file=sys.stderr)
        return 1
    if config.redis_secret is None and any(e.spec.serves(Mode.ASYNC) for _, e in loaded):
        print(
            f"bundleserve render: assuming the Redis Secret {DEFAULT_REDIS_SECRET!r} for async endpoints "
            "(set BUNDLESERVE_REDIS_SECRET)",
            file=sys.stderr,
        )
        config = dataclasses.replace(config, redis_secret=DEFAULT_REDIS_SECRET)
    context = BuildContext(config=config, keda=config.keda is KedaMode.ON)
    manifests: list[Manifest] = []
    for path, endpoint in loaded:
        try:
            manifests.extend(build_children(in_namespace(endpoint, args.namespace), context))
        except BuildError as error:
            print(f"bundleserve render: {path}: {endpoint.name}: {error.reason}: {error.message}", file=sys.stderr)
            return 1
    dump_stream(manifests, sys.stdout)
    return 0

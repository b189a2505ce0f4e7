"""`bundleserve render FILE.yaml...`: print the children the operator would create, as one YAML stream.

For review, GitOps diffs and tests. KEDA is assumed present only with BUNDLESERVE_KEDA=on (there is no cluster to ask).
Pods reference each Endpoint's own credentials Secret (`<endpoint>-bundleserve-credentials`, controller/secrets.py) as
the operator's do; that Secret itself is not rendered (the operator generates its Redis password and writes its keys,
said on stderr), so `bundleserve render examples/*/endpoint.yaml` works without a cluster or a Redis.
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
from bundleserve.controller.builders import BuildContext, BuildError, Manifest, Scaler, build_children, scaler_for
from bundleserve.controller.config import ConfigError, KedaMode, OperatorConfig
from bundleserve.controller.secrets import credentials_name


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


def scaler_note(endpoint: Endpoint, context: BuildContext) -> str | None:
    """A YAML comment for an Endpoint whose scaler is no object: the operator's own queue-depth scaler (async-only
    without KEDA). Without it the rendered stream would show an autoscaled Endpoint with no autoscaler at all."""
    scaler = scaler_for(endpoint, context.keda)
    scaling = endpoint.spec.scaling
    if scaler is Scaler.DEMAND:
        return (
            f"# {endpoint.namespace}/{endpoint.name}: scales from zero: the operator's demand gate patches Deployment"
            f" replicas between 0 and the first replicas when the gateway holds calls, back to 0 after"
            f" {scaling.idle_seconds_before_zero}s without calls"
            + (f"; the HPA scales 1..{scaling.effective_max_replicas}" if scaling.effective_max_replicas > 1 else "")
            + "\n"
        )
    if scaler is not Scaler.OPERATOR:
        return None
    return (
        f"# {endpoint.namespace}/{endpoint.name}: scaled by the operator's built-in queue scaler (patches"
        f" Deployment replicas {scaling.min_replicas}..{scaling.effective_max_replicas}, one replica per"
        f" {scaling.target_concurrency} queued or running tasks, scale-down after {scaling.scale_down_delay_seconds}s);"
        " BUNDLESERVE_KEDA=on renders a KEDA ScaledObject instead\n"
    )


def main(args: argparse.Namespace) -> int:
    try:
        config = OperatorConfig.from_env()
        loaded = load_endpoints(args.files)
    except (ConfigError, ManifestError) as error:
        print(f"bundleserve render: {error}", file=sys.stderr)
        return 1
    if any(e.spec.serves(Mode.ASYNC) for _, e in loaded) or config.api_keys_secret:
        print(
            "bundleserve render: pods reference each Endpoint's own Secret <endpoint>-bundleserve-credentials, which"
            " the operator creates (not rendered: it holds a generated Redis password)",
            file=sys.stderr,
        )
    manifests: list[Manifest] = []
    notes: list[str] = []
    for path, endpoint in loaded:
        placed = in_namespace(endpoint, args.namespace)
        own = credentials_name(placed.name)
        local = dataclasses.replace(
            config,
            redis_secret=own if placed.spec.serves(Mode.ASYNC) else None,
            api_keys_secret=own if config.api_keys_secret else None,
        )
        context = BuildContext(config=local, keda=config.keda is KedaMode.ON)
        try:
            manifests.extend(build_children(placed, context))
        except BuildError as error:
            print(f"bundleserve render: {path}: {endpoint.name}: {error.reason}: {error.message}", file=sys.stderr)
            return 1
        notes.extend(note for note in [scaler_note(placed, context)] if note)
    sys.stdout.write("".join(notes))
    dump_stream(manifests, sys.stdout)
    return 0

"""Local mode's plan: which processes `bundleserve run` starts for a set of Endpoints, as pure data.

Local mode mirrors a pod: per Endpoint (per production variant of an Endpoint with spec.variants) one model process
(the bundle runtime for a Python bundle, the bundle's `command` for a runnable image) and one router in front of
it, plus one Redis-protocol server shared by every async endpoint. Building the plan is pure so it can be tested without starting anything.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.api.runtime import bundle_runtime_args
from bundleserve.api.variants import ServedVariant, served_variants
from bundleserve.dialects.sagemaker.sigv4 import ENV_ALLOW_UNSIGNED
from bundleserve.edge.config import ALLOW_LOOPBACK_ENV
from bundleserve.queue.callbacks import INSECURE_CREDENTIALS_ENV


class PlanError(ValueError):
    """An Endpoint cannot run in local mode; the message says why and what to change."""


@dataclass(frozen=True)
class ProcessSpec:
    """One child process: what to run, where it listens, and how to know it is ready."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass(frozen=True)
class EndpointPlan:
    """The processes of one variant of an Endpoint (its only one for an Endpoint without spec.variants)."""

    #: The Endpoint as declared (with its spec.variants): what the gateway routes by.
    endpoint: Endpoint
    #: The router's input: the variant's own Endpoint document.
    endpoint_file: Path
    model: ProcessSpec
    router: ProcessSpec
    variant: ServedVariant

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router.port}"


def bundleserve_argv(*args: str) -> list[str]:
    """Run our own CLI with the same interpreter, so local mode works inside any virtual environment."""
    return [sys.executable, "-m", "bundleserve.cli", *args]


def literal_env(endpoint: Endpoint) -> dict[str, str]:
    """The bundle's `env` entries with literal values; `valueFrom` (Secrets, ConfigMaps) exists only in a cluster."""
    return {item.name: item.value for item in endpoint.spec.bundle.env if item.value is not None}


def model_process(endpoint: Endpoint, manifest_dir: Path, port: int, label: str | None = None) -> ProcessSpec:
    """`endpoint` as the variant runs it; `label` names the process in logs (default: the endpoint's name)."""
    label = label or endpoint.name
    bundle = endpoint.spec.bundle
    if bundle.python is not None:
        argv = bundleserve_argv(
            "bundle", "serve", *bundle_runtime_args(endpoint.spec), "--port", str(port), "--host", "127.0.0.1"
        )
        if bundle.python.load:
            # a failed load() ends the run with the endpoint's name and error (docs/local-mode.md), instead of a
            # runtime that stays up answering "not ready"
            argv += ["--exit-on-load-failure"]
        code_dir = (manifest_dir / (bundle.python.path or ".")).resolve()
        argv += ["--path", str(code_dir)]
        return ProcessSpec(
            name=f"{label}/model",
            argv=argv,
            port=port,
            ready_path="/readyz",
            env=literal_env(endpoint),
            cwd=code_dir,
        )
    if bundle.command is None:
        raise PlanError(
            f"endpoint {endpoint.name}: a runnable image needs spec.bundle.command to run in local mode "
            "(local mode runs processes, not container images)"
        )
    env = {**literal_env(endpoint), "PORT": str(port)}
    argv = [*bundle.command, *(bundle.args or [])]
    argv = [part.replace("$(PORT)", str(port)) for part in argv]
    return ProcessSpec(
        name=f"{endpoint.name}/model",
        argv=argv,
        port=port,
        ready_path=bundle.effective_routes.ready,
        env=env,
        cwd=manifest_dir,
    )


def router_process(
    endpoint_file: Path,
    name: str,
    model_port: int,
    port: int,
    redis_url: str | None,
    results_dir: Path,
    variant: str | None = None,
) -> ProcessSpec:
    argv = bundleserve_argv(
        "router",
        "--endpoint-file", str(endpoint_file),
        "--model-url", f"http://127.0.0.1:{model_port}",
        "--port", str(port),
        "--host", "127.0.0.1",
    )  # fmt: skip
    if redis_url:
        argv += ["--redis-url", redis_url]
    if variant is not None:
        argv += ["--variant", variant]
    env = {"BUNDLESERVE_RESULTS_DIR": str(results_dir), **local_router_env()}
    return ProcessSpec(name=f"{name}/router", argv=argv, port=port, ready_path="/healthz", env=env)


def local_router_env() -> dict[str, str]:
    """Local mode runs on one machine where the models, url inputs and callback receivers are usually on loopback
    too: the destination guard lets loopback through here, and callback credentials may go over plain http (to the
    user's own receiver). A cluster's routers keep both refused.

    The routers also admit unsigned SageMaker requests: they listen on loopback behind the local gateway, which does
    the SigV4 check when keys are configured and hands verified requests on without the signature."""
    return {ALLOW_LOOPBACK_ENV: "true", INSECURE_CREDENTIALS_ENV: "true", ENV_ALLOW_UNSIGNED: "true"}


def local_gateway_sagemaker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The local gateway's SageMaker configuration: unsigned requests admitted unless the user's environment says
    otherwise, so an unmodified boto3 client with `signature_version=UNSIGNED` works out of the box (and a signed
    one too, once `BUNDLESERVE_SAGEMAKER_KEYS_FILE` or the key id/secret pair is set)."""
    return {ENV_ALLOW_UNSIGNED: "true", **environ}


def needs_redis(endpoints: Sequence[Endpoint]) -> bool:
    return any(e.spec.serves(Mode.ASYNC) for e in endpoints)


def plan_endpoints(
    found: Sequence[tuple[Path, Endpoint]],
    *,
    endpoints_dir: Path,
    results_dir: Path,
    redis_url: str | None,
    allocate_port: Callable[[], int],
) -> list[EndpointPlan]:
    """The processes for every Endpoint, one plan per variant. `endpoints_dir` receives one normalised manifest per
    variant (the router's input)."""
    plans = []
    for manifest_path, endpoint in found:
        for variant in served_variants(endpoint):
            label = f"{endpoint.name}/{variant.name}" if variant.declared else endpoint.name
            endpoint_file = endpoints_dir / f"{label.replace('/', '--')}.yaml"
            model_port, router_port = allocate_port(), allocate_port()
            model = model_process(variant.endpoint, manifest_path.resolve().parent, model_port, label)
            router = router_process(
                endpoint_file, label, model_port, router_port, redis_url, results_dir, variant.child_variant
            )
            plans.append(
                EndpointPlan(
                    endpoint=endpoint, endpoint_file=endpoint_file, model=model, router=router, variant=variant
                )
            )
    return plans

"""Shared Secrets in every Endpoint namespace: the operator copies the Redis, API-key and S3 Secrets it is configured
with from its own namespace into each Endpoint's namespace, as children owned by the Endpoint.

Why: pods can only reference Secrets of their own namespace. The chart creates (or names) these Secrets once, in the
release namespace; without copies every Endpoint outside it ended in CreateContainerConfigError. Decided here:
- one copy per Endpoint, named `<endpoint>-<secret>` (an Endpoint owns it: the garbage collector deletes it with the
  Endpoint, and two Endpoints of a namespace never fight over one object); in the operator's own namespace, and when
  the operator has no namespace of its own (run from a workstation), the pods use the Secret itself;
- the copy is refreshed on every reconcile (drift timer: within 60 s of a rotation); its data is never logged, put in
  status or hashed into an annotation (the desired-hash covers names and keys only; values compare directly);
- a missing source Secret is `Degraded=True/SecretMissing` naming it, not pods that fail later; likewise the
  Endpoint's own callback Secret (`spec.async.callback.auth.secretName`, mounted into the router) is
  `Degraded=True/CallbackSecretMissing`.
RBAC: get/create/update on Secrets (ClusterRole in cluster scope; see charts/bundleserve/files/operator-rbac.yaml).
"""

from __future__ import annotations

import dataclasses

from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.controller.builders import BuildContext, BuildError, Manifest
from bundleserve.controller.builders.common import metadata, stamp_desired_hash
from bundleserve.controller.builders.deployment import callback_auth
from bundleserve.controller.kube import KubeClient

#: OperatorConfig field -> the environment variable that names it (for messages).
SHARED_FIELDS = {
    "redis_secret": "BUNDLESERVE_REDIS_SECRET",
    "api_keys_secret": "BUNDLESERVE_API_KEYS_SECRET",
    "results_s3_secret": "BUNDLESERVE_RESULTS_S3_SECRET",
}


def copy_name(endpoint: str, source: str) -> str:
    """`<endpoint>-<source>`, within the 253 characters of a Secret name."""
    return f"{endpoint}-{source}"[:253].rstrip("-.")


def wanted(endpoint: Endpoint, context: BuildContext) -> dict[str, str]:
    """The shared Secrets this Endpoint's pods reference, by OperatorConfig field (the same choices as the builders:
    Redis only for async endpoints)."""
    config = context.config
    found = {field: getattr(config, field) for field in SHARED_FIELDS if getattr(config, field)}
    if not endpoint.spec.serves(Mode.ASYNC):
        found.pop("redis_secret", None)
    return found


def needs_copies(endpoint: Endpoint, context: BuildContext) -> bool:
    home = context.config.secrets_namespace
    return home is not None and home != endpoint.namespace


def build_copy(endpoint: Endpoint, name: str, source: Manifest) -> Manifest:
    """The copy as a child: the source's type and data; the desired-hash covers the key names, never the values."""
    data = dict(source.get("data") or {})
    copy: Manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(endpoint, name),
        "type": source.get("type") or "Opaque",
        "data": sorted(data),
    }
    stamp_desired_hash(copy)
    copy["data"] = data
    return copy


async def check_callback_secret(endpoint: Endpoint, kube: KubeClient) -> None:
    """The Secret of `spec.async.callback.auth` must exist in the Endpoint's namespace: without it the router would
    send callbacks unauthenticated (or its pods would never start), so it is Degraded=True/CallbackSecretMissing."""
    auth = callback_auth(endpoint)
    if auth is not None and await kube.get("Secret", endpoint.namespace, auth.secret_name) is None:
        raise BuildError(
            "CallbackSecretMissing",
            f"the Secret {endpoint.namespace}/{auth.secret_name} of spec.async.callback.auth does not exist"
            f" (keys {'username, password' if auth.kind == 'basic' else 'tls.crt, tls.key'})",
        )


async def localise(endpoint: Endpoint, context: BuildContext, kube: KubeClient) -> tuple[BuildContext, list[Manifest]]:
    """The build context whose Secret names are this namespace's copies, and the copies to apply (first, before the
    Deployment that references them). Raises BuildError(SecretMissing) when a source Secret does not exist."""
    await check_callback_secret(endpoint, kube)
    if not needs_copies(endpoint, context):
        return context, []
    home = context.config.secrets_namespace
    assert home is not None
    copies: list[Manifest] = []
    names: dict[str, str] = {}
    for field, source in wanted(endpoint, context).items():
        found = await kube.get("Secret", home, source)
        if found is None:
            raise BuildError(
                "SecretMissing",
                f"the Secret {home}/{source} ({SHARED_FIELDS[field]}) does not exist: it is copied into"
                f" {endpoint.namespace} for this Endpoint's pods",
            )
        names[field] = copy_name(endpoint.name, source)
        copies.append(build_copy(endpoint, names[field], found))
    config = context.config
    local = dataclasses.replace(
        config,
        redis_secret=names.get("redis_secret", config.redis_secret),
        api_keys_secret=names.get("api_keys_secret", config.api_keys_secret),
        results_s3_secret=names.get("results_s3_secret", config.results_s3_secret),
    )
    return dataclasses.replace(context, config=local), copies

"""The gateway's read-only view of Endpoint resources: list + watch of `endpoints.bundleserve.dev`.

This is the one module outside `controller.kube` that talks to the Kubernetes API (named as the exception in the
layer contract). It only reads, so it needs no kopf: aiohttp to the API server with the pod's service-account token.
The token is re-read on every (re)connect because kubelet rotates projected tokens. Each connect lists first (the
registry is replaced whole, so an Endpoint deleted while we were disconnected disappears), then watches from the
list's resourceVersion; a 410 Gone or any failure ends the watch and the loop lists again after a short backoff.

What an entry holds: the spec's modes, the router address (the Service's conventional URL, never `status.url`),
readiness from the `Ready` condition and the ready replicas from `status.readyReplicas` (the activator holds calls of
an endpoint at zero until that count is above 0).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pydantic

from bundleserve.api.endpoint import ConditionStatus, Endpoint
from bundleserve.api.variants import child_name
from bundleserve.gateway.registry import EndpointEntry, Registry, VariantRoute

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP, VERSION, PLURAL = "bundleserve.dev", "v1alpha1", "endpoints"
WATCH_SECONDS = 300  # the server closes the watch after this; we re-list and watch again


class KubeConfigError(RuntimeError):
    """Not in a cluster and no API server configured: the gateway cannot learn endpoints."""


@dataclass(frozen=True)
class KubeAccess:
    """How to reach the API server: its URL, where the bearer token lives (re-read per connect), the CA bundle."""

    server: str
    token_file: Path
    ca_file: Path | None = None

    @classmethod
    def in_cluster(cls, env: Mapping[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeAccess:
        """The pod's service account, from the environment the gateway's settings read (`gateway.settings`)."""
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise KubeConfigError(
                "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset): the gateway learns endpoints "
                "from the cluster; use `bundleserve run` for local mode"
            )
        host = f"[{host}]" if ":" in host else host
        ca = sa_dir / "ca.crt"
        return cls(server=f"https://{host}:{port}", token_file=sa_dir / "token", ca_file=ca if ca.exists() else None)

    def headers(self) -> dict[str, str]:
        token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.server.startswith("https://"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


def collection_path(namespace: str | None) -> str:
    if namespace is None:
        return f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def build_entry(obj: dict[str, Any]) -> EndpointEntry | None:
    """An Endpoint object as the API serves it -> registry entry; None (logged) when it does not parse."""
    try:
        endpoint = Endpoint.model_validate(obj)
    except pydantic.ValidationError as error:
        meta = obj.get("metadata") or {}
        log.warning("ignoring Endpoint %s/%s: %s", meta.get("namespace"), meta.get("name"), error)
        return None
    status = endpoint.status
    ready = False
    if status is not None:
        ready = any(c.type == "Ready" and c.status == ConditionStatus.TRUE for c in status.conditions)
    # Never `status.url`: whoever may write an Endpoint's status could point it anywhere, and the gateway sends
    # that endpoint's credential there. The Service the operator creates has this name in every cluster.
    router_url = f"http://{endpoint.name}.{endpoint.namespace}.svc.cluster.local"
    # Each declared variant's own Service, named as the operator names it (api.variants.child_name).
    variants = tuple(
        VariantRoute(
            variant.name,
            variant.weight,
            f"http://{child_name(endpoint.name, variant.name)}.{endpoint.namespace}.svc.cluster.local",
        )
        for variant in endpoint.spec.variants
    )
    ready_replicas = status.ready_replicas if status is not None else 0
    return EndpointEntry(
        endpoint=endpoint, router_url=router_url, ready=ready, ready_replicas=ready_replicas, variants=variants
    )


def apply_event(registry: Registry, event: dict[str, Any]) -> str | None:
    """One watch event into the registry. Returns the object's resourceVersion (to resume from), None for ERROR."""
    kind = event.get("type")
    obj = event.get("object") or {}
    if kind == "ERROR":
        return None
    version = (obj.get("metadata") or {}).get("resourceVersion")
    if kind == "BOOKMARK":
        return str(version) if version else None
    meta = obj.get("metadata") or {}
    if kind == "DELETED":
        registry.remove(meta.get("namespace") or "default", meta.get("name", ""))
    elif kind in ("ADDED", "MODIFIED"):
        entry = build_entry(obj)
        if entry is not None:
            registry.put(entry)
    return str(version) if version else None


class EndpointWatch:
    """Keeps a registry in step with the Endpoints of some namespaces (None: all namespaces)."""

    def __init__(
        self,
        access: KubeAccess,
        registry: Registry,
        namespaces: Sequence[str] | None = None,
        *,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self.access = access
        self.registry = registry
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self.on_synced = on_synced
        self._listed: dict[str | None, list[EndpointEntry]] = {}

    async def run(self) -> None:
        """Forever: one list+watch loop per namespace (or one cluster-wide)."""
        await asyncio.gather(*(self._follow(ns) for ns in self.namespaces))

    async def _follow(self, namespace: str | None) -> None:
        backoff = 0.2
        while True:
            try:
                connector = aiohttp.TCPConnector(ssl=self.access.ssl_context() or False)
                async with aiohttp.ClientSession(connector=connector, headers=self.access.headers()) as session:
                    version = await self._list(session, namespace)
                    backoff = 0.2
                    await self._watch(session, namespace, version)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as error:
                log.warning("Endpoint watch (%s) failed: %s; re-listing", namespace or "all namespaces", error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _list(self, session: aiohttp.ClientSession, namespace: str | None) -> str:
        async with session.get(self.access.server + collection_path(namespace)) as response:
            if response.status != 200:
                raise ValueError(f"listing Endpoints answered {response.status}: {(await response.text())[:200]}")
            document = await response.json()
        entries = [e for e in (build_entry(obj) for obj in document.get("items", [])) if e is not None]
        self._listed[namespace] = entries
        if len(self.namespaces) == 1:
            self.registry.replace_all(entries)
        else:  # keep the other namespaces' entries; replace this namespace's
            for entry in self.registry.entries():
                if entry.namespace == namespace:
                    self.registry.remove(entry.namespace, entry.name)
            for entry in entries:
                self.registry.put(entry)
        if self.on_synced is not None and all(ns in self._listed for ns in self.namespaces):
            self.on_synced()
        return str((document.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, session: aiohttp.ClientSession, namespace: str | None, version: str) -> None:
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        if version:
            params["resourceVersion"] = version
        timeout = aiohttp.ClientTimeout(total=None, sock_read=WATCH_SECONDS + 30)
        url = self.access.server + collection_path(namespace)
        async with session.get(url, params=params, timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"watching Endpoints answered {response.status}")
            async for event in _events(response):
                if apply_event(self.registry, event) is None and event.get("type") == "ERROR":
                    return  # 410 Gone and friends: list again


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    async for line in response.content:
        if line.strip():
            yield json.loads(line)

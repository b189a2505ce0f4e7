"""The one module that talks to the Kubernetes API (besides kopf itself): a small aiohttp client.

No `kubernetes` package here (decision in docs/operator.md: the official client would add a second HTTP stack and
blocking calls to an asyncio operator for the dozen verbs below). Credentials come from kopf's own login helpers
(service account in a pod, else kubeconfig, plus a kubeconfig `tokenFile`), so kopf and this client always use the
same identity. Tokens rotate (projected service-account tokens are refreshed by the kubelet, bound tokens die with
their object): on a 401 the client logs in again, which re-reads the token file, and retries the request once.
Every resource and verb used here is declared in RESOURCES; the RBAC rules in charts/bundleserve/files/operator-rbac.yaml
are checked against it (tests/unit/test_controller_rbac.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kopf
import yaml

from bundleserve.api.endpoint import GROUP, PLURAL, VERSION

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ResourceInfo:
    group: str  # "" for the core group
    version: str
    plural: str
    verbs: tuple[str, ...]  # what this client (not kopf) does with it

    @property
    def prefix(self) -> str:
        return f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"


#: kind -> where it lives and what we do with it. `Endpoint` is always addressed fully (endpoints.bundleserve.dev).
RESOURCES: dict[str, ResourceInfo] = {
    "Endpoint": ResourceInfo(GROUP, VERSION, PLURAL, ("get",)),
    "Endpoint/status": ResourceInfo(GROUP, VERSION, f"{PLURAL}/status", ("patch",)),
    # Optional children (a removed variant's, a dropped Service/autoscaler/PDB) are listed by the endpoint's label
    # and deleted (reconcile.delete_unwanted).
    "ConfigMap": ResourceInfo("", "v1", "configmaps", ("get", "list", "create", "update", "delete")),
    "Service": ResourceInfo("", "v1", "services", ("get", "list", "create", "update", "delete")),
    "Deployment": ResourceInfo("apps", "v1", "deployments", ("get", "list", "create", "update", "patch", "delete")),
    "HorizontalPodAutoscaler": ResourceInfo(
        "autoscaling", "v2", "horizontalpodautoscalers", ("get", "list", "create", "update", "delete")
    ),
    "PodDisruptionBudget": ResourceInfo(
        "policy", "v1", "poddisruptionbudgets", ("get", "list", "create", "update", "delete")
    ),
    "ScaledObject": ResourceInfo("keda.sh", "v1alpha1", "scaledobjects", ("get", "list", "create", "update", "delete")),
    "NetworkPolicy": ResourceInfo("networking.k8s.io", "v1", "networkpolicies", ("get", "create", "update")),
    "Pod": ResourceInfo("", "v1", "pods", ("list",)),
    # The master API-key Secret (read in the operator's namespace); each Endpoint's own credentials Secret, and the
    # existence of its callback and S3 Secrets, in its namespace (controller/secrets.py).
    "Secret": ResourceInfo("", "v1", "secrets", ("get", "create", "update")),
}
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
#: Permissions our writes need without a request of their own: children carry ownerReferences with
#: blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement admission plugin checks against this.
IMPLIED_PERMISSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = ((GROUP, f"{PLURAL}/finalizers", ("update",)),)


class KubeError(Exception):
    """A non-2xx answer of the API server (status and the server's Status message)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: the object changed under us (stale resourceVersion) or already exists."""


def login(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """Credentials as kopf finds them: the pod's service account, else $KUBECONFIG / ~/.kube/config (`kubeconfig`:
    the value the operator's settings read). Called again whenever a token was refused, so a rotated token file is
    read afresh each time."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: neither a service account nor a kubeconfig was found")
    if info.token is None and info.certificate_path is None and info.certificate_data is None:
        token_file = kubeconfig_token_file(kubeconfig)
        if token_file is not None:
            info = dataclasses.replace(info, token=token_file.read_text().strip(), scheme="Bearer")
    return info


def kubeconfig_token_file(kubeconfig: str | None) -> Path | None:
    """The current kubeconfig user's `tokenFile` (kopf's kubeconfig login reads only `token`); `kubeconfig`: the
    KUBECONFIG list of files (None: unset)."""
    paths = [p for p in (kubeconfig or "").split(os.pathsep) if p.strip()]
    if not paths:
        return None
    config = yaml.safe_load(Path(paths[0]).expanduser().read_text()) or {}
    context_name = config.get("current-context")
    context = next((c.get("context") or {} for c in config.get("contexts", []) if c["name"] == context_name), {})
    user = next((u.get("user") or {} for u in config.get("users", []) if u["name"] == context.get("user")), {})
    token_file = user.get("tokenFile")
    return Path(token_file).expanduser() if token_file else None


def path_of(kind: str, namespace: str | None, name: str | None = None) -> str:
    info = RESOURCES[kind]
    plural, _, subresource = info.plural.partition("/")
    path = info.prefix
    if namespace is not None:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
        if subresource:
            path += f"/{subresource}"
    return path


class KubeClient:
    """Typed verbs over the REST API. `writes` counts the writes this client made, by (verb, kind)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        server: str,
        *,
        auth_headers: dict[str, str] | None = None,
        relogin: Callable[[], kopf.ConnectionInfo] | None = None,
    ) -> None:
        self.session = session
        self.server = server.rstrip("/")
        self.writes: Counter[tuple[str, str]] = Counter()
        self.auth_headers = dict(auth_headers or {})
        self.relogin = relogin

    @classmethod
    def from_connection(
        cls,
        info: kopf.ConnectionInfo,
        *,
        timeout_seconds: float = 30.0,
        relogin: Callable[[], kopf.ConnectionInfo] | None = None,
    ) -> KubeClient:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
            headers={"User-Agent": "bundleserve-operator"},
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            trust_env=info.trust_env,
        )
        return cls(session, info.server, auth_headers=info.as_http_headers(), relogin=relogin)

    async def close(self) -> None:
        await self.session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body)
        status, text = await self._send(method, url, data, content_type)
        if status == 401 and self.relogin is not None:
            self.auth_headers = self.relogin().as_http_headers()  # a rotated token: read it again, retry once
            status, text = await self._send(method, url, data, content_type)
        if status >= 400:
            try:
                answer = json.loads(text)
                message, reason = str(answer.get("message", text)), str(answer.get("reason", ""))
            except ValueError:
                message, reason = text[:500], ""
            error_type = {404: NotFound, 409: Conflict}.get(status, KubeError)
            raise error_type(status, message, reason)
        return json.loads(text) if text else None

    async def _send(self, method: str, url: str, data: str | None, content_type: str) -> tuple[int, str]:
        headers = {**self.auth_headers, **({"Content-Type": content_type} if data is not None else {})}
        async with self.session.request(method, url, data=data, headers=headers) as response:
            return response.status, await response.text()

    def _count(self, verb: str, kind: str) -> None:
        self.writes[(verb, kind)] += 1

    async def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        try:
            found: Manifest = await self._request("GET", path_of(kind, namespace, name))
        except NotFound:
            return None
        return found

    async def list(self, kind: str, namespace: str, label_selector: dict[str, str]) -> list[Manifest]:
        selector = ",".join(f"{key}={value}" for key, value in sorted(label_selector.items()))
        found = await self._request("GET", path_of(kind, namespace), query={"labelSelector": selector})
        items: list[Manifest] = found.get("items", []) if found else []
        return items

    async def create(self, manifest: Manifest) -> Manifest:
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        self._count("create", kind)
        created: Manifest = await self._request("POST", path_of(kind, namespace), body=manifest)
        return created

    async def replace(self, manifest: Manifest) -> Manifest:
        kind, meta = manifest["kind"], manifest["metadata"]
        self._count("update", kind)
        replaced: Manifest = await self._request("PUT", path_of(kind, meta["namespace"], meta["name"]), body=manifest)
        return replaced

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: Manifest) -> Manifest:
        self._count("patch", kind)
        patched: Manifest = await self._request(
            "PATCH", path_of(kind, namespace, name), body=patch, content_type="application/merge-patch+json"
        )
        return patched

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        self._count("delete", kind)
        try:
            await self._request(
                "DELETE",
                path_of(kind, namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except NotFound:
            return False
        return True

    async def patch_endpoint_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        return await self.merge_patch("Endpoint/status", namespace, name, {"status": status})

    async def serves(self, group_version: str) -> bool:
        """Whether the API server serves a group/version (e.g. keda.sh/v1alpha1): discovery, no RBAC needed."""
        try:
            await self._request("GET", f"/apis/{group_version}")
        except NotFound:
            return False
        return True

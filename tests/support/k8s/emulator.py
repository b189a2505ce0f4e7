"""`KubernetesEmulator`: the store + HTTP server on a loopback port + a kubeconfig + the test knobs, in one object.

Clients (kopf, the operator, kubectl-like code) see a real API server at `url`, authenticated by a bearer token from
the kubeconfig. Tests drive the parts of a cluster that are not the API server through Python methods: roll out a
Deployment (`roll_out`), set its status, install CRDs, count API writes, expire the watch history.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.k8s.errors import ApiError
from tests.support.k8s.resources import ResourceType
from tests.support.k8s.server import ApiServer, InjectedFailure, RequestRecord, ServerThread
from tests.support.k8s.simulation import AutoRollout, DeploymentSimulator
from tests.support.k8s.store import Body, Store

TOKEN = "emulator-token"


class KubernetesEmulator:
    """A running emulated API server (use as a context manager, or `start()`/`stop()`)."""

    def __init__(self, workdir: Path, *, bookmark_interval: float = 5.0, history_limit: int = 200_000) -> None:
        self.workdir = workdir
        self.store = Store(history_limit=history_limit)
        self.api = ApiServer(self.store, bookmark_interval=bookmark_interval, token=TOKEN)
        self.deployments = DeploymentSimulator(self.store)
        self._thread = ServerThread(self.api)
        self._auto: AutoRollout | None = None
        self.background_errors: list[BaseException] = []
        self.kubeconfig = workdir / "kubeconfig"

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> KubernetesEmulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict()))
        return self

    def stop(self) -> None:
        if self._auto is not None:
            self._auto.stop()
            self.background_errors.extend(self._auto.errors)
            self._auto = None
        self._thread.stop()

    def problems(self) -> list[BaseException]:
        """Failures of the emulator itself (bugs, not API errors): the fixture fails the test when there are any."""
        auto = self._auto.errors if self._auto is not None else []
        return [*self.api.internal_errors, *self.background_errors, *auto]

    def __enter__(self) -> KubernetesEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._thread.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What a raw HTTP client must send (the server rejects requests without the kubeconfig's token)."""
        return {"Authorization": f"Bearer {TOKEN}"}

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess (e.g. `kopf run`, `bundleserve operator`) to log in like in a cluster."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubeconfig_dict(self, namespace: str = "default") -> Body:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": TOKEN}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
            ],
            "current-context": "emulator",
        }

    # --- objects (direct, not counted as API requests) ------------------------------------------------------------

    def resource(self, name: str) -> ResourceType:
        """Resolve `deployments.apps`, `deployments`, `Deployment`, `endpoints.bundleserve.dev`, `apps/v1/deployments`."""
        return self.store.registry.resolve(name)

    def get(self, resource: str, name: str, namespace: str | None = None) -> Body | None:
        try:
            return self.store.get(self.resource(resource), namespace, name)
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    def items(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None) -> list[Body]:
        found = self.store.list_objects(self.resource(resource), namespace, label_selector=label_selector)
        return list(found["items"])

    def create(self, body: Mapping[str, Any], namespace: str | None = None) -> Body:
        resource = self.store.registry.for_api_version(body["apiVersion"], body["kind"])
        return self.store.create(resource, namespace or body.get("metadata", {}).get("namespace"), dict(body))[0]

    def apply(
        self, documents: Iterable[Mapping[str, Any]] | Mapping[str, Any] | Path | str, namespace: str | None = None
    ) -> list[Body]:
        """Create each object, or merge it into the existing one like `kubectl apply` (fields the manifest no longer
        has are kept: there is no last-applied-configuration)."""
        if isinstance(documents, Path | str):
            docs = [d for d in yaml.safe_load_all(Path(documents).read_text()) if d]
        elif isinstance(documents, Mapping):
            docs = [documents]
        else:
            docs = list(documents)
        result = []
        for doc in docs:
            resource = self.store.registry.for_api_version(doc["apiVersion"], doc["kind"])
            ns = namespace or doc.get("metadata", {}).get("namespace") or ("default" if resource.namespaced else None)
            name = doc["metadata"]["name"]
            if not self.store.exists(resource, ns, name):
                result.append(self.store.create(resource, ns, copy.deepcopy(dict(doc)))[0])
                continue
            patch_type = "application/merge-patch+json" if resource.custom else "application/strategic-merge-patch+json"
            result.append(self.store.patch(resource, ns, name, patch_type, copy.deepcopy(dict(doc)))[0])
        return result

    def install_crd(self, crd: Mapping[str, Any] | Path | str) -> Body:
        return self.apply(crd)[0]

    def patch(
        self,
        resource: str,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> Body:
        """A JSON merge patch, as a user would `kubectl patch --type=merge` (e.g. to edit a child by hand)."""
        rt = self.resource(resource)
        return self.store.patch(
            rt, namespace, name, "application/merge-patch+json", dict(patch), subresource=subresource
        )[0]

    def delete(
        self, resource: str, name: str, namespace: str | None = None, *, propagation: str = "Background"
    ) -> Body:
        return self.store.delete(self.resource(resource), namespace, name, {"propagationPolicy": propagation})

    def create_namespace(self, name: str) -> Body:
        return self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # --- the cluster's other controllers --------------------------------------------------------------------------

    def roll_out(self, namespace: str, name: str, **options: Any) -> list[Body]:
        """Pretend the Deployment controller + kubelet ran; see `DeploymentSimulator.roll_out` for the options."""
        return self.deployments.roll_out(namespace, name, **options)

    def set_deployment_status(self, namespace: str, name: str, **fields: Any) -> Body:
        return self.deployments.set_status(namespace, name, **fields)

    def auto_roll_out(self, enabled: bool = True) -> None:
        """Keep every Deployment rolled out and ready as soon as it is written (a healthy cluster)."""
        if enabled and self._auto is None:
            self._auto = AutoRollout(self.deployments).start()
        elif not enabled and self._auto is not None:
            self._auto.stop()
            self.background_errors.extend(self._auto.errors)
            self._auto = None

    def drop_watches(self) -> None:
        """Close every open watch stream now; with `expire_watch_history()` first, reconnecting clients get 410."""
        self._thread.call(self.api.drop_watches)

    def expire_watch_history(self) -> int:
        """Compact the event history: watches resuming from older versions get 410 Gone (kopf must re-list)."""
        return self.store.compact()

    def fail_requests(
        self,
        code: int,
        *,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` matching API requests with `code` (409 Conflict, 429, 500, 503, ...)."""
        self.api.inject_failure(InjectedFailure(verb, resource, name, code, times))

    @property
    def active_watches(self) -> int:
        """Open watch streams right now (e.g. wait until the operator watches before acting)."""
        return self.api.active_watches

    # --- audit ----------------------------------------------------------------------------------------------------

    def requests(self) -> list[RequestRecord]:
        return self.api.records()

    def writes(self, *, exclude: Iterable[str] = (), succeeded_only: bool = False) -> Counter[tuple[str, str]]:
        """API write requests since the last reset, by (verb, resource): e.g. {("patch", "deployments.apps"): 1}.

        Failed attempts count too unless `succeeded_only`. `exclude` drops resources by qualified name, e.g.
        ("events", "clusterkopfpeerings.kopf.dev") to ignore kopf's event posts and peering keep-alives.
        """
        excluded = set(exclude)
        return Counter(
            (r.verb, r.resource)
            for r in self.api.records()
            if r.is_write
            and r.resource not in excluded
            and r.resource.split("/")[0] not in excluded
            and (not succeeded_only or r.code < 400)
        )

    def write_count(self, *, exclude: Iterable[str] = (), succeeded_only: bool = False) -> int:
        return sum(self.writes(exclude=exclude, succeeded_only=succeeded_only).values())

    def reset_counts(self) -> None:
        self.api.reset_records()

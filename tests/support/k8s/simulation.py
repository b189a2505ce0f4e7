"""Stand-ins for the cluster's controllers that the operator waits on (not part of the API server).

The Deployment controller, ReplicaSet controller, scheduler and kubelet are reduced to one step, `roll_out`:
it makes a Deployment's ReplicaSet and Pods exist for the current template and writes their statuses, either all
ready or stuck with a waiting reason (ImagePullBackOff, CrashLoopBackOff, Unschedulable, ...) so the operator's
reason reporting can be tested. These writes go straight to the store: they are not API requests and not counted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from typing import Any

from tests.support.k8s.errors import ApiError
from tests.support.k8s.store import Body, Store, now

NODE_NAME = "emulated-node-1"
#: The Deployment controller records the rollout revision on the Deployment and its ReplicaSets (an annotation
#: the operator did not write: diffing annotations wholesale would fight the controller on a real cluster).
REVISION = "deployment.kubernetes.io/revision"


def template_hash(template: Body) -> str:
    """A stable stand-in for pod-template-hash (the real one is an FNV hash of the template)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join(c for c in digest if c in "bcdfghjklmnpqrstvwxz2456789")[:10].ljust(10, "b")


def _owner(obj: Body) -> Body:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _container_status(container: Body, *, ready: bool, waiting_reason: str | None, message: str) -> Body:
    status: Body = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
    }
    if waiting_reason is None:
        status["state"] = {"running": {"startedAt": now()}}
        status["imageID"] = f"docker.io/library/{container.get('image', '')}@sha256:{'0' * 64}"
        status["containerID"] = f"containerd://{hashlib.sha256(container['name'].encode()).hexdigest()}"
        return status
    if waiting_reason == "CrashLoopBackOff":
        status["restartCount"] = 5
        status["lastState"] = {
            "terminated": {"exitCode": 1, "reason": "Error", "startedAt": now(), "finishedAt": now()}
        }
        message = message or f"back-off 5m0s restarting failed container={container['name']}"
    elif waiting_reason in ("ImagePullBackOff", "ErrImagePull"):
        message = message or f'Back-off pulling image "{container.get("image", "")}"'
    status["state"] = {"waiting": {"reason": waiting_reason, "message": message}}
    return status


def pod_status(
    pod: Body, *, ready: bool, waiting_reason: str | None = None, container: str | None = None, message: str = ""
) -> Body:
    """What the scheduler + kubelet would report for `pod`: ready, or stuck for `waiting_reason`."""
    containers = pod["spec"].get("containers") or []
    if waiting_reason == "Unschedulable":
        return {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message
                    or "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available.",
                    "lastTransitionTime": now(),
                }
            ],
            "qosClass": "Burstable",
        }
    target = container or (containers[0]["name"] if containers else None)
    statuses = [
        _container_status(
            c,
            ready=ready and waiting_reason is None,
            waiting_reason=waiting_reason if c["name"] == target else None,
            message=message,
        )
        for c in containers
    ]
    all_ready = all(s["ready"] for s in statuses)
    flag = "True" if all_ready else "False"
    conditions = [
        {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
        {"type": "Ready", "status": flag, "lastTransitionTime": now()},
        {"type": "ContainersReady", "status": flag, "lastTransitionTime": now()},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
    ]
    if not all_ready:
        for condition in conditions[1:3]:
            condition["reason"] = "ContainersNotReady"
            waiting = [s["name"] for s in statuses if not s["ready"]]
            condition["message"] = f"containers with unready status: [{' '.join(waiting)}]"
    return {
        "phase": "Running" if waiting_reason is None or waiting_reason == "CrashLoopBackOff" else "Pending",
        "conditions": conditions,
        "hostIP": "10.0.0.10",
        "podIP": "10.244.0.10",
        "startTime": now(),
        "containerStatuses": statuses,
        "qosClass": "Burstable",
    }


class DeploymentSimulator:
    """The Deployment/ReplicaSet controllers, scheduler and kubelet collapsed into explicit, synchronous steps."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.deployments = store.registry.resolve("deployments.apps")
        self.replicasets = store.registry.resolve("replicasets.apps")
        self.pods = store.registry.resolve("pods")

    def set_status(self, namespace: str, name: str, **fields: Any) -> Body:
        """Merge `fields` (camelCase status keys, e.g. readyReplicas=2) into a Deployment's status."""
        deployment = self.store.get(self.deployments, namespace, name)
        status = {**(deployment.get("status") or {}), **fields}
        return self.store.write_status(
            self.deployments, namespace, name, {k: v for k, v in status.items() if v is not None}
        )

    def roll_out(
        self,
        namespace: str,
        name: str,
        *,
        ready: int | None = None,
        waiting_reason: str | None = None,
        container: str | None = None,
        message: str = "",
    ) -> list[Body]:
        """Pretend the controllers converged on the current template; returns the Deployment's pods.

        `ready` caps how many pods become ready (default: all, or none when `waiting_reason` is given);
        pods beyond it are stuck with `waiting_reason` (default "ContainersNotReady" semantics: just not ready).
        """
        deployment = self.store.get(self.deployments, namespace, name)
        spec = deployment["spec"]
        desired = int(spec.get("replicas", 1))
        template = copy.deepcopy(spec["template"])
        pod_hash = template_hash(template)
        rs_name = f"{name}-{pod_hash}"
        labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": pod_hash}
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        template.setdefault("metadata", {})["labels"] = labels
        for rs in self.store.dependents(deployment["metadata"]["uid"], self.replicasets):
            if rs["metadata"]["name"] != rs_name:
                self._scale_down(namespace, rs)
        try:
            rs = self.store.get(self.replicasets, namespace, rs_name)
        except ApiError:
            owned = self.store.dependents(deployment["metadata"]["uid"], self.replicasets)
            revision = 1 + max((int(r["metadata"].get("annotations", {}).get(REVISION, "0")) for r in owned), default=0)
            rs_body = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": {REVISION: str(revision), "deployment.kubernetes.io/desired-replicas": str(desired)},
                    "ownerReferences": [_owner(deployment)],
                },
                "spec": {"replicas": desired, "selector": selector, "template": template},
            }
            rs = self.store.create(self.replicasets, namespace, rs_body)[0]
        self._annotate_revision(deployment, rs["metadata"]["annotations"][REVISION])
        if rs["spec"].get("replicas") != desired:
            rs = self.store.update(
                self.replicasets, namespace, rs_name, {**rs, "spec": {**rs["spec"], "replicas": desired}}
            )[0]
        pods = self.store.dependents(rs["metadata"]["uid"], self.pods)
        for pod in pods[desired:]:
            self.store.delete(self.pods, namespace, pod["metadata"]["name"])
        pods = pods[:desired]
        while len(pods) < desired:
            pod_body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": f"{rs_name}-",
                    "namespace": namespace,
                    "labels": labels,
                    "ownerReferences": [_owner(rs)],
                },
                "spec": {**copy.deepcopy(template.get("spec") or {}), "nodeName": NODE_NAME},
            }
            pods.append(self.store.create(self.pods, namespace, pod_body)[0])
        ready_count = (0 if waiting_reason else desired) if ready is None else min(ready, desired)
        result = []
        for index, pod in enumerate(pods):
            is_ready = index < ready_count
            status = pod_status(
                pod,
                ready=is_ready,
                waiting_reason=None if is_ready else waiting_reason,
                container=container,
                message=message,
            )
            result.append(self.store.write_status(self.pods, namespace, pod["metadata"]["name"], status))
        self.store.write_status(self.replicasets, namespace, rs_name, {
            "replicas": desired, "readyReplicas": ready_count, "availableReplicas": ready_count,
            "fullyLabeledReplicas": desired, "observedGeneration": rs["metadata"].get("generation", 1),
        })  # fmt: skip
        self.store.write_status(
            self.deployments, namespace, name, self.deployment_status(deployment, desired, ready_count, rs_name)
        )
        return result

    def _annotate_revision(self, deployment: Body, revision: str) -> None:
        meta = deployment["metadata"]
        if (meta.get("annotations") or {}).get(REVISION) == revision:
            return
        patch = {"metadata": {"annotations": {REVISION: revision}}}
        self.store.patch(self.deployments, meta["namespace"], meta["name"], "application/merge-patch+json", patch)

    @staticmethod
    def deployment_status(deployment: Body, desired: int, ready: int, rs_name: str) -> Body:
        available = ready >= desired
        progressing_reason = "NewReplicaSetAvailable" if available else "ReplicaSetUpdated"
        progressing_message = (
            f'ReplicaSet "{rs_name}" has successfully progressed.'
            if available
            else f'ReplicaSet "{rs_name}" is progressing.'
        )
        status: Body = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": desired,
            "updatedReplicas": desired,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": desired - ready,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available else "False",
                    "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                    "message": "Deployment has minimum availability."
                    if available
                    else "Deployment does not have minimum availability.",
                    "lastUpdateTime": now(),
                    "lastTransitionTime": now(),
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": progressing_reason,
                    "message": progressing_message,
                    "lastUpdateTime": now(),
                    "lastTransitionTime": now(),
                },
            ],
        }
        # The real controller omits zero counts (omitempty).
        return {k: v for k, v in status.items() if v != 0 or k == "observedGeneration"}

    def _scale_down(self, namespace: str, rs: Body) -> None:
        for pod in self.store.dependents(rs["metadata"]["uid"], self.pods):
            self.store.delete(self.pods, namespace, pod["metadata"]["name"])
        if rs["spec"].get("replicas"):
            self.store.update(
                self.replicasets, namespace, rs["metadata"]["name"], {**rs, "spec": {**rs["spec"], "replicas": 0}}
            )
            self.store.write_status(self.replicasets, namespace, rs["metadata"]["name"], {"replicas": 0})

    def needs_roll_out(self, deployment: Body) -> bool:
        status = deployment.get("status") or {}
        spec = deployment.get("spec") or {}
        return bool(
            status.get("observedGeneration") != deployment["metadata"].get("generation")
            or status.get("replicas", 0) != spec.get("replicas", 1)
            or status.get("readyReplicas", 0) != spec.get("replicas", 1)
        )


class AutoRollout:
    """Runs `roll_out` (all pods ready) for every Deployment whose status lags its spec, on a thread woken by writes."""

    def __init__(self, simulator: DeploymentSimulator) -> None:
        self.simulator = simulator
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="k8s-auto-rollout", daemon=True)
        self.errors: list[BaseException] = []
        simulator.store.add_listener(self._wake.set)

    def start(self) -> AutoRollout:
        self._thread.start()
        self._wake.set()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(10)

    def _run(self) -> None:
        store, deployments = self.simulator.store, self.simulator.deployments
        cursor = 0
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            cursor, changed = store.changed_since(deployments, cursor)
            candidates = store.objects(deployments) if changed is None else [
                d for d in (self._get(ns, name) for ns, name in sorted(changed)) if d is not None
            ]  # fmt: skip
            for deployment in candidates:
                if deployment["metadata"].get("deletionTimestamp") or not self.simulator.needs_roll_out(deployment):
                    continue
                try:
                    self.simulator.roll_out(deployment["metadata"]["namespace"], deployment["metadata"]["name"])
                except ApiError as error:  # deleted or changed meanwhile: the next wake-up sees the new state
                    if error.code not in (404, 409):
                        self.errors.append(error)
                except Exception as error:  # a bug of the simulator: reported by the fixture, the thread carries on
                    self.errors.append(error)

    def _get(self, namespace: str, name: str) -> Body | None:
        try:
            return self.simulator.store.get(self.simulator.deployments, namespace, name)
        except ApiError:
            return None

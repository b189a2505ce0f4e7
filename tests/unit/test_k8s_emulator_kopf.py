"""The real kopf (`kopf run` as a subprocess, logging in through the emulator's kubeconfig) works against the emulator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.k8s.emulator import KubernetesEmulator
from tests.support.processes import Server
from tests.support.waiting import wait_until
from tests.unit.test_k8s_emulator import widget, widget_crd

HANDLERS = """
import kopf

@kopf.on.create("demo.example.com", "v1", "widgets")
def created(body, spec, patch, **_):
    patch.status["seen"] = spec["size"] * 2
    kopf.info(body, reason="Seen", message="a widget was seen")
    return {"size": spec["size"]}

@kopf.on.update("demo.example.com", "v1", "widgets", field="spec.size")
def resized(new, patch, **_):
    patch.status["resized"] = new

@kopf.on.delete("demo.example.com", "v1", "widgets")
def deleted(name, logger, **_):
    logger.info(f"cleaning up {name}")
"""

WIDGETS = "widgets.demo.example.com"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubernetesEmulator]:
    with KubernetesEmulator(tmp_path / "k8s") as emulator:
        emulator.install_crd(widget_crd())
        yield emulator
    assert not emulator.problems()


@pytest.fixture(params=["--namespace=default"])
def kopf_run(api: KubernetesEmulator, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """`kopf run` scoped by the parameter: one namespace, or the whole cluster (it then watches namespaces too)."""
    handlers = tmp_path / "handlers.py"
    handlers.write_text(HANDLERS)
    argv = [sys.executable, "-m", "kopf", "run", "--standalone", request.param, "--verbose", str(handlers)]
    server = Server(argv, log_path=tmp_path / "kopf.log", env=api.env)
    try:
        yield server
    finally:
        server.stop()


def _status(api: KubernetesEmulator, name: str) -> dict[str, object]:
    obj = api.get(WIDGETS, name, "default") or {}
    status: dict[str, object] = obj.get("status") or {}
    return status


@pytest.mark.parametrize("kopf_run", ["--namespace=default", "--all-namespaces"], indirect=True)
def test_kopf_handlers_fire_and_patch_status_through_the_subresource(api: KubernetesEmulator, kopf_run: Server) -> None:
    api.create({**widget(size=2), "metadata": {"name": "w1", "namespace": "default"}})
    wait_until(lambda: _status(api, "w1").get("seen") == 4, timeout=30, what=f"kopf's create handler\n{kopf_run.log()}")
    obj = api.get(WIDGETS, "w1", "default")
    assert obj is not None
    assert obj["status"]["created"] == {"size": 2}
    assert obj["metadata"]["generation"] == 1  # kopf's status and annotation patches did not bump it
    assert "kopf.zalando.org/KopfFinalizerMarker" in obj["metadata"]["finalizers"]
    status_patches = [r for r in api.requests() if r.verb == "patch" and r.resource == f"{WIDGETS}/status"]
    assert status_patches and all(r.code == 200 for r in status_patches)
    assert "kopf" in status_patches[0].user_agent.lower()

    api.patch(WIDGETS, "w1", {"spec": {"size": 3}}, "default")
    wait_until(
        lambda: _status(api, "w1").get("resized") == 3, timeout=30, what=f"kopf's update handler\n{kopf_run.log()}"
    )

    api.delete(WIDGETS, "w1", "default")
    wait_until(
        lambda: api.get(WIDGETS, "w1", "default") is None,
        timeout=30,
        what=f"kopf to release its finalizer\n{kopf_run.log()}",
    )
    assert "cleaning up w1" in kopf_run.log()
    [event] = wait_until(lambda: api.items("events", "default"), what="the event kopf posts")
    assert (event["involvedObject"]["name"], event["reason"], event["message"]) == ("w1", "Seen", "a widget was seen")


def test_kopf_recovers_from_410_gone_by_relisting(api: KubernetesEmulator, kopf_run: Server) -> None:
    api.create({**widget("first"), "metadata": {"name": "first", "namespace": "default"}})
    wait_until(lambda: _status(api, "first").get("seen") == 2, timeout=30, what=f"the first object\n{kopf_run.log()}")
    api.expire_watch_history()
    api.drop_watches()  # kopf reconnects from its last version, which is now too old
    restart = "Restarting the watch-stream for widgets.v1.demo.example.com"  # kopf's 410 Gone path
    wait_until(lambda: restart in kopf_run.log(), timeout=30, what=f"kopf to get 410 Gone\n{kopf_run.log()}")
    api.create({**widget("second", size=5), "metadata": {"name": "second", "namespace": "default"}})
    wait_until(lambda: _status(api, "second").get("seen") == 10, timeout=30, what=f"the object\n{kopf_run.log()}")


def test_kopf_peering_pauses_the_lower_priority_operator_until_the_leader_leaves(
    api: KubernetesEmulator, tmp_path: Path
) -> None:
    handlers = tmp_path / "handlers.py"
    handlers.write_text(HANDLERS)
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": "default", "namespace": "default"},
    }
    api.create(peering)

    def start(priority: int) -> Server:
        argv = [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--peering=default",
            f"--priority={priority}",
            "--namespace=default",
        ]
        return Server([*argv, "--verbose", str(handlers)], log_path=tmp_path / f"kopf-{priority}.log", env=api.env)

    leader, follower = start(20), start(10)
    try:

        def peers() -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = (api.get("kopfpeerings.kopf.dev", "default", "default") or {}).get(
                "status"
            ) or {}
            return found

        wait_until(lambda: sorted(p["priority"] for p in peers().values()) == [10, 20], timeout=30, what="both peers")
        api.create({**widget("led", size=1), "metadata": {"name": "led", "namespace": "default"}})
        wait_until(lambda: _status(api, "led").get("seen") == 2, timeout=30, what=f"the leader\n{leader.log()}")
        assert "Handler 'created'" in leader.log() and "Handler 'created'" not in follower.log()
        assert leader.stop() == 0  # a graceful exit removes the leader from the peering object
        wait_until(lambda: [p["priority"] for p in peers().values()] == [10], timeout=30, what="the leader to leave")
        api.create({**widget("followed", size=3), "metadata": {"name": "followed", "namespace": "default"}})
        wait_until(lambda: _status(api, "followed").get("seen") == 6, timeout=30, what=f"failover\n{follower.log()}")
    finally:
        leader.stop()
        follower.stop()

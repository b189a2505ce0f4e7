"""The controller's drift detection (controller.diff) on hand-made manifests: what counts as drift, what a
replacement keeps. Issue 9 ("tests that would not notice"): owner references dropped from the drift keys left the
suite green; so did most small changes to `needs_write` and `replacement` (see docs/testing.md).
"""

from __future__ import annotations

import copy
from typing import Any

# The one import of the module under test.
from bundleserve.controller.diff import desired_hash, needs_write, replacement
from bundleserve.controller.labels import DESIRED_HASH_ANNOTATION

OWNER = {"apiVersion": "bundleserve.dev/v1alpha1", "kind": "Endpoint", "name": "echo", "uid": "u-1", "controller": True}


def manifest(**metadata: Any) -> dict[str, Any]:
    meta = {"name": "echo", "namespace": "default", "annotations": {DESIRED_HASH_ANNOTATION: "h1"}}
    meta.update(metadata)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"ports": [{"port": 80}]}}


def test_the_hash_is_read_only_from_a_string_annotation() -> None:
    assert desired_hash(manifest()) == "h1"
    assert desired_hash({"metadata": {}}) is None
    assert desired_hash({}) is None
    assert desired_hash({"metadata": {"annotations": {DESIRED_HASH_ANNOTATION: 7}}}) is None


def test_a_live_copy_of_what_we_want_needs_no_write() -> None:
    desired = manifest(ownerReferences=[OWNER], labels={"app": "echo"})
    live = copy.deepcopy(desired)
    live["metadata"]["labels"]["extra"] = "theirs"  # fields others add are not drift
    live["metadata"]["resourceVersion"] = "42"
    live["spec"]["clusterIP"] = "10.0.0.1"
    live["status"] = {"loadBalancer": {}}
    assert not needs_write(desired, live)


def test_each_drift_key_is_compared() -> None:
    desired = manifest(ownerReferences=[OWNER], labels={"app": "echo"})
    for key, change in [
        ("ownerReferences", []),  # the owner reference was dropped: garbage collection would no longer delete it
        ("labels", {"app": "edited"}),
        ("annotations", {DESIRED_HASH_ANNOTATION: "h1", "other": "x"}),
    ]:
        live = copy.deepcopy(desired)
        live["metadata"][key] = change
        if key == "annotations":
            desired_with_extra = copy.deepcopy(desired)
            desired_with_extra["metadata"]["annotations"]["ours"] = "y"
            assert needs_write(desired_with_extra, live), key
        else:
            assert needs_write(desired, live), key


def test_a_changed_hash_or_spec_is_drift() -> None:
    desired = manifest()
    live = copy.deepcopy(desired)
    live["metadata"]["annotations"][DESIRED_HASH_ANNOTATION] = "h0"
    assert needs_write(desired, live)
    live = copy.deepcopy(desired)
    live["spec"]["ports"][0]["port"] = 81
    assert needs_write(desired, live)


def test_a_replacement_keeps_what_others_and_the_server_own() -> None:
    desired = manifest(ownerReferences=[OWNER], labels={"app": "echo"})
    other_owner = {**OWNER, "kind": "Other", "uid": "u-2"}
    live = manifest(
        ownerReferences=[other_owner, {**OWNER, "name": "stale"}],
        labels={"app": "old", "team": "ml"},
        annotations={DESIRED_HASH_ANNOTATION: "h0", "note": "kept"},
        finalizers=["example.com/keep"],
        resourceVersion="42",
    )
    live["spec"]["clusterIP"] = "10.0.0.1"
    body = replacement(desired, live)
    meta = body["metadata"]
    assert meta["resourceVersion"] == "42"
    assert meta["labels"] == {"app": "echo", "team": "ml"}
    assert meta["annotations"] == {DESIRED_HASH_ANNOTATION: "h1", "note": "kept"}
    assert meta["ownerReferences"] == [other_owner, OWNER]  # ours replaces the live copy of it, others stay first
    assert meta["finalizers"] == ["example.com/keep"]
    assert body["spec"] == {"ports": [{"port": 80}], "clusterIP": "10.0.0.1"}
    assert desired["metadata"].get("resourceVersion") is None  # the desired manifest is not modified


def test_a_replacement_without_owners_adds_none() -> None:
    body = replacement(manifest(), manifest(resourceVersion="1"))
    assert "ownerReferences" not in body["metadata"] and "finalizers" not in body["metadata"]

"""Discovery documents (`/api`, `/apis`, `/apis/{group}/{version}`, `/version`) built from the live registry.

kopf scans these to learn resources, their scope and whether they have a `status` subresource; a CRD created at run
time appears here at once (the real server takes a moment; kopf polls, so it cannot tell the difference).
"""

from __future__ import annotations

from typing import Any

from tests.support.k8s.resources import Registry

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def core_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_doc(registry: Registry, group: str) -> dict[str, Any] | None:
    resources = [r for r in registry.all() if r.group == group]
    if not resources:
        return None
    versions = sorted({r.version for r in resources}, reverse=True)
    preferred = next((r.version for r in resources if r.preferred), versions[0])
    return {
        "name": group,
        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
        "preferredVersion": {"groupVersion": f"{group}/{preferred}", "version": preferred},
    }


def group_list(registry: Registry) -> dict[str, Any]:
    groups = sorted({r.group for r in registry.all() if r.group})
    docs = [doc for doc in (_group_doc(registry, g) for g in groups) if doc]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": docs}


def group(registry: Registry, name: str) -> dict[str, Any] | None:
    doc = _group_doc(registry, name)
    return {"kind": "APIGroup", "apiVersion": "v1", **doc} if doc else None


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    resources = sorted((r for r in registry.all() if r.group == group and r.version == version), key=lambda r: r.plural)
    if not resources:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [entry for r in resources for entry in r.discovery_entries()],
    }

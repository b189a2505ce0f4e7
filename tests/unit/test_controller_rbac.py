"""The RBAC rules in charts/bundleserve/files/operator-rbac.yaml are exactly what the operator uses: nothing missing
(it would fail in a cluster) and nothing more (least privilege)."""

from __future__ import annotations

from pathlib import Path

import yaml

from bundleserve.controller import handlers, kube

RBAC_FILE = Path(__file__).resolve().parents[2] / "charts" / "bundleserve" / "files" / "operator-rbac.yaml"
Permission = tuple[str, str, str]  # (apiGroup, resource, verb)


def granted() -> set[Permission]:
    rules = yaml.safe_load(RBAC_FILE.read_text())
    assert isinstance(rules, list) and rules, "the file is a YAML list of PolicyRules"
    found: set[Permission] = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no wildcards below
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    found.add((group, resource, verb))
    return found


def used() -> set[Permission]:
    found: set[Permission] = set()
    for info in kube.RESOURCES.values():
        found.update((info.group, info.plural, verb) for verb in info.verbs)
    for group, resource, verbs in (*handlers.KOPF_API_USAGE, *kube.IMPLIED_PERMISSIONS):
        found.update((group, resource, verb) for verb in verbs)
    return found


def test_every_permission_the_code_uses_is_granted() -> None:
    assert used() - granted() == set()


def test_nothing_more_is_granted() -> None:
    assert granted() - used() == set()


def test_our_resource_is_always_the_fully_qualified_one() -> None:
    endpoint_rules = [p for p in granted() if p[1].startswith("endpoints")]
    assert endpoint_rules and all(group == "bundleserve.dev" for group, _, _ in endpoint_rules)

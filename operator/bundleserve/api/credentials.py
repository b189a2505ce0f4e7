"""API keys scoped to namespaces, and the per-Endpoint key the gateway presents to a router.

The master keys file (the chart's API-key Secret, in the operator's namespace; read by the operator and the gateway):
one key per line, blank lines and `#` comments ignored, optionally followed by whitespace and a comma-separated list
of namespaces:

    k-team-a-1  team-a
    k-shared    team-a,team-b
    k-admin                      # no namespaces: a cluster-wide key, accepted by the gateway for every endpoint

What each kind reaches (docs/security.md):
- a namespace-scoped key opens the endpoints of its namespaces, at the gateway and at those endpoints' routers (the
  operator writes it into each of their Endpoints' credentials Secrets, in that namespace);
- a cluster-wide key opens every endpoint at the gateway only: it is never written into an Endpoint's namespace, so no
  pod outside the operator's namespace can read it;
- the gateway authenticates the client itself and calls the router with the endpoint's own *gateway key*, derived
  from the master file and the endpoint's namespace/name (HMAC-SHA256), which the operator writes next to the scoped
  keys. It opens that one endpoint and nothing else; changing the master file changes every derived key (rotation:
  the operator rewrites the Secrets on its next reconcile; routers read their keys at start, so restart them).

Errors: `KeysFileError` (a malformed line: a namespace that is not a DNS label), the message names the line number.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: A Kubernetes namespace name (a DNS label); also what an S3 namespace prefix may be (queue.s3results).
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
GATEWAY_KEY_PREFIX = "bsg_"


class KeysFileError(ValueError):
    """The keys file cannot be parsed; the message names the line (never the key)."""


def parse_namespaces(field: str, number: int) -> frozenset[str]:
    """The comma-separated namespace list after a key (this file's API keys, and the SageMaker dialect's SigV4 keys
    file, which uses the same syntax); KeysFileError naming line `number` when a name is not a DNS label."""
    names = [name.strip() for name in field.split(",") if name.strip()]
    if not names or any(not DNS_LABEL.match(name) for name in names):
        raise KeysFileError(f"line {number}: namespaces must be DNS labels, separated by commas")
    return frozenset(names)


@dataclass(frozen=True)
class ScopedKey:
    key: str
    #: None: cluster-wide (gateway only); else the namespaces the key opens.
    namespaces: frozenset[str] | None

    def reaches(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


@dataclass(frozen=True)
class KeysFile:
    keys: tuple[ScopedKey, ...]
    #: The material the gateway keys are derived from: a digest of the whole parsed file.
    secret: bytes

    @classmethod
    def parse(cls, text: str) -> KeysFile:
        found: list[ScopedKey] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            parts = raw.split()
            if not parts or parts[0].startswith("#"):
                continue
            comment = next((i for i, part in enumerate(parts) if part.startswith("#")), len(parts))
            parts = parts[:comment]
            if len(parts) > 2:
                raise KeysFileError(f"line {number}: expected `KEY [namespace,...]`, found more fields")
            scope = parse_namespaces(parts[1], number) if len(parts) == 2 else None
            found.append(ScopedKey(parts[0], scope))
        canonical = "\n".join(
            f"{item.key} {','.join(sorted(item.namespaces)) if item.namespaces is not None else '*'}"
            for item in sorted(found, key=lambda item: item.key)
        )
        return cls(tuple(found), hashlib.sha256(b"bundleserve gateway keys\0" + canonical.encode()).digest())

    def all_keys(self) -> frozenset[str]:
        return frozenset(item.key for item in self.keys)

    def for_namespace(self, namespace: str) -> list[str]:
        """The keys a router of `namespace` accepts from clients: scoped to it (cluster-wide keys never)."""
        return sorted(item.key for item in self.keys if item.namespaces is not None and namespace in item.namespaces)

    def gateway_key(self, namespace: str, name: str) -> str:
        """The key the gateway presents to the router of `namespace/name` (and that router alone accepts)."""
        mac = hmac.new(self.secret, f"{namespace}/{name}".encode(), hashlib.sha256).hexdigest()
        return GATEWAY_KEY_PREFIX + mac

    def router_file(self, namespace: str, name: str) -> str:
        """The keys file of one Endpoint's routers: its gateway key, then the keys scoped to its namespace."""
        return "".join(f"{key}\n" for key in [self.gateway_key(namespace, name), *self.for_namespace(namespace)])

    def namespaces_of(self, presented: bytes) -> frozenset[str] | None:
        """The namespaces a presented key opens: None for a cluster-wide key; an empty set for an unknown key.
        Compared in constant time against every key (the digest of the presented key, `hmac.compare_digest`)."""
        digest = hashlib.sha256(presented).digest()
        reached: set[str] = set()
        everywhere = False
        matched = False
        for item in self.keys:
            if hmac.compare_digest(digest, hashlib.sha256(item.key.encode()).digest()):
                matched = True
                if item.namespaces is None:
                    everywhere = True
                else:
                    reached |= item.namespaces
        if matched and everywhere:
            return None
        return frozenset(reached)


def plain_keys(keys: Iterable[str]) -> KeysFile:
    """A keys file of cluster-wide keys (local mode and tests that configure keys as a set)."""
    return KeysFile.parse("".join(f"{key}\n" for key in keys))

"""The gateway's registry of endpoints: name -> where its router is, which modes it serves, whether it is ready.

Two sources fill it: the cluster watch (`gateway.kube`, Endpoint resources) and local mode's plan (`bundleserve run`).
The gateway's handlers only read it; a source replaces entries whole, so a reader never sees half an update.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from bundleserve.api.endpoint import IMPLICIT_VARIANT, Endpoint, Mode
from bundleserve.api.errors import ModeNotServed, NotFound


@dataclass(frozen=True)
class VariantRoute:
    """One production variant of an endpoint: where its routers are and its weight in the split."""

    name: str
    weight: int
    #: Base URL of the variant's router(s): its own Service in a cluster, its local router in local mode.
    router_url: str


@dataclass(frozen=True)
class EndpointEntry:
    """One endpoint as the gateway knows it."""

    endpoint: Endpoint
    #: Base URL of the endpoint's router(s): the Service in a cluster, the local router's port in local mode (with
    #: variants: the Service in front of every variant's pods; the gateway sends to `variants` instead).
    router_url: str
    ready: bool = False
    #: Ready replicas as the Endpoint's status counts them (cluster); None where replicas are not counted (local mode,
    #: where `ready` is the router's own answer).
    ready_replicas: int | None = None
    #: The declared production variants (spec.variants); empty: one implicit variant at `router_url`.
    variants: tuple[VariantRoute, ...] = ()

    @functools.cached_property
    def routes(self) -> tuple[VariantRoute, ...]:
        """Where requests go, by variant (the implicit AllTraffic variant for an endpoint without variants); built
        once per entry (entries are replaced whole, never changed)."""
        return self.variants or (VariantRoute(IMPLICIT_VARIANT, 1, self.router_url),)

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def namespace(self) -> str:
        return self.endpoint.namespace

    @property
    def modes(self) -> list[Mode]:
        return list(self.endpoint.spec.modes)

    @property
    def max_payload_bytes(self) -> int:
        return self.endpoint.spec.invocation.max_payload_bytes

    def serves(self, mode: Mode) -> bool:
        return self.endpoint.spec.serves(mode)

    @property
    def at_zero(self) -> bool:
        """Known to have no ready replica: a call would find no router (the activator holds calls of endpoints that
        scale from zero until this turns false)."""
        return self.ready_replicas is not None and self.ready_replicas == 0

    def describe(self) -> dict[str, object]:
        """The public shape of `GET /v1/endpoints/{name}` (the SDK relies on name, modes, ready), with the declared
        production variants and their weights when there are any."""
        described: dict[str, object] = {
            "name": self.name,
            "modes": [mode.value for mode in self.modes],
            "ready": self.ready,
        }
        if self.variants:
            described["variants"] = [{"name": v.name, "weight": v.weight} for v in self.variants]
        return described


class Registry:
    """Endpoints by (namespace, name); clients address them by name alone (`find` says which one a shared name means)."""

    def __init__(self, entries: Iterable[EndpointEntry] = ()) -> None:
        #: name -> namespace -> entry: a request resolves its name with one dictionary lookup
        self._by_name: dict[str, dict[str, EndpointEntry]] = {}
        for entry in entries:
            self.put(entry)

    def put(self, entry: EndpointEntry) -> None:
        self._by_name.setdefault(entry.name, {})[entry.namespace] = entry

    def remove(self, namespace: str, name: str) -> None:
        namespaces = self._by_name.get(name)
        if namespaces is not None:
            namespaces.pop(namespace, None)
            if not namespaces:
                del self._by_name[name]

    def replace_all(self, entries: Iterable[EndpointEntry]) -> None:
        """A fresh listing (after a watch reconnect): entries that vanished meanwhile are dropped."""
        fresh = Registry(entries)
        self._by_name = fresh._by_name

    def entries(self) -> list[EndpointEntry]:
        everything = [entry for namespaces in self._by_name.values() for entry in namespaces.values()]
        return sorted(everything, key=lambda e: (e.name, e.namespace))

    def get(self, namespace: str, name: str) -> EndpointEntry | None:
        return self._by_name.get(name, {}).get(namespace)

    def find(self, name: str) -> EndpointEntry | None:
        """The entry a bare name means. Names are meant to be unique in the gateway's scope; when two namespaces use
        the same one, the older Endpoint keeps it (creationTimestamp, then namespace): creating a same-named Endpoint
        elsewhere must not take a name away from the one clients already call, nor make it ambiguous. The newer one
        is reached through its own router (or a key scoped to its namespace finds nothing by that name: 404)."""
        found = self._by_name.get(name)
        if not found:
            return None
        if len(found) == 1:  # the usual case: one namespace uses the name
            return next(iter(found.values()))
        return min(found.values(), key=lambda e: (e.endpoint.metadata.creation_timestamp or "~", e.namespace))

    def resolve(self, name: str, mode: Mode | None = None) -> EndpointEntry:
        """The entry for `name`, or the documented errors: NotFound (unknown), ModeNotServed (400)."""
        entry = self.find(name)
        if entry is None:
            raise NotFound(f"unknown endpoint {name!r}")
        if mode is not None:
            require_mode(entry, mode)
        return entry


def require_mode(entry: EndpointEntry, mode: Mode) -> None:
    """ModeNotServed (400) unless the endpoint serves `mode`."""
    if not entry.serves(mode):
        served = ", ".join(m.value for m in entry.modes)
        raise ModeNotServed(f"endpoint {entry.name!r} does not serve the {mode.value} mode (it serves: {served})")

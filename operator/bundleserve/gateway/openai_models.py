"""The OpenAI dialect's model directory on the gateway: every registered endpoint that declares `spec.openai`.

The dialect's routes (`dialects.openai.routes`) are the router's own; only where the models are differs. The gateway
checks the API key before reading the body, reads it under the largest limit of the endpoints that serve the API,
resolves `model` in its registry (404 model_not_found for an unknown name or an endpoint without the capability),
checks that endpoint's own limit, and hands the parsed call to the endpoint's router in one hop (`RouterHop`).
Readiness stays the router's to judge: no ready replica is a 503 from the hop (an endpoint that scales from zero waits
in the activator first: `Gateway.admit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from bundleserve.api.endpoint import InvocationSettings, Mode
from bundleserve.dialects.openai import render
from bundleserve.dialects.openai.routes import Target, model_card
from bundleserve.edge.errors import too_large
from bundleserve.gateway.forwarding import RouterHop
from bundleserve.gateway.proxy import read_capped

if TYPE_CHECKING:  # the gateway mounts this module (gateway.app imports it)
    from bundleserve.gateway.app import Gateway

#: The body limit when no endpoint declares the API (every model is then unknown: a 404 after reading).
_DEFAULT_LIMIT = InvocationSettings().max_payload_bytes


class GatewayModels:
    """`dialects.openai.routes.ModelDirectory` over the gateway's registry."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def authorize(self, authorization: str | None) -> None:
        self.gateway.gate(None, authorization, None)

    @property
    def max_body_bytes(self) -> int:
        """The largest limit of the endpoints that declare the API (each one's own is checked by `target`)."""
        limits = [entry.max_payload_bytes for entry in self.gateway.registry.entries() if entry.endpoint.spec.openai]
        return max(limits, default=_DEFAULT_LIMIT)

    async def read_body(self, request: web.Request) -> bytes:
        return await read_capped(request, self.max_body_bytes)

    def models(self) -> list[render.ModelCard]:
        # Only the endpoints the caller's key reaches (`authorize` ran first in this request).
        entries = [entry for entry in self.gateway.registry.entries() if self.gateway.in_scope(entry)]
        cards = (model_card(entry.endpoint) for entry in entries)
        return [card for card in cards if card is not None]

    def target(self, model: str, authorization: str | None, body_bytes: int) -> Target:
        gateway = self.gateway
        entry = gateway.registry.find(model)
        settings = None if entry is None else entry.endpoint.spec.openai
        if entry is None or settings is None:
            raise render.model_not_found(model)
        gateway.gate(model, authorization, Mode.STREAMING)  # the key again, and its namespaces (404 outside them)
        if body_bytes > entry.max_payload_bytes:
            raise too_large(body_bytes, entry.max_payload_bytes)
        target, _ = gateway.variant_entry(entry, None)  # a weighted pick among the endpoint's variants
        hop = RouterHop(gateway.pool, target, gateway.upstream_authorization(entry), gateway.admit)
        return Target(model, settings, hop, entry.max_payload_bytes)

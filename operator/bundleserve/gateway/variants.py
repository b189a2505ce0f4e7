"""Which production variant answers a request: the one it names, else a weighted pick (docs/operator.md,
"Production variants").

Pure: the random draw comes in as a number in [0, 1), so the split is tested without a network and the caller owns
the random source. A request names a variant with the native `X-Bundleserve-Variant` header or SageMaker's
TargetVariant; a name the endpoint does not have is refused (`UnknownVariant`, SageMaker's ValidationError), never
sent elsewhere.

Retries: a client's retries of one call carry the same idempotency key (`Idempotency-Key`, botocore's
`amz-sdk-invocation-id`), and the router (sync) or the queue (async) runs them once only when they reach the same
variant. So a call with a key draws from the key (`stable_draw`), not at random: every retry lands on the variant the
first attempt did, as long as the weights did not change in between. The answer names the variant that answered in `X-Bundleserve-Variant` (and the router's SageMaker
dialect in InvokedProductionVariant).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Mapping, Sequence

from bundleserve.api.errors import UnknownVariant
from bundleserve.api.invocation import IDEMPOTENCY_HEADER, SDK_INVOCATION_ID_HEADER
from bundleserve.api.variants import VARIANT_HEADER
from bundleserve.gateway.registry import VariantRoute

__all__ = ["VARIANT_HEADER", "pick_variant", "request_key", "stable_draw"]


def pick_variant(routes: Sequence[VariantRoute], requested: str | None, draw: float) -> VariantRoute:
    """The variant `requested` names, or for None the one whose cumulative weight band holds `draw` * the total
    weight (a variant with weight 0 is never picked by weight). `draw` is uniform in [0, 1)."""
    if requested is not None:
        for route in routes:
            if route.name == requested:
                return route
        known = ", ".join(route.name for route in routes)
        raise UnknownVariant(f"the endpoint has no production variant {requested!r} (it has: {known})")
    bounds = list(itertools.accumulate(route.weight for route in routes))
    if not bounds or bounds[-1] <= 0:  # the CRD refuses such a list; an entry from elsewhere gets the first
        return routes[0]
    return routes[bisect.bisect_right(bounds, draw * bounds[-1])]


def stable_draw(key: str) -> float:
    """A draw in [0, 1) that is the same for every call with `key` (uniform over keys: 64 bits of SHA-256)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def request_key(headers: Mapping[str, str]) -> str | None:
    """The idempotency key a request's retries share (either header), or None."""
    return headers.get(IDEMPOTENCY_HEADER) or headers.get(SDK_INVOCATION_ID_HEADER)

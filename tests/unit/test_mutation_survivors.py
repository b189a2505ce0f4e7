"""Behaviour that mutation testing (make mutation, docs/testing.md) showed no test pinned down.

Each test names the change it would notice: messages a user reads, the host bits of an operator's CIDR, a waiter
cancelled while a slot is being released, and every failed rule of an Endpoint reported at once.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from bundleserve.api.errors import Overloaded
from bundleserve.api.manifest import ManifestError, parse_endpoint
from bundleserve.outbound.destinations import AddressPolicy, parse_cidrs
from bundleserve.router.admission import AdmissionController


def test_admission_limits_are_checked_with_a_message_naming_both() -> None:
    for concurrency, queued in [(0, 0), (1, -1)]:
        with pytest.raises(ValueError, match=r"^concurrency must be >= 1 and max_queued >= 0$"):
            AdmissionController(concurrency=concurrency, max_queued=queued)


async def test_overloaded_names_the_limits_and_asks_to_retry_after_a_second() -> None:
    admission = AdmissionController(concurrency=3, max_queued=0)
    for _ in range(3):
        await admission.acquire()
    with pytest.raises(Overloaded) as refused:
        await admission.acquire()
    assert refused.value.message == "overloaded: 3 requests in the model and 0 queued"
    assert refused.value.headers == {"Retry-After": "1"}


async def test_a_waiter_cancelled_while_a_release_passes_over_it_leaves_cleanly() -> None:
    """The release skips the cancelled waiter (its future is done) before the waiter's own clean-up runs: the
    clean-up must then find nothing to remove, re-raise the cancellation and leak no slot."""
    admission = AdmissionController(concurrency=1, max_queued=1)
    await admission.acquire()
    waiting = asyncio.create_task(admission.acquire())
    for _ in range(3):
        await asyncio.sleep(0)
    assert admission.queued == 1
    waiting.cancel()  # cancels the waiter's future now; its except block runs on the next loop turn
    admission.release()  # pops the cancelled waiter, frees the slot
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (admission.in_model, admission.queued) == (0, 0)
    assert admission.try_acquire()


def test_an_operator_cidr_with_host_bits_means_its_network() -> None:
    (network,) = parse_cidrs("10.1.2.3/8", source="BUNDLESERVE_URL_BLOCK")
    assert network == ipaddress.ip_network("10.0.0.0/8")
    assert AddressPolicy(block=(network,), block_private=False).refusal("10.200.0.1") == "operator-blocked"


def test_every_failed_rule_of_an_endpoint_is_reported_in_one_message() -> None:
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": "two-faults"},
        "spec": {
            "modes": ["sync", "sync"],
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "m:f"}},
            "scaling": {"minReplicas": 3, "maxReplicas": 2},
        },
    }
    with pytest.raises(ManifestError) as caught:
        parse_endpoint(document, source="two-faults.yaml")
    assert (
        "spec.modes must not repeat a mode; spec.scaling.minReplicas must be less than or equal to "
        "spec.scaling.maxReplicas"
    ) in str(caught.value)

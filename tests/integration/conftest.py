"""Fixtures of the integration tier."""

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.cluster_fixtures import kube_cluster, kube_node
from tests.support.node_product import product

__all__ = ["http", "kube_cluster", "kube_node", "product"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client per test, for tests that talk to routers and models over loopback."""
    async with aiohttp.ClientSession() as session:
        yield session

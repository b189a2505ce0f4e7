"""Fixtures of the integration tier."""

from tests.support.k8s.fixtures import k8s_api

__all__ = ["k8s_api"]

"""The gateway's per-endpoint task services (`gateway.tasks.EndpointQueues.service`): built once per Endpoint
document, rebuilt when its settings change. No Redis is contacted: building a service opens no connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bundleserve.api.endpoint import Endpoint
from bundleserve.gateway import tasks
from bundleserve.gateway.registry import EndpointEntry
from bundleserve.queue.config import QueueConfig


def entry(**async_settings: Any) -> EndpointEntry:
    spec: dict[str, Any] = {"modes": ["async"], "bundle": {"image": "example.com/m:1", "python": {"entrypoint": "m:f"}}}
    if async_settings:
        spec["async"] = async_settings
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": "jobs", "namespace": "team-a"},
        "spec": spec,
    }
    return EndpointEntry(endpoint=Endpoint.model_validate(document), router_url="http://r")


async def test_a_service_is_built_once_per_document_and_again_when_its_settings_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    original = QueueConfig.from_endpoint

    def counting(endpoint: Endpoint, *args: Any, **kwargs: Any) -> QueueConfig:
        built.append(endpoint.name)
        return original(endpoint, *args, **kwargs)

    monkeypatch.setattr(tasks.QueueConfig, "from_endpoint", counting)
    queues = tasks.EndpointQueues("redis://127.0.0.1:1/0", results_dir=tmp_path)
    try:
        first = entry()
        service = queues.service(first)
        assert queues.service(first) is service and queues.service(first) is service
        assert built == ["jobs"]  # a request on the same document builds nothing

        assert queues.service(entry()) is service  # a new document with the same settings: the same service
        changed = queues.service(entry(requestTTLSeconds=120))
        assert changed is not service
        assert changed.queue.config.request_ttl_seconds == 120
        assert queues.service(first) is not changed  # back to the first settings: rebuilt for them
    finally:
        await queues.close()

"""The Launch dialect on the gateway: the tests of tests/integration/test_launch_dialect.py (a representative
subset: the unmodified scale-launch 0.3.3 client and model-engine's `/v1` routes) re-collected with `launch_target`
pointing at one gateway application in front of the two real routers, API keys on both (one key, as the chart mounts
one Secret in both). The gateway runs on its own event loop in a thread, so the client subprocesses can call it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import Registry
from tests.integration.test_launch_dialect import (  # noqa: F401 - the tests, re-collected against the gateway
    API_KEY,
    ASYNC,
    SYNC,
    LaunchTarget,
    _endpoint_file,
    launch_python,
    launch_routers,
    test_a_wrong_api_key_is_refused,
    test_an_unknown_endpoint_is_none,
    test_async_predict_and_future_get,
    test_async_predict_return_pickled,
    test_get_async_response_polls_to_the_result,
    test_get_async_response_reports_a_failure_and_a_pickled_result,
    test_get_model_endpoint_gives_the_endpoint_types,
    test_legacy_refusals,
    test_legacy_task_result_of_an_unknown_task_is_404,
    test_list_model_endpoints,
    test_list_model_endpoints_needs_the_api_key,
    test_sync_failure_carries_the_traceback,
    test_sync_predict_return_pickled_by_default,
    test_v1_async_task,
    test_v1_model_endpoints_by_name,
    test_v1_streaming_failure_mid_stream,
    test_v1_streaming_task,
    test_v1_sync_task,
    test_v1_sync_task_pickled,
    test_v1_unknown_task_and_endpoint,
    test_v1_wrong_mode_and_bad_body,
)
from tests.integration.test_sagemaker_on_gateway import ThreadedApp, entry_for
from tests.support.valkey import Valkey


@pytest.fixture(scope="module")
def launch_target(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[LaunchTarget]:
    directory = tmp_path_factory.mktemp("launch-gateway")
    with launch_routers(directory, valkey_server) as routers:
        modes = {SYNC: ["sync", "streaming", "async"], ASYNC: ["async"]}
        entries = [entry_for(_endpoint_file(directory, name, modes[name]), routers.url(name)) for name in modes]
        config = GatewayConfig(
            redis_url=valkey_server.url, api_keys=frozenset({API_KEY}), results_dir=Path(directory / "results")
        )
        app = ThreadedApp(build_gateway_app(Registry(entries), config))
        url = app.start()
        try:
            yield LaunchTarget(urls={SYNC: url, ASYNC: url}, api_key=API_KEY)
        finally:
            app.stop()

"""SageMaker Runtime and Launch against local mode (`bundleserve run` as a subprocess, every endpoint on one port):
a representative subset of the boto3 suite (signed with the key file of `sagemaker_env`, and unsigned) and of the
Launch suite (no API keys in local mode), re-collected here; and the ready line's boto3 and scale-launch examples,
run as printed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import http  # noqa: F401 - the aiohttp client fixture of the Launch tests
from tests.integration.test_launch_dialect import (  # noqa: F401 - the Launch tests, re-collected
    API_KEY,
    ASYNC,
    LAUNCH_PYTHON,
    SYNC,
    LaunchTarget,
    _endpoint_file,
    launch_python,
    test_async_predict_and_future_get,
    test_get_async_response_polls_to_the_result,
    test_get_async_response_reports_a_failure_and_a_pickled_result,
    test_get_model_endpoint_gives_the_endpoint_types,
    test_legacy_task_result_of_an_unknown_task_is_404,
    test_list_model_endpoints,
    test_sync_predict_return_pickled_by_default,
    test_v1_async_task,
    test_v1_streaming_task,
    test_v1_sync_task,
)
from tests.integration.test_sagemaker_boto3 import (  # noqa: F401 - the boto3 tests, re-collected
    ACCESS_KEY,
    NAME,
    REGION,
    SECRET_KEY,
    SageMakerTarget,
    runtime,
    sagemaker_env,
    signing,
    test_async_failure_is_written_to_the_failure_location,
    test_async_with_inline_body,
    test_bad_signatures_are_rejected,
    test_invoke_endpoint_with_json,
    test_response_stream_yields_payload_parts,
    test_unknown_endpoint_is_a_validation_error,
    write_endpoint_file,
)
from tests.support.local_mode import running_local_mode
from tests.support.processes import Server


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server, Path]]:
    directory = tmp_path_factory.mktemp("dialects-local")
    files = [
        write_endpoint_file(directory),  # first: the ready line's examples name it
        _endpoint_file(directory, SYNC, ["sync", "streaming", "async"]),
        _endpoint_file(directory, ASYNC, ["async"]),
    ]
    with running_local_mode(directory, files, env=sagemaker_env(directory)) as (url, server):
        yield url, server, directory


@pytest.fixture(scope="module")
def sagemaker_target(local_run: tuple[str, Server, Path]) -> SageMakerTarget:
    url, _, directory = local_run
    return SageMakerTarget(url, NAME, REGION, ACCESS_KEY, SECRET_KEY, directory)


@pytest.fixture(scope="module")
def launch_target(local_run: tuple[str, Server, Path]) -> LaunchTarget:
    url = local_run[0]
    return LaunchTarget(urls={SYNC: url, ASYNC: url}, api_key=API_KEY)  # local mode checks no key: any is fine


def _example(log: str, label: str) -> str:
    [line] = [line for line in log.splitlines() if line.strip().startswith(f"{label}:")]
    return line.split(f"{label}:", 1)[1].strip()


def test_the_ready_lines_boto3_example_works_as_printed(local_run: tuple[str, Server, Path]) -> None:
    code = _example(local_run[1].log(), "boto3")
    printed = subprocess.run(
        [sys.executable, "-c", f"{code.rsplit(';', 1)[0]}; print({code.rsplit(';', 1)[1]}['Body'].read())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == "b'{}'"


@pytest.mark.usefixtures("launch_python")  # installs the scale-launch environment when it is missing
def test_the_ready_lines_launch_example_works_as_printed(local_run: tuple[str, Server, Path]) -> None:
    code = _example(local_run[1].log(), "Launch")
    printed = subprocess.run(
        [str(LAUNCH_PYTHON), "-c", f"import launch; response = {code}; print(response.status, response.result)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == "SUCCESS {}"  # the example calls the endpoint: status and the model's answer

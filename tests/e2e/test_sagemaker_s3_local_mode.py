"""SageMaker's async contract on S3 against local mode (`bundleserve run` with BUNDLESERVE_RESULTS_URL=s3://...,
AWS_ENDPOINT_URL at a real S3-compatible server on loopback): the AsyncPredictor-style tests of
tests/integration/test_sagemaker_s3.py, re-collected. Local mode's gateway takes the submission and names the S3
objects; the endpoint's router reads the input object and writes the output or failure object."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_sagemaker_s3 import (  # noqa: F401 - the S3 tests, re-collected
    NAME,
    S3Target,
    moto,
    runtime,
    s3,
    s3_router_env,
    test_a_model_error_writes_the_failure_object,
    test_an_inline_body_also_gets_s3_locations,
    test_an_unusable_input_object_writes_the_failure_object,
    test_async_predictor_flow_with_an_s3_input,
    write_s3_endpoint_file,
)
from tests.support.local_mode import running_local_mode
from tests.support.s3 import S3Server


@pytest.fixture(scope="module")
def s3_target(tmp_path_factory: pytest.TempPathFactory, moto: S3Server) -> Iterator[S3Target]:  # noqa: F811
    directory = tmp_path_factory.mktemp("sagemaker-s3-local")
    files = [write_s3_endpoint_file(directory)]
    with running_local_mode(directory, files, env=s3_router_env(directory, moto)) as (url, _):
        yield S3Target(url, NAME, moto)

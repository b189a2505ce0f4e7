"""SigV4 keys scoped to namespaces (docs/security.md), with unmodified boto3: a real router process for an endpoint of
namespace team-a (the real bundle runtime behind it, a real valkey-server for its queue) and the gateway application
in front of it and of an endpoint of team-b.

A team-b key signs correctly, yet on team-a's endpoint it gets exactly what an unknown endpoint gets (SageMaker's
ValidationError, the name in the message and nothing else), through the gateway and straight at team-a's router; the
team-a key is accepted on both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

from bundleserve.api.credentials import KeysFile
from bundleserve.dialects.sagemaker import sigv4
from bundleserve.gateway.app import GatewayConfig, build_gateway_app
from bundleserve.gateway.registry import Registry
from tests.integration.test_router_fake_model import start_router
from tests.integration.test_sagemaker_boto3 import BUNDLE, REGION, SageMakerTarget, _client
from tests.integration.test_sagemaker_on_gateway import ThreadedGateway, entry_for
from tests.support.processes import Server, bundleserve, free_port, http_ok
from tests.support.valkey import Valkey
from tests.support.waiting import wait_until

KEY_A, SECRET_A = "AKIDTEAMA", "team-a/secret+key"
KEY_B, SECRET_B = "AKIDTEAMB", "team-b/secret+key"
NAME_A, NAME_B = "sm-team-a", "sm-team-b"


def _endpoint_file(directory: Path, name: str, namespace: str) -> Path:
    document = {
        "apiVersion": "bundleserve.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "modes": ["sync", "async"],
            "localOnly": True,
            "bundle": {"python": {"entrypoint": "sm_model:predict", "path": str(BUNDLE)}},
            "invocation": {"timeoutSeconds": 30, "concurrency": 1, "maxQueued": 0},
            "async": {"maxAttempts": 1, "invocationTimeoutSeconds": 30},
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory, valkey_server: Valkey) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("sagemaker-scoped")
    keys = directory / "sagemaker-keys"
    keys.write_text(f"# one key per team\n{KEY_A}:{SECRET_A} team-a\n{KEY_B}:{SECRET_B}   team-b\n")
    # API keys as the chart and operator set them up: the gateway holds the master file, team-a's router its own
    # file (its gateway key, then the keys scoped to team-a); the gateway hands verified calls on with the former.
    api_keys = KeysFile.parse("k-team-a team-a\nk-team-b team-b\n")
    router_keys = directory / "router-api-keys"
    router_keys.write_text(api_keys.router_file("team-a", NAME_A))
    signing_env = {"BUNDLESERVE_SAGEMAKER_REGION": REGION, "BUNDLESERVE_SAGEMAKER_KEYS_FILE": str(keys)}
    port = free_port()
    runtime_server = Server(
        bundleserve("bundle", "serve", "--entrypoint", "sm_model:predict", "--path", str(BUNDLE), "--port", str(port)),
        log_path=directory / "runtime.log",
    )
    router = None
    app = None
    try:
        file_a = _endpoint_file(directory, NAME_A, "team-a")
        file_b = _endpoint_file(directory, NAME_B, "team-b")
        env = {
            "BUNDLESERVE_RESULTS_DIR": str(directory / "results"),
            "BUNDLESERVE_REDIS_URL": valkey_server.url,
            "BUNDLESERVE_QUEUE_DURABILITY": "memory",
            "BUNDLESERVE_API_KEYS_FILE": str(router_keys),
            **signing_env,
        }
        router, router_url = start_router(directory, file_a, f"http://127.0.0.1:{port}", env=env)
        wait_until(lambda: http_ok(f"{router_url}/readyz"), timeout=30, what="team-a's router ready")
        entries = [
            entry_for(file_a, router_url),
            entry_for(file_b, f"http://127.0.0.1:{free_port()}", ready=False),  # async only: no router needed
        ]
        config = GatewayConfig(
            redis_url=valkey_server.url,
            results_dir=directory / "results",
            sagemaker_signing=sigv4.config_from_env(signing_env),
            keys_file=api_keys,
        )
        app = ThreadedGateway(build_gateway_app(Registry(entries), config))
        gateway_url = app.start()
        yield {"directory": directory, "gateway": gateway_url, "router": router_url}
    finally:
        if app is not None:
            app.stop()
        if router is not None:
            router.stop()
        runtime_server.stop()


def _client_for(url: str, directory: Path, key: str, secret: str) -> Any:
    return _client(SageMakerTarget(url, NAME_A, REGION, key, secret, directory), "signed")


def _refusal(client: Any, name: str, *, asynchronous: bool = False) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        if asynchronous:
            client.invoke_endpoint_async(EndpointName=name, InputLocation="s3://nowhere/input")
        else:
            client.invoke_endpoint(EndpointName=name, Body=b"{}", ContentType="application/json")
    error = caught.value.response
    return {
        "status": error["ResponseMetadata"]["HTTPStatusCode"],
        "code": error["Error"]["Code"],
        "message": error["Error"]["Message"].replace(name, "NAME"),
    }


@pytest.mark.parametrize("where", ["gateway", "router"])
def test_a_key_of_another_namespace_gets_the_unknown_endpoint_answer(scoped: dict[str, Any], where: str) -> None:
    url = scoped[where]
    team_b = _client_for(url, scoped["directory"], KEY_B, SECRET_B)
    refused = _refusal(team_b, NAME_A)
    assert refused == _refusal(team_b, "no-such-endpoint")
    assert refused["status"] == 400 and refused["code"] == "ValidationError"

    team_a = _client_for(url, scoped["directory"], KEY_A, SECRET_A)
    answer = team_a.invoke_endpoint(EndpointName=NAME_A, Body=json.dumps({"a": 1}), ContentType="application/json")
    assert json.loads(answer["Body"].read()) == {"a": 1}


def test_async_at_the_gateway_is_scoped_too(scoped: dict[str, Any]) -> None:
    """Async submissions go to the queue at the gateway, with no router: the scope is checked there as well."""
    directory = scoped["directory"]
    team_a = _client_for(scoped["gateway"], directory, KEY_A, SECRET_A)
    refused = _refusal(team_a, NAME_B, asynchronous=True)
    assert refused == _refusal(team_a, "no-such-endpoint", asynchronous=True)
    assert refused["code"] == "ValidationError"

    team_b = _client_for(scoped["gateway"], directory, KEY_B, SECRET_B)
    reply = team_b.invoke_endpoint_async(
        EndpointName=NAME_B, Body=json.dumps({"b": 2}).encode(), ContentType="application/json"
    )
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 202

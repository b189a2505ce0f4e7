"""SigV4 verification: the expected signatures come from botocore's own signer, never from a hand-written one."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bundleserve.api import credentials
from bundleserve.api.credentials import KeysFileError
from bundleserve.dialects.sagemaker import sigv4

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SIGNED_AT = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
CONFIG = sigv4.SigV4Config(region="us-east-1", keys={AKID: SECRET})


def _signed(
    monkeypatch: pytest.MonkeyPatch,
    *,
    url: str = "http://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/my-ep/invocations",
    body: bytes = b'{"x":1}',
    headers: dict[str, str] | None = None,
    secret: str = SECRET,
    region: str = "us-east-1",
    at: dt.datetime = SIGNED_AT,
) -> AWSRequest:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: at.replace(tzinfo=None))
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers=headers or {"Accept": "application/json", "Content-Type": "application/json"},
    )
    botocore.auth.SigV4Auth(Credentials(AKID, secret), "sagemaker", region).add_auth(request)
    return request


def _verify(
    request: AWSRequest, *, config: sigv4.SigV4Config = CONFIG, now: dt.datetime = SIGNED_AT, secure: bool = False
) -> sigv4.SignedRequest:
    parts = urlsplit(request.url)
    items = [(name, value.decode() if isinstance(value, bytes) else value) for name, value in request.headers.items()]
    if not any(name.lower() == "host" for name, _ in items):
        items.append(("Host", parts.netloc))
    items.append(("Content-Length", str(len(request.body or b""))))  # added after signing, as botocore's sender does
    headers = {name: value for name, value in items}
    lower = {name.lower(): value for name, value in items}
    signed = sigv4.parse_authorization(config, _Caseless(lower), now=now)
    assert signed is not None
    sigv4.verify_signature(
        config,
        signed,
        method=request.method,
        raw_path=parts.path,
        raw_query=parts.query,
        header_values=sigv4.request_header_values(list(headers.items())),
        body=request.body or b"",
        secure=secure,
    )
    return signed


class _Caseless(dict[str, str]):
    """A case-insensitive header view (aiohttp's headers are; a plain dict is not)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


def test_reference_vector_signature_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    request = _signed(monkeypatch)
    assert request.headers["X-Amz-Date"] == "20250102T030405Z"
    assert request.headers["Authorization"].endswith(
        "Signature=b20b92fcf7f44956f2a6eafd5e099daca02d99a6073c91217865927d68da6066"
    )
    _verify(request)


@pytest.mark.parametrize(
    ("url", "body", "headers"),
    [
        ("http://127.0.0.1:8123/endpoints/echo/invocations", b"\x00\xffbytes", {"Content-Type": "image/png"}),
        (
            "http://127.0.0.1:8123/endpoints/echo/async-invocations",
            b"",
            {"X-Amzn-SageMaker-InputLocation": "https://x/y"},
        ),
        ("http://[::1]:9/endpoints/a-b/invocations-response-stream?x=1&a=b", b"{}", {"X-Amzn-SageMaker-Accept": "a/b"}),
        ("http://h/endpoints/e/invocations", b"{}", {"X-Amzn-SageMaker-Custom-Attributes": "  spaced   value "}),
    ],
)
def test_botocore_signed_requests_verify(
    monkeypatch: pytest.MonkeyPatch, url: str, body: bytes, headers: dict[str, str]
) -> None:
    _verify(_signed(monkeypatch, url=url, body=body, headers=headers))


def test_a_changed_body_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    request = _signed(monkeypatch)
    request.data = b'{"x":2}'
    with pytest.raises(sigv4.SignatureRejected, match="does not match"):
        _verify(request)


def test_a_changed_signed_header_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    request = _signed(monkeypatch)
    request.headers.replace_header("Content-Type", "text/plain")
    with pytest.raises(sigv4.SignatureRejected):
        _verify(request)


def test_a_changed_path_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    request = _signed(monkeypatch)
    request.url = request.url.replace("my-ep", "other-ep")
    with pytest.raises(sigv4.SignatureRejected):
        _verify(request)


def test_the_wrong_secret_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(sigv4.SignatureRejected, match="does not match") as caught:
        _verify(_signed(monkeypatch, secret="not-the-secret"))
    assert SECRET not in str(caught.value)


def test_an_unknown_access_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    config = sigv4.SigV4Config(region="us-east-1", keys={"OTHERKEY": SECRET})
    with pytest.raises(sigv4.UnrecognizedClient):
        _verify(_signed(monkeypatch), config=config)


def test_another_region_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(sigv4.SignatureRejected, match="region"):
        _verify(_signed(monkeypatch, region="eu-west-1"))


@pytest.mark.parametrize("skew", [dt.timedelta(minutes=16), -dt.timedelta(minutes=16), dt.timedelta(days=2)])
def test_stale_or_future_dates_are_rejected(monkeypatch: pytest.MonkeyPatch, skew: dt.timedelta) -> None:
    with pytest.raises(sigv4.SignatureRejected, match="expired"):
        _verify(_signed(monkeypatch), now=SIGNED_AT + skew)


def test_small_clock_skew_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    _verify(_signed(monkeypatch), now=SIGNED_AT + dt.timedelta(minutes=14))


def test_unsigned_requests_need_explicit_permission() -> None:
    with pytest.raises(sigv4.MissingAuthenticationToken):
        sigv4.parse_authorization(CONFIG, _Caseless())
    allowing = sigv4.SigV4Config(region="us-east-1", keys={AKID: SECRET}, allow_unsigned=True)
    assert sigv4.parse_authorization(allowing, _Caseless()) is None


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250102/us-east-1/sagemaker/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250102/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250102/us-east-1/sagemaker/aws4_request, SignedHeaders=accept, "
        "Signature=00",
    ],
)
def test_malformed_authorization_is_rejected(authorization: str) -> None:
    headers = _Caseless({"authorization": authorization, "x-amz-date": "20250102T030405Z"})
    with pytest.raises(sigv4.SignatureRejected):
        sigv4.parse_authorization(CONFIG, headers, now=SIGNED_AT)


def test_config_from_env_reads_a_key_file_and_never_prints_secrets(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "keys"
    path.write_text(f"# team keys\n{AKID}:{SECRET}\n\nSECOND:other/secret+x\n")
    config = sigv4.config_from_env(
        {sigv4.ENV_KEYS_FILE: str(path), sigv4.ENV_REGION: "eu-central-1", sigv4.ENV_ALLOW_UNSIGNED: "false"}
    )
    assert dict(config.keys) == {AKID: SECRET, "SECOND": "other/secret+x"}
    assert config.region == "eu-central-1" and not config.allow_unsigned
    assert SECRET not in repr(config) and "other/secret" not in repr(config)


def test_key_file_lines_may_name_the_namespaces_their_key_opens() -> None:
    """The API keys file's syntax (api/credentials.py) after the secret: whitespace, then namespaces by commas."""
    keys = sigv4.parse_keys_file(f"{AKID}:{SECRET} team-a\nSHARED2:s3 \t team-a,team-b,\nADMIN:s4\n")
    assert keys[AKID] == sigv4.KeyEntry(SECRET, frozenset({"team-a"}))
    assert keys["SHARED2"].namespaces == frozenset({"team-a", "team-b"})
    assert keys["ADMIN"].namespaces is None and keys["ADMIN"].secret == "s4"
    assert SECRET not in repr(keys)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (f"{AKID}:{SECRET} Team_A", "DNS labels"),
        (f"{AKID}:{SECRET} ,", "DNS labels"),
        (f"{AKID}:{SECRET} team-a team-b", "ACCESS_KEY_ID:SECRET"),
        (f"{AKID}:{SECRET} team-a, team-b", "ACCESS_KEY_ID:SECRET"),
        (f"{AKID}:", "ACCESS_KEY_ID:SECRET"),
    ],
)
def test_a_bad_namespace_list_is_refused_naming_the_line(line: str, why: str) -> None:
    with pytest.raises(KeysFileError, match=f"line 2: .*{why}") as caught:
        sigv4.parse_keys_file(f"# comment\n{line}\n")
    assert SECRET not in str(caught.value)


def test_the_namespace_list_is_parsed_by_the_api_keys_code() -> None:
    """One parser for both files: what the API keys file refuses, the SigV4 key file refuses alike."""
    for names in ("team-a,team-b", "a,,b", "UPPER", "-x"):
        try:
            expected: object = credentials.parse_namespaces(names, 1)
        except KeysFileError:
            expected = KeysFileError
        try:
            got: object = sigv4.parse_keys_file(f"K:S {names}")["K"].namespaces
        except KeysFileError:
            got = KeysFileError
        assert got == expected


def test_config_scopes_file_keys_and_the_environment_pair_is_cluster_wide(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "keys"
    path.write_text(f"{AKID}:{SECRET} team-a,team-b\nADMIN:admin-secret\nENVKEY:old team-c\n")
    config = sigv4.config_from_env(
        {sigv4.ENV_KEYS_FILE: str(path), sigv4.ENV_ACCESS_KEY_ID: "ENVKEY", sigv4.ENV_SECRET_ACCESS_KEY: "new"}
    )
    assert config.scope_of(AKID) == frozenset({"team-a", "team-b"})
    assert config.scope_of("ADMIN") is None
    assert config.scope_of("ENVKEY") is None and config.keys["ENVKEY"] == "new"
    assert dict(config.keys)[AKID] == SECRET


def test_config_from_env_refuses_half_a_key_pair() -> None:
    with pytest.raises(ValueError, match="both"):
        sigv4.config_from_env({sigv4.ENV_ACCESS_KEY_ID: AKID})
    with pytest.raises(ValueError, match="line 1") as caught:
        sigv4.parse_keys_file(f"{SECRET}\n")
    assert SECRET not in str(caught.value)


def test_unsigned_payload_over_tls_verifies(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDKs may sign `UNSIGNED-PAYLOAD` over HTTPS (payload signing off) and say so in X-Amz-Content-SHA256."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: SIGNED_AT.replace(tzinfo=None))
    request = AWSRequest(method="POST", url="https://gw.example/endpoints/e/invocations", data=b"{}")
    request.context["payload_signing_enabled"] = False
    botocore.auth.SigV4Auth(Credentials(AKID, SECRET), "sagemaker", "us-east-1").add_auth(request)
    assert request.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    _verify(request, secure=True)
    request.headers.replace_header("X-Amz-Date", "20250102T030406Z")  # but every signed header still counts
    with pytest.raises(sigv4.SignatureRejected):
        _verify(request, secure=True)


def test_unsigned_payload_over_plain_http_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over plain HTTP an UNSIGNED-PAYLOAD signature would let anyone on the path swap the body (issue 17)."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: SIGNED_AT.replace(tzinfo=None))
    request = AWSRequest(method="POST", url="https://gw.example/endpoints/e/invocations", data=b'{"a": 1}')
    request.context["payload_signing_enabled"] = False
    botocore.auth.SigV4Auth(Credentials(AKID, SECRET), "sagemaker", "us-east-1").add_auth(request)
    request.data = b'{"a": 2}'  # swapped on the way: the signature does not cover it
    with pytest.raises(sigv4.SignatureRejected, match="UNSIGNED-PAYLOAD is accepted only over TLS"):
        _verify(request)
    request.data = b'{"a": 1}'  # even unswapped: over plain HTTP an unsigned payload is no signature of the body
    with pytest.raises(sigv4.SignatureRejected, match="UNSIGNED-PAYLOAD is accepted only over TLS"):
        _verify(request)


def test_boto3_sagemaker_runtime_signs_the_payload_over_plain_http() -> None:
    """Why refusing UNSIGNED-PAYLOAD over plain HTTP costs SageMaker users nothing: the real client signs the body."""
    import boto3
    from botocore.awsrequest import AWSResponse

    client = boto3.client(
        "sagemaker-runtime",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
    )
    sent: list[AWSRequest] = []

    def capture(request: AWSRequest, **_: object) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, _Raw(b"{}"))  # never sent

    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", capture)
    client.invoke_endpoint(EndpointName="e", Body=b'{"a": 1}', ContentType="application/json")
    assert sent and sent[0].headers.get("X-Amz-Content-SHA256") in (None, hashlib.sha256(b'{"a": 1}').hexdigest())
    _verify(sent[0], now=dt.datetime.now(dt.UTC))


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, *_: object, **__: object) -> list[bytes]:
        return [self.data]


def test_an_exact_replay_is_refused_and_a_new_signature_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = sigv4.ReplayGuard()
    first = {"amz-sdk-invocation-id": "call-1", "amz-sdk-request": "attempt=1; max=3"}
    guard.check(_verify(_signed(monkeypatch)), first)
    with pytest.raises(sigv4.SignatureReplayed):
        guard.check(_verify(_signed(monkeypatch)), first)  # the same request signed at the same second: identical
    with pytest.raises(sigv4.SignatureReplayed):  # another call's id (or none) under that signature: a replay
        guard.check(_verify(_signed(monkeypatch)), {"amz-sdk-invocation-id": "call-2", "amz-sdk-request": "attempt=1"})
    with pytest.raises(sigv4.SignatureReplayed):
        guard.check(_verify(_signed(monkeypatch)))
    guard.check(_verify(_signed(monkeypatch, body=b'{"x":2}')))  # a new signature


def test_a_retry_within_the_same_second_is_not_a_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore signs only content-type, host and X-Amz-Date: its retry in the same second has the same signature,
    and is told apart by the same invocation id with the next attempt number (each admitted once)."""
    guard = sigv4.ReplayGuard()
    signed = _verify(_signed(monkeypatch))
    guard.check(signed, {"amz-sdk-invocation-id": "call-1", "amz-sdk-request": "attempt=1; max=3"})
    guard.check(signed, {"amz-sdk-invocation-id": "call-1", "amz-sdk-request": "attempt=2; max=3"})
    with pytest.raises(sigv4.SignatureReplayed):
        guard.check(signed, {"amz-sdk-invocation-id": "call-1", "amz-sdk-request": "attempt=2; max=3"})
    for attempt in range(3, sigv4.MAX_ATTEMPTS + 1):
        guard.check(signed, {"amz-sdk-invocation-id": "call-1", "amz-sdk-request": f"attempt={attempt}"})
    with pytest.raises(sigv4.SignatureReplayed):
        guard.check(signed, {"amz-sdk-invocation-id": "call-1", "amz-sdk-request": "attempt=99"})


def test_the_replay_guard_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = sigv4.ReplayGuard(max_entries=3)
    signatures = [_verify(_signed(monkeypatch, body=b'{"n":%d}' % n)) for n in range(5)]
    for signed in signatures:
        guard.check(signed)
    assert len(guard._seen) <= 3
    with pytest.raises(sigv4.SignatureReplayed):
        guard.check(signatures[-1])


def test_a_non_ascii_authorization_is_a_401_not_a_crash() -> None:
    headers = _Caseless({"authorization": "AWS4-HMAC-SHA256 Credential=\udcff/x, SignedHeaders=host, Signature=\udcfe"})
    with pytest.raises(sigv4.IncompleteSignature):
        sigv4.parse_authorization(CONFIG, headers, now=SIGNED_AT)


def test_a_declared_payload_hash_must_match_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    request = _signed(monkeypatch, headers={"X-Amz-Content-SHA256": "0" * 64, "Content-Type": "application/json"})
    with pytest.raises(sigv4.SignatureRejected, match="X-Amz-Content-SHA256"):
        _verify(request)


def test_an_unconfigured_dialect_says_how_to_open_it() -> None:
    signed = _Caseless({"authorization": "AWS4-HMAC-SHA256 Credential=A/20250102/us-east-1/sagemaker/aws4_request"})
    for headers in (_Caseless(), signed):
        with pytest.raises(sigv4.MissingAuthenticationToken, match=sigv4.ENV_KEYS_FILE):
            sigv4.parse_authorization(sigv4.SigV4Config(), headers, now=SIGNED_AT)


def test_a_bad_key_file_names_its_variable_and_never_its_secrets(tmp_path: Path) -> None:
    """Read by a process's settings at start: the message says which variable to fix."""
    keys = tmp_path / "keys"
    keys.write_text("AKIDEXAMPLE:wJalrXUtnFEMI team-a,Not_A_Namespace\n")
    with pytest.raises(KeysFileError, match=sigv4.ENV_KEYS_FILE) as caught:
        sigv4.config_from_env({sigv4.ENV_KEYS_FILE: str(keys)})
    assert "wJalrXUtnFEMI" not in str(caught.value)
    with pytest.raises(ValueError, match=f"{sigv4.ENV_KEYS_FILE}: cannot read"):
        sigv4.config_from_env({sigv4.ENV_KEYS_FILE: str(tmp_path / "missing")})

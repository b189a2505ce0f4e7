"""Verification of AWS Signature Version 4 on incoming SageMaker Runtime requests.

An unmodified boto3 client signs every request with its access key (service `sagemaker`, the client's region). The
router or gateway holds the same keys (a Secret-mounted file, or the environment) and recomputes the signature; a
match proves the caller holds the secret and that method, path, signed headers and body were not altered. Requests
without a signature (boto3 with `signature_version=UNSIGNED`) pass only when the operator allowed them explicitly.

Verification is split in two so that a stranger cannot make us read a 6 MB body: `parse_authorization` checks
everything the headers alone decide (algorithm, scope, known key, clock skew) before the body is read, and
`verify_signature` checks the signature over the body afterwards. Secrets never appear in messages, logs or reprs.

Keys are scoped to namespaces like API keys (api/credentials.py, docs/security.md): a key file line may name the
namespaces its key opens (`ACCESS_KEY_ID:SECRET team-a,team-b`); `SigV4Config.scope_of` gives them to the gate, which
answers a call on any other namespace's endpoint as it answers an unknown endpoint. A key without namespaces (and the
environment's key pair) is cluster-wide: the chart gives SigV4 keys to the gateway only, and the operator passes none
to routers.

Errors: `SignatureRejected` and its subclasses (401/403 in AWS's shapes, protocol.py); `ValueError` for a bad
configuration (`KeysFileError`, a ValueError, for a malformed key file line; the message names the line, never the
secret).

Two refusals go beyond recomputing the signature (docs/dialects.md, "Signatures"):
- `UNSIGNED-PAYLOAD` is accepted only on a TLS connection to this server. Over plain HTTP it would let anyone on the
  path swap the body under a valid signature. Nothing a SageMaker user runs sends it: botocore's sagemaker-runtime
  operations sign the payload (no unsigned-body auth trait), over HTTP and HTTPS alike.
- An exact replay (the same signature again within the clock-skew window) is refused: `ReplayGuard` remembers the
  signatures it verified until they expire. botocore signs only content-type, host and X-Amz-Date (1 s resolution)
  of an InvokeEndpoint, so a retry sent within the same second as its previous attempt carries the same signature;
  it is told apart by its unsigned `amz-sdk-invocation-id` (the same as the first attempt's) and a new
  `amz-sdk-request: attempt=N`: each attempt number is admitted once per signature (at most `MAX_ATTEMPTS`), and
  the invocation id makes all of them one call that runs the model once (router.dedup).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import posixpath
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from bundleserve.api.credentials import KeysFileError, parse_namespaces
from bundleserve.api.errors import Unauthorized

SERVICE = "sagemaker"
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_CLOCK_SKEW_SECONDS = 15 * 60  # what AWS itself allows
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

# Configuration (docs/dialects.md, "SageMaker Runtime"): region, the key file, unsigned access.
ENV_REGION = "BUNDLESERVE_SAGEMAKER_REGION"
ENV_KEYS_FILE = "BUNDLESERVE_SAGEMAKER_KEYS_FILE"
ENV_ACCESS_KEY_ID = "BUNDLESERVE_SAGEMAKER_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "BUNDLESERVE_SAGEMAKER_SECRET_ACCESS_KEY"
ENV_ALLOW_UNSIGNED = "BUNDLESERVE_SAGEMAKER_ALLOW_UNSIGNED"
DEFAULT_REGION = "us-east-1"

_AUTH_FIELD = re.compile(r"\s*(Credential|SignedHeaders|Signature)\s*=\s*([^,\s]*)\s*")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


class SignatureRejected(Unauthorized):
    """A request whose SigV4 credentials are missing, unknown, stale or wrong. `aws_code` is AWS's error code for it."""

    aws_code: ClassVar[str] = "InvalidSignatureException"


class MissingAuthenticationToken(SignatureRejected):
    aws_code = "MissingAuthenticationTokenException"


class UnrecognizedClient(SignatureRejected):
    aws_code = "UnrecognizedClientException"


class IncompleteSignature(SignatureRejected):
    aws_code = "IncompleteSignatureException"


@dataclass(frozen=True)
class SigV4Config:
    """Who may call: `keys` maps access key id -> secret; `namespaces` maps the ids of namespace-scoped keys to the
    namespaces they open (an id absent from it is cluster-wide); `allow_unsigned` admits requests without a signature."""

    region: str = DEFAULT_REGION
    keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    namespaces: Mapping[str, frozenset[str]] = field(default_factory=dict)
    allow_unsigned: bool = False
    max_clock_skew_seconds: float = MAX_CLOCK_SKEW_SECONDS

    def __repr__(self) -> str:  # never print secrets
        return (
            f"SigV4Config(region={self.region!r}, access_keys={sorted(self.keys)!r}, "
            f"allow_unsigned={self.allow_unsigned!r})"
        )

    def scope_of(self, access_key_id: str) -> frozenset[str] | None:
        """The namespaces a (verified) access key opens; None: a cluster-wide key."""
        return self.namespaces.get(access_key_id)

    @property
    def open(self) -> bool:
        """True when nothing is checked (no keys and unsigned allowed)."""
        return not self.keys and self.allow_unsigned


@dataclass(frozen=True)
class KeyEntry:
    """One line of the key file: the secret (never in a repr) and the namespaces it opens (None: cluster-wide)."""

    secret: str = field(repr=False)
    namespaces: frozenset[str] | None = None


def parse_keys_file(text: str) -> dict[str, KeyEntry]:
    """`ACCESS_KEY_ID:SECRET [namespace,...]` per line; blank lines and `#` comments ignored. The namespace list has
    the API keys file's syntax (api/credentials.parse_namespaces). Errors never quote the secret."""
    keys: dict[str, KeyEntry] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not key_id.strip() or not 1 <= len(fields) <= 2:
            raise KeysFileError(f"SageMaker key file line {number}: expected ACCESS_KEY_ID:SECRET [namespace,...]")
        try:
            scope = parse_namespaces(fields[1], number) if len(fields) == 2 else None
        except KeysFileError as error:
            raise KeysFileError(f"SageMaker key file {error}") from None
        keys[key_id.strip()] = KeyEntry(fields[0], scope)
    return keys


def config_from_env(env: Mapping[str, str]) -> SigV4Config:
    """The dialect's signing configuration from a process's environment, read once by its settings (the key file is
    typically a mounted Secret). ValueError naming the variable for a bad value or an unreadable file."""
    keys: dict[str, str] = {}
    namespaces: dict[str, frozenset[str]] = {}
    if path := env.get(ENV_KEYS_FILE):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"{ENV_KEYS_FILE}: cannot read {path}: {error.strerror}") from None
        try:
            entries = parse_keys_file(text)
        except KeysFileError as error:
            raise KeysFileError(f"{ENV_KEYS_FILE} {path}: {error}") from None
        for file_key_id, entry in entries.items():
            keys[file_key_id] = entry.secret
            if entry.namespaces is not None:
                namespaces[file_key_id] = entry.namespaces
    key_id, secret = env.get(ENV_ACCESS_KEY_ID), env.get(ENV_SECRET_ACCESS_KEY)
    if bool(key_id) != bool(secret):
        raise ValueError(f"set both {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}, or neither")
    if key_id and secret:  # cluster-wide, like a file line without namespaces
        keys[key_id] = secret
        namespaces.pop(key_id, None)
    allow = env.get(ENV_ALLOW_UNSIGNED, "").strip().lower()
    if allow not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"{ENV_ALLOW_UNSIGNED} must be true or false, got {allow!r}")
    return SigV4Config(
        region=env.get(ENV_REGION) or DEFAULT_REGION,
        keys=keys,
        namespaces=namespaces,
        allow_unsigned=allow in ("1", "true", "yes"),
    )


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header, checked against the configuration."""

    access_key_id: str
    date: str  # yyyymmdd of the credential scope
    amz_date: str  # the X-Amz-Date header value
    signed_headers: tuple[str, ...]
    signature: str
    region: str


def parse_authorization(
    config: SigV4Config, headers: Mapping[str, str], *, now: dt.datetime | None = None
) -> SignedRequest | None:
    """Everything the headers decide, before the body is read. None: an unsigned request that the config admits.

    `headers` must be case-insensitive (aiohttp's CIMultiDictProxy is).
    """
    authorization = headers.get("Authorization")
    if authorization is None and config.allow_unsigned:
        return None
    if not config.keys:
        raise MissingAuthenticationToken(
            f"the SageMaker API of this server admits no one yet: configure access keys ({ENV_KEYS_FILE}) "
            f"or unsigned access ({ENV_ALLOW_UNSIGNED}=true)"
        )
    if authorization is None:
        raise MissingAuthenticationToken("Missing Authentication Token: this endpoint requires SigV4-signed requests")
    if not authorization.isascii():  # a signature is ASCII; other bytes are no credential (401, not an error)
        raise IncompleteSignature("malformed Authorization header")
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(f"unsupported authorization scheme; expected {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _AUTH_FIELD.fullmatch(part)
        if match is None:
            raise IncompleteSignature("malformed Authorization header")
        fields[match.group(1)] = match.group(2)
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise IncompleteSignature("Authorization needs Credential, SignedHeaders and Signature")
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or scope[3] != SERVICE:
        raise IncompleteSignature(f"credential scope must be KEY/DATE/REGION/{SERVICE}/aws4_request")
    key_id, date, region = scope[0], scope[1], scope[2]
    if key_id not in config.keys:
        raise UnrecognizedClient("The security token included in the request is invalid")
    if region != config.region:
        raise SignatureRejected(f"Credential should be scoped to a valid region ({config.region}), not {region!r}")
    amz_date = headers.get("X-Amz-Date")
    if amz_date is None:
        raise IncompleteSignature("a signed request needs an X-Amz-Date header")
    try:
        signed_at = dt.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=dt.UTC)
    except ValueError:
        raise IncompleteSignature("X-Amz-Date must look like 20250102T030405Z") from None
    if amz_date[:8] != date:
        raise SignatureRejected("the credential scope's date differs from X-Amz-Date")
    current = now or dt.datetime.now(dt.UTC)
    if abs((current - signed_at).total_seconds()) > config.max_clock_skew_seconds:
        raise SignatureRejected(
            f"Signature expired or not yet valid: {amz_date} is more than "
            f"{int(config.max_clock_skew_seconds // 60)} minutes from the server time"
        )
    signed_headers = tuple(fields["SignedHeaders"].split(";"))
    if "host" not in signed_headers or list(signed_headers) != sorted(signed_headers):
        raise IncompleteSignature("SignedHeaders must be sorted and include host")
    return SignedRequest(key_id, date, amz_date, signed_headers, fields["Signature"].lower(), region)


def canonical_uri(raw_path: str) -> str:
    """The path as AWS SDKs canonicalise it for every service but S3: dot segments removed, then URI-encoded again."""
    path = posixpath.normpath(raw_path) if raw_path not in ("", "/") else "/"
    if raw_path.endswith("/") and not path.endswith("/"):
        path += "/"
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return quote(path, safe="/~")


def canonical_query(raw_query: str) -> str:
    """Query parameters sorted by name then value, as sent (already URI-encoded by the client)."""
    if not raw_query:
        return ""
    pairs = []
    for item in raw_query.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        pairs.append((key, value))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


def _canonical_header_value(values: list[str]) -> str:
    return ",".join(" ".join(value.split()) for value in values)


def build_string_to_sign(
    signed: SignedRequest,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    header_values: Mapping[str, list[str]],
    payload_hash: str,
) -> str:
    """Canonical request -> string to sign, exactly as botocore's SigV4Auth builds them (pure, for tests too)."""
    lines = [f"{name}:{_canonical_header_value(header_values[name])}" for name in signed.signed_headers]
    canonical = "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            "\n".join(lines) + "\n",
            ";".join(signed.signed_headers),
            payload_hash,
        ]
    )
    scope = f"{signed.date}/{signed.region}/{SERVICE}/aws4_request"
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{signed.amz_date}\n{scope}\n{digest}"


def signature(secret: str, signed: SignedRequest, string_to_sign: str) -> str:
    """HMAC key chain AWS4+secret -> date -> region -> service -> aws4_request, then HMAC of the string to sign."""
    key = f"AWS4{secret}".encode()
    for part in (signed.date, signed.region, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_signature(
    config: SigV4Config,
    signed: SignedRequest,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    header_values: Mapping[str, list[str]],
    body: bytes,
    secure: bool = False,
) -> None:
    """Recompute the signature over the request and compare in constant time; raise SignatureRejected on mismatch.

    `header_values` maps lower-cased header names to all their values (in order). A signed header that is absent
    means the request was altered on the way. `secure`: the request came over TLS to this server, the only case in
    which a payload declared `UNSIGNED-PAYLOAD` is accepted (anywhere else its body could be swapped on the way).
    """
    missing = [name for name in signed.signed_headers if name not in header_values]
    if missing:
        raise IncompleteSignature(f"signed header(s) missing from the request: {', '.join(missing)}")
    body_hash = hashlib.sha256(body).hexdigest()
    # An SDK that does not sign the payload (payload signing off over TLS) says so in this header, as UNSIGNED-PAYLOAD.
    declared = header_values.get("x-amz-content-sha256")
    if declared is not None and declared[0] == UNSIGNED_PAYLOAD and not secure:
        raise SignatureRejected(
            "UNSIGNED-PAYLOAD is accepted only over TLS: over plain HTTP the signature must cover the body "
            "(the AWS SDKs' sagemaker-runtime clients sign it)"
        )
    if declared is not None and declared[0] not in (body_hash, UNSIGNED_PAYLOAD):
        raise SignatureRejected("X-Amz-Content-SHA256 does not match the body")
    payload_hash = declared[0] if declared is not None else body_hash
    string_to_sign = build_string_to_sign(
        signed,
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        header_values=header_values,
        payload_hash=payload_hash,
    )
    expected = signature(config.keys[signed.access_key_id], signed, string_to_sign)
    if not hmac.compare_digest(expected, signed.signature):
        raise SignatureRejected(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )


def request_header_values(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Lower-cased name -> values, from a request's raw header list (keeps repeated headers)."""
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name.lower(), []).append(value)
    return values


class SignatureReplayed(SignatureRejected):
    """The exact signature of a request already accepted: a replay (a retrying SDK signs every attempt anew)."""


#: Attempts of one call admitted under one signature (botocore's legacy mode makes 5; adaptive and custom configs more).
MAX_ATTEMPTS = 10
_ATTEMPT = re.compile(r"\s*attempt\s*=\s*(\d+)")


class ReplayGuard:
    """The signatures verified in the last clock-skew window, to refuse an exact replay.

    Bounded: at most `max_entries` signatures (64 bytes of hex each, about 150 bytes with their bookkeeping), the
    oldest forgotten first when full, so memory stays fixed whatever the request rate; a replay of a forgotten one
    passes (at the default bound that needs more than 100,000 signed requests within the window on one process).
    Per process: a replay sent to another replica of the router or gateway is not seen here (docs/dialects.md).
    """

    def __init__(self, window_seconds: float = MAX_CLOCK_SKEW_SECONDS, max_entries: int = 100_000) -> None:
        # a signature stays valid for the skew on either side of its X-Amz-Date: remember it twice as long
        self.window_seconds = 2 * window_seconds
        self.max_entries = max_entries
        #: signature -> (expiry, the call's amz-sdk-invocation-id, the attempt numbers admitted)
        self._seen: OrderedDict[str, tuple[float, str | None, set[int]]] = OrderedDict()

    def check(self, signed: SignedRequest, headers: Mapping[str, str] | None = None) -> None:
        """Record the (already verified) signature; raise SignatureReplayed if it was seen within the window, unless
        this is another attempt of the same call (same `amz-sdk-invocation-id`, an attempt number not seen yet)."""
        now = time.monotonic()
        seen = self._seen
        while seen:
            oldest, (expires, _, _) = next(iter(seen.items()))
            if expires > now and len(seen) < self.max_entries:
                break
            del seen[oldest]
        invocation = headers.get("amz-sdk-invocation-id") if headers is not None else None
        attempt = _attempt(headers.get("amz-sdk-request") if headers is not None else None)
        found = seen.get(signed.signature)
        if found is None:
            seen[signed.signature] = (now + self.window_seconds, invocation, {attempt} if attempt else set())
            return
        _, first_invocation, attempts = found
        if invocation is None or invocation != first_invocation or attempt is None or attempt in attempts:
            raise SignatureReplayed("this signed request was already received: a replayed request is refused")
        if len(attempts) >= MAX_ATTEMPTS:
            raise SignatureReplayed(f"more than {MAX_ATTEMPTS} attempts of one signed request: refused as a replay")
        attempts.add(attempt)


def _attempt(value: str | None) -> int | None:
    """N of `amz-sdk-request: attempt=N; max=M`, or None."""
    match = _ATTEMPT.match(value or "")
    return int(match.group(1)) if match else None

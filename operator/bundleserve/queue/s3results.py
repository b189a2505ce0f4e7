"""S3-compatible result storage: objects in a bucket under a prefix, fetched by clients through presigned GET URLs.

Chosen with `BUNDLESERVE_RESULTS_URL=s3://bucket/prefix`; credentials, region and endpoint (`AWS_ENDPOINT_URL` for
MinIO and other S3-compatible servers) come from boto3's standard environment. boto3 is blocking, so every call runs
in a thread: the worker loop never waits on S3. Failures surface as `OSError` (`StorageUnavailable`), the error
the `ResultStore` callers already handle for the filesystem store.

The same client also reads and writes objects named by `s3://` URLs (`S3Objects`), for SageMaker's async contract:
the InputLocation object a client uploaded, and the output and failure objects the worker writes under the
endpoint's S3OutputPath / S3FailurePath (`output_url`, `failure_url`). Errors there: an input that is missing or
unreadable is the client's mistake (`InvalidRequest`, 400), one over the limit `PayloadTooLarge` (413), S3 itself
failing `Unavailable` (503, the task is retried) on reads and `StorageUnavailable` on writes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from bundleserve.api.credentials import DNS_LABEL
from bundleserve.api.errors import InvalidRequest, PayloadTooLarge, Unavailable
from bundleserve.queue.results import DEFAULT_TTL_SECONDS, ResultStore, check_key

#: S3 refuses presigned URLs (SigV4) valid for longer than 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: User metadata (`x-amz-meta-…`) holding the expiry as Unix seconds; `get` and `cleanup_expired` honour it.
EXPIRES_AT_METADATA = "bundleserve-expires-at"
_DELETE_BATCH = 1000  # DeleteObjects' limit


class ResultsUrlError(ValueError):
    """`BUNDLESERVE_RESULTS_URL` is unusable (not `s3://bucket[/prefix]`, or boto3 missing); the message says why."""


class StorageUnavailable(OSError):
    """An S3 call failed (network, credentials, throttling); callers treat it like a filesystem error."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    #: "" or a prefix ending with "/".
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ResultsUrlError(f"BUNDLESERVE_RESULTS_URL must look like s3://bucket/prefix, got {url!r}")
        prefix = parts.path.strip("/")
        return cls(bucket=parts.netloc, prefix=f"{prefix}/" if prefix else "")

    def key(self, name: str) -> str:
        return f"{self.prefix}{check_key(name)}"

    def within(self, namespace: str) -> S3Location:
        """The namespace's own prefix under this one, `<prefix><namespace>/`: every object bundleserve writes for
        an endpoint lies under it, so an admin can give each namespace a credential limited to it."""
        if not DNS_LABEL.fullmatch(namespace):
            raise ValueError(f"{namespace!r} is not a namespace name")
        return S3Location(self.bucket, f"{self.prefix}{namespace}/")


#: The object names SageMaker gives an async invocation's output and failure under the configured paths.
OUTPUT_SUFFIX = ".out"
FAILURE_SUFFIX = "-error.out"
_S3_URL = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/.*)?")


@dataclass(frozen=True)
class S3Url:
    """One object (or, for a path, a prefix) named by an `s3://bucket/key` URL."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        match = _S3_URL.fullmatch(url)
        if match is None:
            raise InvalidRequest(f"{url!r} is not an s3://bucket/key URL")
        return cls(match.group(1), (match.group(2) or "/")[1:])

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _object_under(path: str, name: str) -> str:
    location = S3Url.parse(path)
    prefix = location.key if not location.key or location.key.endswith("/") else f"{location.key}/"
    return S3Url(location.bucket, f"{prefix}{name}").url


def output_url(path: str, task_id: str) -> str:
    """Where a task's result goes under an S3OutputPath: `<path>/<task id>.out`, as SageMaker names it."""
    return _object_under(path, f"{check_key(task_id)}{OUTPUT_SUFFIX}")


def failure_url(path: str, task_id: str) -> str:
    """Where a task's failure goes under an S3FailurePath: `<path>/<task id>-error.out`, as SageMaker names it."""
    return _object_under(path, f"{check_key(task_id)}{FAILURE_SUFFIX}")


def require_boto3() -> None:
    """Fail at start, not at the first result, when S3 storage is configured without boto3 installed."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise ResultsUrlError(
            "BUNDLESERVE_RESULTS_URL is an s3:// URL but boto3 is not installed (install bundleserve[s3])"
        ) from None


def endpoint_from_env(env: Mapping[str, str]) -> str | None:
    """The S3-compatible server's URL, as boto3 names it (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`); None: AWS.
    Read by a process's settings, once."""
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def make_client(endpoint: str | None = None) -> Any:
    """An S3 client from boto3's standard configuration (credentials, region); `endpoint`: an S3-compatible server
    (`endpoint_from_env`), reached with path-style addressing (such servers rarely have per-bucket DNS names)."""
    require_boto3()
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint else "auto"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _is_missing(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


def _expires_at(metadata: Mapping[str, str]) -> float | None:
    try:
        return float(metadata[EXPIRES_AT_METADATA])
    except (KeyError, ValueError):
        return None


class S3Objects:
    """Objects by `s3://` URL through one configured client (SageMaker's input, output and failure objects)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def read(self, url: str, *, max_bytes: int) -> tuple[bytes, bytes]:
        """(bytes, content type) of the object, within `max_bytes` (the same limit as an inline body)."""
        return await asyncio.to_thread(self._read, S3Url.parse(url), max_bytes)

    def _read(self, location: S3Url, max_bytes: int) -> tuple[bytes, bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            found = self.client.get_object(Bucket=location.bucket, Key=location.key)
        except ClientError as error:
            code = str((getattr(error, "response", None) or {}).get("Error", {}).get("Code", ""))
            if _is_missing(error) or code == "NoSuchBucket":
                raise InvalidRequest(f"the input object {location.url} does not exist") from None
            if code in ("AccessDenied", "403", "Forbidden"):
                raise InvalidRequest(f"the input object {location.url} cannot be read: access denied") from None
            raise Unavailable(f"reading {location.url} failed: {code or error}", headers={"Retry-After": "1"}) from None
        except BotoCoreError as error:
            raise Unavailable(f"reading {location.url} failed: {error}", headers={"Retry-After": "1"}) from None
        body = found["Body"]
        try:
            if int(found.get("ContentLength") or 0) > max_bytes:
                raise PayloadTooLarge(f"the input object is larger than the limit of {max_bytes} bytes")
            data: bytes = body.read(max_bytes + 1)
        finally:
            body.close()
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"the input object is larger than the limit of {max_bytes} bytes")
        content_type = str(found.get("ContentType") or "application/octet-stream")
        return data, content_type.encode("latin-1")

    async def write(self, url: str, data: bytes, content_type: str) -> None:
        """Put one object; `StorageUnavailable` when S3 refuses or cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        location = S3Url.parse(url)
        try:
            await asyncio.to_thread(
                self.client.put_object, Bucket=location.bucket, Key=location.key, Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as error:
            raise StorageUnavailable(f"writing {location.url} failed: {error}") from None


def objects_of(store: ResultStore | None) -> S3Objects | None:
    """The S3 object access of a deployment whose result store is S3 (None: no S3 configured, http(s) only)."""
    return S3Objects(store.client) if isinstance(store, S3ResultStore) else None


class S3ResultStore:
    """A `ResultStore` in an S3 bucket: `result_url` is a presigned GET URL, valid for the result's TTL (at most 7 days).

    The expiry is object metadata, checked by `get` and enforced by `cleanup_expired`; a bucket lifecycle rule on
    the prefix is the cheaper way to delete at scale (see docs/async.md).

    `root` is the configured `s3://bucket/prefix`; `location`, where this store reads and writes, is the namespace's
    prefix under it (`for_namespace`: every router's and every gateway task service's store), or the root itself
    for a store not bound to a namespace (docs/security.md, "S3 prefixes per namespace").
    """

    def __init__(
        self,
        location: S3Location,
        *,
        client: Any = None,
        default_ttl_seconds: float = DEFAULT_TTL_SECONDS,
        namespace: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.root = location
        self.location = location if namespace is None else location.within(namespace)
        self.client = make_client(endpoint) if client is None else client
        self.default_ttl_seconds = default_ttl_seconds

    def for_namespace(self, namespace: str) -> S3ResultStore:
        """The same bucket, client and TTL, reading and writing under `<prefix><namespace>/`."""
        return S3ResultStore(
            self.root, client=self.client, default_ttl_seconds=self.default_ttl_seconds, namespace=namespace
        )

    def url_for(self, task_id: str) -> str:
        """Signing is local computation (no request), so this stays synchronous like the protocol wants."""
        expires_in = max(1, min(int(self.default_ttl_seconds), MAX_PRESIGN_SECONDS))
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.location.bucket, "Key": self.location.key(task_id)},
            ExpiresIn=expires_in,
        )
        return url

    async def _call(self, method: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self.client, method), **params)
        except ClientError as error:
            if _is_missing(error):
                raise
            raise StorageUnavailable(f"S3 {method} failed: {error}") from None
        except BotoCoreError as error:
            raise StorageUnavailable(f"S3 {method} failed: {error}") from None

    async def put(self, key: str, data: bytes, content_type: str, *, ttl_seconds: float | None = None) -> None:
        ttl = self.default_ttl_seconds if ttl_seconds is None else ttl_seconds
        expires_at = time.time() + ttl
        await self._call(
            "put_object",
            Bucket=self.location.bucket,
            Key=self.location.key(key),
            Body=data,
            ContentType=content_type,
            Expires=datetime.fromtimestamp(expires_at, UTC),
            Metadata={EXPIRES_AT_METADATA: f"{expires_at:.3f}"},
        )

    async def get(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            found = await self._call("get_object", Bucket=self.location.bucket, Key=self.location.key(key))
        except ClientError:  # only "missing" gets here; other failures are StorageUnavailable
            return None
        body = found["Body"]
        try:
            expires_at = _expires_at(found.get("Metadata") or {})
            if expires_at is not None and expires_at <= time.time():
                return None
            data: bytes = await asyncio.to_thread(body.read)
        finally:
            body.close()
        return data, str(found.get("ContentType") or "application/octet-stream")

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Bucket=self.location.bucket, Key=self.location.key(key))

    async def cleanup_expired(self) -> int:
        """Delete the prefix's expired objects; returns how many. One HEAD per object: prefer a lifecycle rule at scale."""
        return await asyncio.to_thread(self._cleanup, time.time())

    def _cleanup(self, now: float) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            expired = [key for key in self._keys() if self._expired(key, now)]
            for start in range(0, len(expired), _DELETE_BATCH):
                batch = expired[start : start + _DELETE_BATCH]
                self.client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
        except (BotoCoreError, ClientError) as error:
            raise StorageUnavailable(f"S3 cleanup failed: {error}") from None
        return len(expired)

    def _keys(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.location.prefix
        )
        for page in pages:
            for item in page.get("Contents", ()):
                yield str(item["Key"])

    def _expired(self, key: str, now: float) -> bool:
        """Only objects this store wrote (they carry the expiry metadata) are ever deleted."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=key)
        except ClientError as error:
            if _is_missing(error):
                return False
            raise
        expires_at = _expires_at(head.get("Metadata") or {})
        return expires_at is not None and expires_at <= now

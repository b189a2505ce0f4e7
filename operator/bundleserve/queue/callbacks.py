"""Completion callbacks: POST `{"task_id", "status", "result"|"result_url", "traceback"}` to the task's callback URL.

The worker delivers through the durable outbox (`outbox.CallbackOutbox`), one `CallbackSender.attempt` per claimed
job, off the task path (the result is already stored), so a slow or dead target never holds a worker slot and a
crashed router loses no callback. Attempts are bounded, spaced by exponential backoff with full jitter; the
outcome (`callback_status` delivered|failed, attempts, last error) is written on the task record. Credentials come
from the request (`callback_auth`) or from the endpoint's Secret, mounted as files; they are never logged.

A callback URL is a destination the client chose, so it passes the same destination guard as url inputs
(`bundleserve.outbound`: refused address classes, connections pinned to the checked address), redirects are never
followed (a 3xx is a permanent failure), and credentials travel only over https unless the operator opts in
(BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS=true).
"""

from __future__ import annotations

import base64
import logging
import random
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from bundleserve.api.errors import InvalidRequest
from bundleserve.api.invocation import CALLBACK_SECRET_DIR, CALLBACK_SECRET_DIR_ENV, CallbackAuthRequest
from bundleserve.outbound.connector import BlockedDestination, check_literal_host, guarded_connector
from bundleserve.outbound.destinations import AddressPolicy
from bundleserve.queue.tasks import CallbackTarget

log = logging.getLogger(__name__)

#: Where the router finds the endpoint's callback Secret (keys username/password or tls.crt/tls.key).
#: Opt-in to send callback credentials over plain http (default: https required when credentials are attached).
INSECURE_CREDENTIALS_ENV = "BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS"


#: A CA bundle (PEM file) callback destinations' certificates are checked against, besides the system's.
CA_FILE_ENV = "BUNDLESERVE_CALLBACK_CA_FILE"


def insecure_credentials_allowed(env: Mapping[str, str]) -> bool:
    """BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS; ValueError naming it for a value that is not a boolean."""
    raw = env.get(INSECURE_CREDENTIALS_ENV, "").strip().lower()
    if raw not in {"", "0", "false", "no", "1", "true", "yes"}:
        raise ValueError(f"{INSECURE_CREDENTIALS_ENV} must be true or false, got {raw!r}")
    return raw in {"1", "true", "yes"}


@dataclass(frozen=True)
class CallbackSettings:
    """How a process sends callbacks, read once by its settings (`from_env`: a pure function of the mapping)."""

    #: Credentials may go over plain http (BUNDLESERVE_CALLBACK_ALLOW_INSECURE_CREDENTIALS; local mode only).
    allow_insecure_credentials: bool = False
    #: Extra CA bundle for the destinations' certificates (BUNDLESERVE_CALLBACK_CA_FILE; None: the system's).
    ca_file: str | None = None
    #: Where the endpoint's callback Secret is mounted (BUNDLESERVE_CALLBACK_SECRET_DIR, set by the operator).
    secret_dir: Path = Path(CALLBACK_SECRET_DIR)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CallbackSettings:
        return cls(
            allow_insecure_credentials=insecure_credentials_allowed(env),
            ca_file=env.get(CA_FILE_ENV, "").strip() or None,
            secret_dir=Path(env.get(CALLBACK_SECRET_DIR_ENV, "").strip() or CALLBACK_SECRET_DIR),
        )


def check_callback_target(
    url: str, auth: CallbackAuthRequest | None, policy: AddressPolicy, *, allow_insecure_credentials: bool
) -> None:
    """The checks a callback target can fail before any connection: InvalidRequest with the reason (400 at submit).

    Host names are checked again on every connection by the guarded resolver (a name may resolve anywhere later)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidRequest(f"callback_url scheme {scheme!r} is not allowed (allowed: http, https)")
    if not parts.hostname:
        raise InvalidRequest("callback_url must be an absolute URL with a host")
    if auth is not None and scheme != "https" and not allow_insecure_credentials:
        raise InvalidRequest(f"callback credentials are sent only over https (set {INSECURE_CREDENTIALS_ENV} to allow)")
    check_literal_host(URL(url).raw_host or "", policy, what="callback")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0
    timeout_seconds: float = 10.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))] (spreads a burst of retries apart)."""
        return random.uniform(0, min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    attempts: int
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "callback_status": "delivered" if self.delivered else "failed",
            "callback_attempts": self.attempts,
            "callback_error": self.error or "",
        }


@dataclass(frozen=True)
class Attempt:
    """The result of one delivery attempt: `retryable` is False for a success or a permanent 4xx."""

    delivered: bool
    retryable: bool
    error: str | None = None


def auth_from_secret_dir(kind: str, root: Path) -> CallbackAuthRequest | None:
    """The endpoint's default callback credentials from its mounted Secret (`CallbackSettings.secret_dir`); None when
    not mounted."""
    try:
        if kind == "basic":
            return CallbackAuthRequest(
                kind="basic",
                username=(root / "username").read_text().strip(),
                password=(root / "password").read_text().strip(),
            )
        return CallbackAuthRequest(kind="mtls", cert=(root / "tls.crt").read_text(), key=(root / "tls.key").read_text())
    except FileNotFoundError:
        return None


def _ssl_context(auth: CallbackAuthRequest, ca_file: str | None) -> ssl.SSLContext:
    """A client context presenting the PEM certificate and key (ssl only loads them from files: a private temp dir)."""
    context = ssl.create_default_context(cafile=ca_file)
    with tempfile.TemporaryDirectory(prefix="bundleserve-mtls-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_text(auth.cert or "")
        key.touch(mode=0o600)
        key.write_text(auth.key or "")
        context.load_cert_chain(cert, key)
    return context


#: The callback error of every failure below HTTP.
NO_HTTP_ANSWER = "no HTTP answer from the callback destination"


class CallbackSender:
    """One delivery attempt at a time (`attempt`); the durable outbox decides when, and how often, to try.

    Owns its HTTP session, made with the guarded connector, so no callback can bypass the destination guard."""

    def __init__(
        self,
        *,
        policy: RetryPolicy | None = None,
        destinations: AddressPolicy | None = None,
        allow_insecure_credentials: bool = False,
        ca_file: str | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.destinations = AddressPolicy() if destinations is None else destinations
        self.allow_insecure_credentials = allow_insecure_credentials
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def attempt(self, target: CallbackTarget, body: dict[str, Any]) -> Attempt:
        """One POST (the durable outbox schedules the retries); never raises for a network or HTTP failure."""
        try:
            check_callback_target(
                target.url, target.auth, self.destinations, allow_insecure_credentials=self.allow_insecure_credentials
            )
        except InvalidRequest as refused:
            return Attempt(False, False, refused.message)
        try:
            headers, ssl_context = self._transport(target)
        except (ssl.SSLError, OSError, ValueError) as bad:
            return Attempt(False, False, f"invalid client certificate: {type(bad).__name__}")
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_seconds)
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=guarded_connector(self.destinations))
        try:
            async with self._session.post(
                target.url, json=body, headers=headers, ssl=ssl_context, timeout=timeout, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return Attempt(True, False)
                if 300 <= response.status < 400:
                    return Attempt(False, False, f"HTTP {response.status}: callback redirects are not followed")
                permanent = 400 <= response.status < 500 and response.status not in (408, 425, 429)
                return Attempt(False, not permanent, f"HTTP {response.status}")
        except TimeoutError:
            return Attempt(False, True, f"timed out after {self.policy.timeout_seconds} s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedDestination):
                return Attempt(False, False, f"callback destination refused: {exc.os_error.reason} address")
            return Attempt(False, True, NO_HTTP_ANSWER)
        except (aiohttp.ClientError, OSError):
            # One text whether the port was closed, open but not HTTP, or dropped the connection: the recorded error
            # (in the task's status) must not map what the guard lets through.
            return Attempt(False, True, NO_HTTP_ANSWER)

    def _transport(self, target: CallbackTarget) -> tuple[dict[str, str], ssl.SSLContext | bool]:
        auth = target.auth
        headers = {}
        if auth is not None and auth.kind == "basic":
            token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        ssl_context: ssl.SSLContext | bool = _ssl_context(auth, self._ca_file) if auth and auth.kind == "mtls" else True
        if ssl_context is True and self._ca_file and target.url.startswith("https:"):
            ssl_context = ssl.create_default_context(cafile=self._ca_file)
        return headers, ssl_context

"""Settings every server process (router and gateway) reads the same way from its environment, at start only.

One Secret and one store configure both: the API keys file, the url-input guard (`BUNDLESERVE_URL_*`), the result
store and the connection deadlines mean the same on a router and on the gateway. Each process's composition root
(`router.settings.build_settings`, `gateway.settings.config_from_env`, `local.runner.LocalSettings`) calls these
once, with the process's environment; these functions never read it themselves, and nothing here runs on a request
path. A bad value is a `ConfigError` whose message names the variable, before anything
listens.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bundleserve.api.credentials import KeysFile, KeysFileError
from bundleserve.outbound.destinations import DEFAULT_BLOCKED, AddressPolicy, parse_cidrs

DEFAULT_URL_SCHEMES = ("http", "https")
DEFAULT_RESULTS_DIR = Path("/var/lib/bundleserve/results")
#: Allow loopback destinations for url inputs and callbacks (local mode turns it on; never in a cluster).
ALLOW_LOOPBACK_ENV = "BUNDLESERVE_ALLOW_LOOPBACK"


class ConfigError(ValueError):
    """The process cannot start with this configuration; the message says why in one line."""


def read_keys_file(path: Path) -> KeysFile:
    """The keys file (api/credentials.py: one key per line, optionally followed by the namespaces it opens); blank
    lines and `#` comments ignored. The keys themselves are never logged."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the API keys file {path}: {error.strerror}") from None
    try:
        found = KeysFile.parse(text)
    except KeysFileError as error:
        raise ConfigError(f"the API keys file {path}: {error}") from None
    if not found.keys:
        raise ConfigError(f"the API keys file {path} holds no key")
    return found


def read_api_keys(path: Path) -> frozenset[str]:
    """Every key of the file (a router's file, written by the operator, holds exactly the keys it accepts)."""
    return read_keys_file(path).all_keys()


def check_results_url(url: str) -> None:
    """An unusable S3 result store fails the start (bad URL, boto3 missing), not the first pickled result."""
    from bundleserve.queue.s3results import ResultsUrlError, S3Location, require_boto3

    try:
        S3Location.parse(url)
        require_boto3()
    except ResultsUrlError as error:
        raise ConfigError(str(error)) from None


def parse_url_schemes(raw: str | None) -> frozenset[str]:
    """BUNDLESERVE_URL_SCHEMES (comma-separated) for every edge that accepts `url` inputs (router, gateway)."""
    if not raw:
        return frozenset(DEFAULT_URL_SCHEMES)
    return frozenset(s.strip().lower() for s in raw.split(",") if s.strip())


def read_url_policy(env: Mapping[str, str]) -> AddressPolicy:
    """The destination guard for `url` inputs; a bad CIDR or flag fails the start, naming the variable."""
    flag = env.get("BUNDLESERVE_URL_BLOCK_PRIVATE", "").strip().lower()
    if flag not in {"", "0", "false", "no", "1", "true", "yes"}:
        raise ConfigError(f"BUNDLESERVE_URL_BLOCK_PRIVATE must be true or false, got {flag!r}")
    loopback = env.get(ALLOW_LOOPBACK_ENV, "").strip().lower()
    if loopback not in {"", "0", "false", "no", "1", "true", "yes"}:
        raise ConfigError(f"{ALLOW_LOOPBACK_ENV} must be true or false, got {loopback!r}")
    # local mode: models, url inputs and callback receivers all live on this machine
    extra_allow = ",".join(DEFAULT_BLOCKED["loopback"]) if loopback in {"1", "true", "yes"} else ""
    try:
        return AddressPolicy(
            block=parse_cidrs(env.get("BUNDLESERVE_URL_BLOCK", ""), source="BUNDLESERVE_URL_BLOCK"),
            allow=parse_cidrs(env.get("BUNDLESERVE_URL_ALLOW", ""), source="BUNDLESERVE_URL_ALLOW")
            + parse_cidrs(extra_allow, source=ALLOW_LOOPBACK_ENV),
            block_private=flag not in {"0", "false", "no"},  # refused unless explicitly opened
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None

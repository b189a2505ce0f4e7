"""Pure parts of the runtime's HTTP edge (bundleserve.bundle.server): settings from the command line and environment."""

from __future__ import annotations

import argparse

import pytest

from bundleserve.bundle.batching import BatchSettings
from bundleserve.bundle.loader import BundleConfigError
from bundleserve.bundle.server import Settings, _url
from bundleserve.cli import build_parser


def _args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["bundle", "serve", "--entrypoint", "m:predict", *extra])


def test_defaults_bind_loopback_on_5005() -> None:
    settings = Settings.from_args(_args(), environ={})
    assert (settings.host, settings.port, settings.exit_on_load_failure) == ("127.0.0.1", 5005, False)
    assert (settings.worker_threads, settings.max_body_bytes, settings.shutdown_timeout_seconds) == (16, 1 << 30, 60.0)


def test_the_cli_options_and_environment_are_read() -> None:
    environ = {
        "BUNDLESERVE_WORKER_THREADS": "4",
        "BUNDLESERVE_MAX_BODY_BYTES": "2048",
        "BUNDLESERVE_SHUTDOWN_TIMEOUT_SECONDS": "2.5",
    }
    args = _args("--port", "6000", "--host", "0.0.0.0", "--exit-on-load-failure", "--stream", "m:tokens")
    settings = Settings.from_args(args, environ=environ)
    assert (settings.host, settings.port, settings.exit_on_load_failure) == ("0.0.0.0", 6000, True)
    assert (settings.worker_threads, settings.max_body_bytes, settings.shutdown_timeout_seconds) == (4, 2048, 2.5)
    assert args.stream == "m:tokens"


@pytest.mark.parametrize(("value", "problem"), [("many", "is not a number"), ("0", "must be positive")])
def test_bad_environment_values_are_configuration_errors(value: str, problem: str) -> None:
    with pytest.raises(BundleConfigError, match=f"BUNDLESERVE_WORKER_THREADS='{value}' {problem}"):
        Settings.from_args(_args(), environ={"BUNDLESERVE_WORKER_THREADS": value})


def test_the_log_level_is_read_with_the_settings_and_a_bad_one_is_named() -> None:
    assert Settings.from_args(_args(), environ={}).log_level == "INFO"
    assert Settings.from_args(_args(), environ={"BUNDLESERVE_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(BundleConfigError, match="BUNDLESERVE_LOG_LEVEL='loud'"):
        Settings.from_args(_args(), environ={"BUNDLESERVE_LOG_LEVEL": "loud"})


def test_urls_bracket_ipv6_hosts() -> None:
    assert (_url("127.0.0.1", 5005), _url("::1", 5005)) == ("http://127.0.0.1:5005", "http://[::1]:5005")


def test_batching_flags_become_batch_settings_with_the_spec_defaults() -> None:
    assert Settings.from_args(_args(), environ={}).batching is None
    defaults = Settings.from_args(_args("--batch-entrypoint", "m:batch"), environ={}).batching
    assert defaults == BatchSettings(max_size=8, max_wait_seconds=0.01)
    given = Settings.from_args(
        _args("--batch-entrypoint", "m:batch", "--max-batch-size", "32", "--max-batch-wait-ms", "0"), environ={}
    ).batching
    assert given == BatchSettings(max_size=32, max_wait_seconds=0.0)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (("--max-batch-size", "4"), "need --batch-entrypoint"),
        (("--batch-entrypoint", "m:b", "--max-batch-size", "0"), "--max-batch-size 0 must be at least 1"),
        (("--batch-entrypoint", "m:b", "--max-batch-wait-ms", "-1"), "must not be negative"),
    ],
)
def test_bad_batching_flags_are_configuration_errors(extra: tuple[str, ...], problem: str) -> None:
    with pytest.raises(BundleConfigError, match=problem):
        Settings.from_args(_args(*extra), environ={})

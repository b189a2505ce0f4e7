"""`bundleserve operator` refuses bad configuration with exit status 2 and a one-line reason (before touching the API)."""

from __future__ import annotations

import pytest

from bundleserve.cli import main as cli_main


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["operator", "--standalone"], {"BUNDLESERVE_KEDA": "sometimes"}, "BUNDLESERVE_KEDA"),
        (["operator", "--peering", "p"], {"BUNDLESERVE_PEERING_PRIORITY": "high"}, "BUNDLESERVE_PEERING_PRIORITY"),
        (["operator", "--peering", "p"], {"BUNDLESERVE_PEERING_LIFETIME_SECONDS": "0"}, "LIFETIME_SECONDS"),
        (["operator", "--peering", "p", "--standalone"], {}, "--standalone"),
        (["operator", "--standalone"], {"BUNDLESERVE_RESULTS_URL": "gs://bucket"}, "BUNDLESERVE_RESULTS_URL"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    argv: list[str],
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and named in error

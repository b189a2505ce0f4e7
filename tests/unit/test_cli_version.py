"""`bundleserve --version` names the installed release (the image test runs it too, inside the image)."""

from __future__ import annotations

import tomllib

import pytest

from bundleserve import __version__
from bundleserve.cli import main
from tests.support.processes import REPO


def test_version_prints_the_release_of_pyproject_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    release = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"bundleserve {release}" == f"bundleserve {__version__}"

"""One composition root per process: only the settings modules below read the process environment.

Every other module gets its configuration as typed values (dataclasses) from its process's settings object, so no
request path reads an environment variable and every bad value fails at start, naming the variable. The shared
parsers (`edge.config`, `queue.config.QueueLimits.from_env`, `sigv4.config_from_env`, ...) stay, as pure functions of
the mapping they are given; only the modules listed here hand them `os.environ`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bundleserve

PACKAGE = Path(bundleserve.__file__).parent

#: The modules allowed to read the process environment, each the settings module of one process (path -> why).
SETTINGS_MODULES = {
    "router/settings.py": "the router's settings (`build_settings`), read by `router.server.main` once",
    "gateway/settings.py": "the gateway's settings (`GatewaySettings.from_env`), read by `gateway.server.main` once",
    "controller/config.py": "the operator's settings (`OperatorConfig.from_env`), read by `controller.main` once",
    "bundle/server.py": "the model server's settings (`Settings.from_args`), read by its `main` once",
    "local/runner.py": "local mode's settings (`LocalSettings.from_env`): its gateway's, and the environment its "
    "children inherit, read by `local.runner.main` once",
    "client/cli.py": "the SDK's command line (`bundleserve call ...`): the gateway URL and API key, read by its "
    "`main` once",
}

#: What reads the environment: `os.environ`, `os.environb`, `os.getenv`, `os.putenv`, `os.unsetenv`.
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads(source: str) -> list[int]:
    """The line numbers where `source` touches the process environment through the `os` module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ENV_NAMES:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                found.append(node.lineno)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ENV_NAMES for alias in node.names)
        ):
            found.append(node.lineno)
    return sorted(found)


def test_the_checker_finds_every_form_of_an_environment_read() -> None:
    source = "import os\nfrom os import getenv\na = os.environ.get('X')\nb = os.getenv('Y')\nc = {**os.environ}\n"
    assert environment_reads(source) == [2, 3, 4, 5]
    assert environment_reads("environ = {}\nx = environ.get('X')\nos_environ = 1\n") == []


def test_only_the_settings_modules_read_the_environment() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in SETTINGS_MODULES:
            continue
        offenders += [f"bundleserve/{relative}:{line}" for line in environment_reads(path.read_text(encoding="utf-8"))]
    assert offenders == [], (
        "these modules read the process environment; take the value from the process's settings object instead "
        "(tests/unit/test_settings_roots.py lists the settings modules):\n" + "\n".join(offenders)
    )


@pytest.mark.parametrize("relative", sorted(SETTINGS_MODULES))
def test_every_listed_settings_module_exists(relative: str) -> None:
    assert (PACKAGE / relative).is_file(), f"{relative} is listed as a settings module but does not exist"

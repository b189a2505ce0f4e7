"""pytest fixtures for the Kubernetes API emulator; import them in a conftest (tests/integration/conftest.py does).

`k8s_api`: a fresh emulator per test, serving on a free loopback port from a background thread with its own event
loop, with a kubeconfig written to the test's tmp_path. See `tests.support.k8s` for the interface. The test fails
at teardown if the emulator itself broke (an unexpected exception while serving or simulating), so emulator bugs
are not mistaken for operator bugs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.k8s.emulator import KubernetesEmulator


@pytest.fixture
def k8s_api(tmp_path: Path) -> Iterator[KubernetesEmulator]:
    emulator = KubernetesEmulator(tmp_path / "k8s").start()
    try:
        yield emulator
    finally:
        emulator.stop()
    problems = emulator.problems()
    assert not problems, f"the Kubernetes API emulator itself failed (a bug in tests/support/k8s): {problems!r}"

"""The runtime's readiness state (bundleserve.bundle.state)."""

from __future__ import annotations

import pytest

from bundleserve.bundle.calling import NO_MODEL
from bundleserve.bundle.errors import LoadFailed, NotReady
from bundleserve.bundle.state import Phase, Readiness


def test_loading_is_not_ready_and_refuses_requests() -> None:
    readiness = Readiness()
    problem = readiness.problem()
    assert isinstance(problem, NotReady) and problem.status == 503 and "loading" in problem.message
    with pytest.raises(NotReady):
        readiness.model_for_request()


def test_ready_serves_the_loaded_model() -> None:
    readiness = Readiness()
    readiness.mark_ready({"weights": 1})
    assert readiness.problem() is None
    assert readiness.model_for_request() == {"weights": 1}


def test_a_failed_load_shows_its_error_on_the_ready_route_and_to_requests() -> None:
    readiness = Readiness()
    failure = LoadFailed("m:load raised OSError: disk", type="OSError", traceback="Traceback ...")
    readiness.mark_failed(failure)
    assert readiness.problem() is failure
    assert failure.body()["error"] == {
        "code": "load_failed",
        "message": "m:load raised OSError: disk",
        "type": "OSError",
        "traceback": "Traceback ...",
    }
    with pytest.raises(LoadFailed):
        readiness.model_for_request()


def test_draining_is_not_ready_but_finishes_accepted_requests() -> None:
    readiness = Readiness()
    readiness.mark_ready(NO_MODEL)
    readiness.mark_draining()
    assert readiness.phase is Phase.DRAINING
    problem = readiness.problem()
    assert isinstance(problem, NotReady) and "shutting down" in problem.message
    assert readiness.model_for_request() is NO_MODEL


def test_a_failed_runtime_stays_failed_while_draining() -> None:
    readiness = Readiness()
    readiness.mark_failed(LoadFailed("x"))
    readiness.mark_draining()
    assert readiness.phase is Phase.FAILED

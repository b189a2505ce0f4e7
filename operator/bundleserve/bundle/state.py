"""The runtime's readiness: loading -> ready | failed, then draining on shutdown. Pure, so it is tested alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bundleserve.bundle.calling import NO_MODEL
from bundleserve.bundle.errors import BundleError, LoadFailed, NotReady


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass
class Readiness:
    phase: Phase = Phase.LOADING
    model: Any = field(default=NO_MODEL, repr=False)
    failure: LoadFailed | None = None

    def mark_ready(self, model: Any) -> None:
        self.phase, self.model = Phase.READY, model

    def mark_failed(self, failure: LoadFailed) -> None:
        self.phase, self.failure = Phase.FAILED, failure

    def mark_draining(self) -> None:
        """Shutting down: in-flight requests finish, the ready route turns 503 so traffic moves elsewhere."""
        if self.phase is Phase.READY:
            self.phase = Phase.DRAINING

    def problem(self) -> BundleError | None:
        """Why the ready route answers 503 (None when ready)."""
        return None if self.phase is Phase.READY else self._refusal()

    def _refusal(self) -> BundleError:
        """Why the model cannot serve now: its load failure, the drain, or the load still running."""
        if self.phase is Phase.FAILED and self.failure is not None:
            return self.failure
        if self.phase is Phase.DRAINING:
            return NotReady("the bundle runtime is shutting down")
        return NotReady("the model is loading")

    def model_for_request(self) -> Any:
        """The loaded model (or NO_MODEL without a load function); raises while not serving.

        Requests already accepted are finished while draining, and new ones are still answered: the router stops
        sending once the ready route fails, and refusing them would turn a graceful shutdown into errors.
        """
        if self.phase in (Phase.READY, Phase.DRAINING):
            return self.model
        raise self._refusal()

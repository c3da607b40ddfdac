"""The local backend: candidates scored one after another in this process, on one device.

One `CandidateEvaluator` holds the parents and the resident model for the whole search; each
candidate is merged into it in memory and scored. A cancel is seen between candidates (the one in
progress finishes, so its score is not lost); `abandon` (leaving the app) drops the one in
progress at its next layer instead (CancelledError).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergetui.recipe.model import Recipe
    from mergetui.search.backends import Scored


class LocalBackend:
    """Scores candidates in this process with one resident evaluator."""

    def __init__(
        self, spec: Any, *, device: str = "auto", abandon: threading.Event | None = None
    ) -> None:
        from mergetui.search.evaluator import CandidateEvaluator

        self.evaluator = CandidateEvaluator(spec, device=device, abandon=abandon)

    def evaluate(
        self, batch: Sequence[tuple[int, Recipe]], cancel: threading.Event
    ) -> Iterator[Scored]:
        """(index, scores, seconds) for each candidate, in order; stops before the next one
        once `cancel` is set."""
        for index, recipe in batch:
            if cancel.is_set():
                return
            started = time.perf_counter()
            scores = self.evaluator.evaluate(recipe)
            yield index, scores, time.perf_counter() - started

    def describe(self) -> str:
        return f"local ({self.evaluator.device})"

    def close(self) -> None:
        self.evaluator.close()

"""Where a search's candidates are scored: the `Backend` protocol and `make_backend`.

`loop.run_search` hands a backend a generation's candidates and reads back each one's scores as
they come; the backend decides where they run: in this process (`backend_local.LocalBackend`, one
resident evaluator) or on a Ray cluster (`backend_ray.RayBackend`, optional extra `ray`: one actor
per GPU or per share of CPUs, each with its own resident evaluator). Both score with
`evaluator.CandidateEvaluator`, so a candidate scores the same wherever it runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mergetui.errors import UserError

if TYPE_CHECKING:
    from mergetui.recipe.model import Recipe

BACKENDS = ("local", "ray")
# (index in the batch, {objective label: score}, seconds it took)
Scored = tuple[int, dict[str, float], float]


class Backend(Protocol):
    """Scores batches of candidate recipes."""

    def evaluate(
        self, batch: Sequence[tuple[int, Recipe]], cancel: threading.Event
    ) -> Iterator[Scored]:
        """Yield (index, scores, seconds) for each candidate, in completion order; once `cancel`
        is set, stop after the candidates in progress."""
        ...

    def describe(self) -> str:
        """One line for the progress display: where candidates run."""
        ...

    def close(self) -> None:
        """Give back what the backend holds (models, actors, a Ray instance it started)."""
        ...


def make_backend(
    name: str,
    spec: Any,
    *,
    device: str = "auto",
    workers: int | None = None,
    address: str | None = None,
    on_notice: Callable[[str], Any] | None = None,
    abandon: threading.Event | None = None,
) -> Backend:
    """The backend called `name` ("local" or "ray"), its parents loaded. Ray is imported only
    for "ray" (missing, or a cluster not reachable: a UserError with the fix). `abandon` stops
    the local backend's candidate in progress mid-forward; Ray's workers finish theirs."""
    if name == "local":
        from mergetui.search.backend_local import LocalBackend

        if address is not None:
            raise UserError(
                "--ray-address is for the ray backend",
                where="--ray-address",
                fix="add --backend ray, or drop --ray-address",
            )
        return LocalBackend(spec, device=device, abandon=abandon)
    if name == "ray":
        from mergetui.search.backend_ray import RayBackend

        return RayBackend(
            spec, device=device, workers=workers, address=address, on_notice=on_notice
        )
    raise UserError(
        f"unknown backend {name!r}", where="--backend", fix="use " + " or ".join(BACKENDS)
    )

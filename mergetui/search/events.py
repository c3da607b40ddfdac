"""What a search tells its listeners while it runs: small frozen records, no behaviour.

`loop.run_search` calls one `on_event(event)` callback from the thread it runs in; the CLI turns the
events into a progress line, the app into Textual messages (the same pattern as `merge.events`).
Nothing here imports torch, so listeners stay light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergetui.recipe.model import Recipe


@dataclass(frozen=True)
class SearchStarted:
    """The search is about to score candidates (after the parents are loaded)."""

    budget: int  # evaluations in all, including those replayed from a previous run
    population: int  # candidates per generation
    labels: tuple[str, ...]  # one per searched value, e.g. "prose.weight[0]"
    resumed: int  # evaluations read back from evaluations.jsonl (not run again)
    out_dir: Path
    device: str
    backend: str  # "local" or "ray"


@dataclass(frozen=True)
class CandidateScored:
    """One candidate has a fitness (lower is better). `resumed` when read back, not run."""

    evaluation: int  # 0-based over the whole search
    generation: int  # 0-based
    values: tuple[float, ...]  # in the order of SearchStarted.labels, after clipping to bounds
    scores: dict[str, float] = field(hash=False)  # objective label -> score
    fitness: float = 0.0
    seconds: float = 0.0
    resumed: bool = False


@dataclass(frozen=True)
class GenerationDone:
    """Every candidate of a generation is scored."""

    generation: int
    evaluations: int  # done so far, over the whole search
    best_fitness: float  # best so far, over the whole search
    median_fitness: float  # of this generation
    eta_seconds: float | None  # None while there is too little to go on


@dataclass(frozen=True)
class NewBest:
    """A candidate beat every earlier one; best.toml and best.yaml were just rewritten."""

    evaluation: int
    fitness: float
    values: tuple[float, ...]
    recipe: Recipe  # the plain recipe with these values as per-layer gradients (no search table)


@dataclass(frozen=True)
class SearchNotice:
    """Something the user should know that does not stop the search (a re-dispatched candidate...)."""

    message: str


@dataclass(frozen=True)
class SearchFinished:
    """The search ended: budget spent, or stopped (cancel) after the current candidate."""

    evaluations: int
    best_fitness: float | None
    best_values: tuple[float, ...] | None
    out_dir: Path
    stopped: bool


SearchEvent = (
    SearchStarted | CandidateScored | GenerationDone | NewBest | SearchNotice | SearchFinished
)
OnSearchEvent = Callable[[SearchEvent], Any]

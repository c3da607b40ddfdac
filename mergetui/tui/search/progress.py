"""What the Search screen knows of the search it shows, and the state line that says it.

`SearchProgress` takes the search's events (`mergetui.search.events`) in the order they come and
keeps what the panes draw: the curve's points (best so far and median, per generation), the
latest evaluations, the best candidate, the counts and the ETA. Plain data, so the rules are
tested without an app; the screen hands each event to `observe` and redraws what it says changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape

from mergetui.formatting import format_duration
from mergetui.tui.search.evaluations import EvaluationRow, fitness_text


@dataclass
class SearchProgress:
    """The state of one search run as its events tell it."""

    budget: int = 0
    population: int = 0
    device: str = ""
    resumed: int = 0
    evaluations: int = 0  # scored so far, replayed ones included
    generation: int = -1  # the last generation done
    eta_seconds: float | None = None
    best: Any = None  # the latest NewBest
    best_curve: list[float] = field(default_factory=list)
    median_curve: list[float] = field(default_factory=list)
    rows: list[EvaluationRow] = field(default_factory=list)
    started: bool = False  # SearchStarted came: the parents are loaded

    def observe(self, event: Any) -> str:
        """Take one event; returns what changed: "started", "scored", "generation", "best",
        "notice" or "finished"."""
        from mergetui.search import events

        if isinstance(event, events.SearchStarted):
            self.budget, self.population = event.budget, event.population
            self.device, self.resumed, self.started = event.device, event.resumed, True
            return "started"
        if isinstance(event, events.CandidateScored):
            self._scored(event)
            return "scored"
        if isinstance(event, events.GenerationDone):
            self._generation(event.generation, event.best_fitness, event.median_fitness)
            self.evaluations = max(self.evaluations, event.evaluations)
            self.eta_seconds = event.eta_seconds
            return "generation"
        if isinstance(event, events.NewBest):
            self.best = event
            return "best"
        if isinstance(event, events.SearchFinished):
            self.evaluations = max(self.evaluations, event.evaluations)
            self.eta_seconds = None
            return "finished"
        return "notice"

    def _scored(self, event: Any) -> None:
        self.evaluations = max(self.evaluations, event.evaluation + 1)
        self.rows.append(
            EvaluationRow(
                event.evaluation, event.generation, event.fitness, event.seconds, event.resumed
            )
        )

    def _generation(self, generation: int, best: float, median: float) -> None:
        if generation <= self.generation:
            return  # a generation is drawn once
        self.generation = generation
        self.best_curve.append(best)
        self.median_curve.append(median)

    @property
    def best_fitness(self) -> float | None:
        return self.best.fitness if self.best is not None else None

    def running_line(self) -> str:
        """The state line while the search runs (markup)."""
        if not self.started:
            return "[b]loading the parents[/]… [dim]esc stops[/]"
        parts = [
            f"[b]generation {self.generation + 2}[/]",
            f"{self.evaluations}/{self.budget} evaluated",
            f"best {fitness_text(self.best_fitness)}",
            f"ETA {format_duration(self.eta_seconds)}",
        ]
        if self.resumed:
            parts.append(f"{self.resumed} resumed")
        return " · ".join([*parts, "[dim]esc stops[/]"])

    def ended_line(self, outcome: str, message: str = "") -> str:
        """The state line once the search ended (markup)."""
        best = fitness_text(self.best_fitness)
        if outcome == "finished":
            return (
                f"[b $success]✓ done[/]: {self.evaluations} evaluated, best {best} · "
                "ctrl+b applies it to the recipe"
            )
        if outcome == "stopped":
            return (
                f"[b $warning]stopped[/]: {self.evaluations} evaluated, best {best} · "
                "ctrl+r resumes · ctrl+b applies it"
            )
        return f"[b $error]✗ not searched[/]: {escape(message)}"

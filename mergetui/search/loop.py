"""The search: CMA-ES (the `cma` package) asks for candidates, a backend scores them, outputs keep them.

Order of work, so that a mistake costs nothing: the spec's numbers with the caller's overrides
(`spec.with_overrides`), then the checkpoints' headers (`merge.plan.make_plan`: the models can be
merged, the layer count for the genome), then a previous run's `evaluations.jsonl` replayed through
the same seeded CMA-ES (no candidate run twice; a file from another spec or seed is refused), and
only then the backend, which loads the parents. The folder is created by the first scored candidate.

Determinism: CMA-ES draws from its own generator, seeded from the spec's seed (cma reads seed 0 as
"random", so the generator gets seed + 1), never from numpy's global one, which a backend may use.
The same spec and seed give the same candidates, in the same order, and the same best.

The search runs in the unit cube (each value as a share of its bounds, `Genome.to_unit`), with
cma's bounds [0, 1] and mergekit-evolve's initial step size (1/6 of the range).
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergetui.errors import CancelledError, UserError
from mergetui.search.events import (
    CandidateScored,
    GenerationDone,
    NewBest,
    OnSearchEvent,
    SearchEvent,
    SearchFinished,
    SearchNotice,
    SearchStarted,
)
from mergetui.search.genome import Genome
from mergetui.search.outputs import (
    BEST_OUTPUT,
    EVALUATIONS_FILE,
    Evaluation,
    EvaluationLog,
    best_recipe,
    read_evaluations,
    spec_folder,
    summary_data,
    write_best,
    write_summary,
)
from mergetui.search.spec import SearchSpec, fitness, with_overrides

SIGMA0 = 1 / 6  # mergekit-evolve's --sigma0, in units of each value's range
# A replayed value may differ from the one recorded by this much (another machine's arithmetic).
REPLAY_TOLERANCE = 1e-6


def run_search(
    spec: SearchSpec,
    *,
    out_dir: Path,
    backend_name: str = "local",
    device: str = "auto",
    workers: int | None = None,
    ray_address: str | None = None,
    on_event: OnSearchEvent | None = None,
    cancel: threading.Event | None = None,
    abandon: threading.Event | None = None,
    budget: int | None = None,
    population: int | None = None,
    seed: int | None = None,
    backend: Any = None,
) -> SearchFinished:
    """Search until the budget (evaluations in all, a previous run's included) is spent or
    `cancel` is set (the candidate in progress finishes and is kept; `abandon`, set with it,
    drops that candidate mid-forward on the local backend instead). `backend` replaces the
    one `backend_name` would make (the caller then closes it). UserError before anything is
    written for what is wrong with the spec, the models or the out folder."""
    spec = with_overrides(spec, budget=budget, population=population, seed=seed)
    out_dir = Path(out_dir)
    genome = prepare_genome(spec, out_dir, device)
    cancel = cancel or threading.Event()
    emit: OnSearchEvent = on_event or (lambda event: None)
    search = _Search(spec, genome, out_dir, emit)
    search.replay(read_evaluations(out_dir))
    own = backend is None
    if own:
        from mergetui.search.backends import make_backend

        backend = make_backend(
            backend_name,
            spec,
            device=device,
            workers=workers,
            address=ray_address,
            on_notice=lambda message: emit(SearchNotice(message)),
            abandon=abandon,
        )
    try:
        emit(
            SearchStarted(
                budget=spec.budget,
                population=search.population,
                labels=tuple(genome.labels),
                resumed=len(search.records),
                out_dir=out_dir,
                device=_device_of(backend, device),
                backend=backend_name,
            )
        )
        search.announce_replay()
        search.run(backend, cancel)
    finally:
        search.log.close()
        if own:
            backend.close()
    asked_to_stop = cancel.is_set() or (abandon is not None and abandon.is_set())
    return search.finish(stopped=asked_to_stop and len(search.records) < spec.budget)


def prepare_genome(spec: SearchSpec, out_dir: Path, device: str) -> Genome:
    """The genome for the models' layer count, once the planner (the validator's checks, then the
    headers) says the template recipe, and the recipe at the search's start, can be merged. No
    weight is read."""
    from mergetui.merge.plan import make_plan

    folder = spec_folder(spec)
    plan = make_plan(spec.recipe, recipe_dir=folder, out=out_dir / BEST_OUTPUT, device=device)
    if not plan.layer_count:
        raise UserError(
            "the models have no layers to search over",
            where=spec.where(),
            fix="a search tunes values per layer: merge models with transformer layers",
        )
    genome = Genome(spec, plan.layer_count)
    start = genome.recipe_for(genome.x0)
    make_plan(start, recipe_dir=folder, out=out_dir / BEST_OUTPUT, device=device)
    return genome


def _device_of(backend: Any, requested: str) -> str:
    """The device the backend scores on, where it says (the local backend's evaluator resolves
    `auto`), else the one asked for. The Backend protocol has no `device`: see describe()."""
    for owner in (backend, getattr(backend, "evaluator", None)):
        device = getattr(owner, "device", None)
        if device:
            return str(device)
    return requested


def estimate_eta(started: float, done_here: int, remaining: int) -> float | None:
    """Seconds left at this run's pace (wall time per candidate scored since it started)."""
    if done_here < 1:
        return None
    return (time.perf_counter() - started) / done_here * remaining


# ----------------------------------------------------------------------------------------------
# CMA-ES


class Optimizer:
    """cma's CMAEvolutionStrategy on the unit cube, with its own seeded generator."""

    def __init__(self, genome: Genome, seed: int, population: int) -> None:
        import numpy as np

        with warnings.catch_warnings():  # cma warns that matplotlib is missing (plots only)
            warnings.simplefilter("ignore")
            import cma

        self.genome = genome
        generator = np.random.RandomState(seed + 1)  # cma reads 0 as "seed from the clock"
        options = {
            "seed": np.nan,  # leave numpy's global generator alone
            "randn": generator.randn,
            "bounds": [0.0, 1.0],
            "popsize": population,
            "verbose": -9,
        }
        self.es = cma.CMAEvolutionStrategy(genome.to_unit(genome.x0), SIGMA0, options)
        self.population = int(self.es.popsize)

    def ask(self) -> tuple[list[Any], list[list[float]]]:
        """The next generation: cma's solutions (to tell back) and their values."""
        solutions = self.es.ask()
        return solutions, [self.genome.from_unit(solution) for solution in solutions]

    def tell(self, solutions: list[Any], fitnesses: Sequence[float]) -> None:
        self.es.tell(solutions, list(ranked(fitnesses)))

    def stopped(self) -> str | None:
        """Why cma stops (it converged), or None to go on."""
        reasons = self.es.stop()
        return ", ".join(str(key) for key in reasons) if reasons else None


def ranked(fitnesses: Sequence[float]) -> list[float]:
    """Fitnesses cma can rank: a broken candidate's (inf or NaN) last, finite and in order."""
    finite = [f for f in fitnesses if math.isfinite(f)]
    worst = max(finite) if finite else 0.0
    penalty = worst + 1.0 + abs(worst)
    return [f if math.isfinite(f) else penalty for f in fitnesses]


# ----------------------------------------------------------------------------------------------
# The search's state


@dataclass
class _Generation:
    number: int
    solutions: list[Any]
    values: list[list[float]]
    fitnesses: dict[int, float] = field(default_factory=dict)  # candidate -> fitness


class _Search:
    """One run: the optimizer, the records (replayed and new), the best, the files."""

    def __init__(self, spec: SearchSpec, genome: Genome, out_dir: Path, emit: OnSearchEvent):
        self.spec = spec
        self.genome = genome
        self.out_dir = out_dir
        self.emit = emit
        self.optimizer = Optimizer(genome, spec.seed, spec.effective_population)
        self.population = self.optimizer.population
        self.log = EvaluationLog(out_dir)
        self.records: list[Evaluation] = []
        self.best: Evaluation | None = None
        self.files: list[str] = []
        self.pending: _Generation | None = None  # asked, not all scored (a stopped run's last)
        self.generation = 0  # the next to ask
        self._replayed_events: list[SearchEvent] = []

    # Replay ------------------------------------------------------------------------------------

    def replay(self, records: list[Evaluation]) -> None:
        """Tell cma a previous run's scores, generation by generation, checking that it asks for
        the very candidates that were scored. Nothing is emitted yet (see announce_replay)."""
        by_generation: dict[int, dict[int, Evaluation]] = {}
        for record in records:
            self._check_labels(record)
            slot = by_generation.setdefault(record.generation, {})
            if record.candidate in slot or not 0 <= record.candidate < self.population:
                raise self._foreign(record, "its generation and candidate numbers do not fit")
            slot[record.candidate] = record
        for number in range(len(by_generation)):
            scored = by_generation.get(number)
            if scored is None:
                raise self._foreign(records[-1], f"generation {number} is missing")
            generation = self._ask()
            for candidate, record in sorted(scored.items()):
                self._check_values(record, generation.values[candidate])
                generation.fitnesses[candidate] = record.fitness
                self._keep(record, resumed=True)
            if len(scored) == self.population:
                self._tell(generation, resumed=True)
            elif number != len(by_generation) - 1:
                raise self._foreign(records[-1], f"generation {number} is incomplete")
            else:
                self.pending = generation

    def _check_labels(self, record: Evaluation) -> None:
        if list(record.values) != self.genome.labels or set(record.scores) != {
            o.label for o in self.spec.objectives
        }:
            raise self._foreign(record, "its values or objectives are not this search's")

    def _check_values(self, record: Evaluation, values: list[float]) -> None:
        for label, recorded, asked in zip(
            self.genome.labels, record.values.values(), values, strict=True
        ):
            if abs(recorded - asked) > REPLAY_TOLERANCE * max(1.0, abs(asked)):
                raise self._foreign(
                    record, f"{label} was {recorded:.6g}; this spec and seed give {asked:.6g}"
                )

    def _foreign(self, record: Evaluation, why: str) -> UserError:
        return UserError(
            f"{EVALUATIONS_FILE} is from another search (evaluation {record.evaluation}: {why})",
            where=str(self.out_dir / EVALUATIONS_FILE),
            fix="run with the spec, seed and population that wrote it, or pass another --out",
        )

    def announce_replay(self) -> None:
        for event in self._replayed_events:
            self.emit(event)
        self._replayed_events = []
        if self.best is not None:
            self._write_best()

    # The run -----------------------------------------------------------------------------------

    def run(self, backend: Any, cancel: threading.Event) -> None:
        started = time.perf_counter()
        done_here = 0
        while len(self.records) < self.spec.budget and not cancel.is_set():
            generation = self.pending
            if generation is None:
                reason = self.optimizer.stopped()
                if reason is not None:
                    self.emit(SearchNotice(f"CMA-ES converged ({reason}); the search ends here"))
                    return
                generation = self._ask()
            self.pending = generation
            todo = [i for i in range(self.population) if i not in generation.fitnesses]
            todo = todo[: self.spec.budget - len(self.records)]
            batch = [(i, self.genome.recipe_for(generation.values[i])) for i in todo]
            try:
                for index, scores, seconds in backend.evaluate(batch, cancel):
                    self._score(generation, index, scores, seconds)
                    done_here += 1
            except CancelledError:
                return  # abandoned mid-candidate: it is not recorded, a resume scores it again
            if len(generation.fitnesses) < self.population:
                return  # the budget ends inside this generation, or the run was stopped
            eta = estimate_eta(started, done_here, self.spec.budget - len(self.records))
            self._tell(generation, resumed=False, eta=eta)

    def _ask(self) -> _Generation:
        solutions, values = self.optimizer.ask()
        generation = _Generation(self.generation, solutions, values)
        self.generation += 1
        return generation

    def _tell(self, generation: _Generation, *, resumed: bool, eta: float | None = None) -> None:
        fitnesses = [generation.fitnesses[i] for i in range(self.population)]
        self.optimizer.tell(generation.solutions, fitnesses)
        self.pending = None
        finite = sorted(f for f in fitnesses if math.isfinite(f))
        median = finite[len(finite) // 2] if finite else math.inf
        best = self.best.fitness if self.best is not None else math.inf
        self._send(GenerationDone(generation.number, len(self.records), best, median, eta), resumed)

    def _score(
        self, generation: _Generation, index: int, scores: dict[str, float], seconds: float
    ) -> None:
        missing = {o.label for o in self.spec.objectives} - set(scores)
        if missing:
            raise RuntimeError(f"the backend returned no score for {', '.join(sorted(missing))}")
        value = fitness(self.spec, scores)
        record = Evaluation(
            evaluation=len(self.records),
            generation=generation.number,
            candidate=index,
            values=self.genome.named(generation.values[index]),
            scores={label: float(scores[label]) for label in scores},
            fitness=value if math.isfinite(value) else math.inf,
            seconds=float(seconds),
        )
        generation.fitnesses[index] = record.fitness
        self.log.append(record)
        if self._keep(record, resumed=False):
            self._write_best()

    def _keep(self, record: Evaluation, *, resumed: bool) -> bool:
        """Record a scored candidate; True when it is the best so far."""
        self.records.append(record)
        values = tuple(record.values.values())
        events: list[SearchEvent] = [
            CandidateScored(
                record.evaluation,
                record.generation,
                values,
                dict(record.scores),
                record.fitness,
                record.seconds,
                resumed,
            )
        ]
        improved = math.isfinite(record.fitness) and (
            self.best is None or record.fitness < self.best.fitness
        )
        if improved:
            self.best = record
            recipe = self.genome.recipe_for(values)
            events.append(NewBest(record.evaluation, record.fitness, values, recipe))
        for event in events:
            self._send(event, resumed)
        return improved

    def _send(self, event: SearchEvent, resumed: bool) -> None:
        """Emit now, or (replaying, before SearchStarted) keep for announce_replay."""
        if resumed:
            self._replayed_events.append(event)
        else:
            self.emit(event)

    # Files -------------------------------------------------------------------------------------

    def _write_best(self) -> None:
        assert self.best is not None
        best = self.best
        recipe = self.genome.recipe_for(list(best.values.values()))
        source = self.spec.source_path.name if self.spec.source_path else "the app"
        description = (
            f"The best of a search (mergetui evolve {source}): evaluation {best.evaluation}, "
            f"generation {best.generation}, fitness {best.fitness:.6g}."
        )
        self.files = write_best(
            self.out_dir, best_recipe(recipe, spec_folder(self.spec), description)
        )
        self._write_summary(stopped=False)

    def _write_summary(self, *, stopped: bool) -> None:
        data = summary_data(
            self.spec,
            out_dir=self.out_dir,
            evaluations=len(self.records),
            best=self.best,
            stopped=stopped,
            files=self.files,
        )
        write_summary(self.out_dir, data)

    def finish(self, *, stopped: bool) -> SearchFinished:
        if self.records:
            self._write_summary(stopped=stopped)
        best = self.best
        event = SearchFinished(
            evaluations=len(self.records),
            best_fitness=best.fitness if best is not None else None,
            best_values=tuple(best.values.values()) if best is not None else None,
            out_dir=self.out_dir,
            stopped=stopped,
        )
        self.emit(event)
        return event

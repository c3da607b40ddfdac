"""The search loop's plumbing on real checkpoints' headers, scored by a real deterministic function
of each candidate's per-layer values (evolve_helpers.QuadraticBackend): seeded determinism, resume
without repeating work, cancel, bounds, the files, the events, and nothing written on an error."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
from evolve_helpers import LABEL, QuadraticBackend, layer_values, read_lines, write_spec

from mergetui.errors import UserError
from mergetui.recipe.io import load_recipe
from mergetui.search import events
from mergetui.search.genome import Genome
from mergetui.search.loop import run_search
from mergetui.search.spec import SearchSpec, load_search_spec

SEARCH = "layer_groups = 2\nsmooth = true\npopulation = 4\nbudget = 10\nseed = 0\n"


@pytest.fixture
def spec(tmp_path: Path, llama_family: dict[str, Path]) -> SearchSpec:
    return load_search_spec(write_spec(tmp_path / "spec", llama_family, search=SEARCH))


def _run(spec: SearchSpec, out: Path, backend: QuadraticBackend | None = None, **kwargs):
    seen: list[events.SearchEvent] = []
    backend = backend or QuadraticBackend()
    finished = run_search(spec, out_dir=out, backend=backend, on_event=seen.append, **kwargs)
    return finished, seen, backend


def test_a_search_writes_its_files_and_events(spec: SearchSpec, tmp_path: Path) -> None:
    out = tmp_path / "out"
    finished, seen, backend = _run(spec, out)
    lines = read_lines(out / "evaluations.jsonl")
    assert [line["evaluation"] for line in lines] == list(range(10))
    assert [line["generation"] for line in lines] == [0] * 4 + [1] * 4 + [2] * 2
    assert [line["candidate"] for line in lines] == [0, 1, 2, 3] * 2 + [0, 1]
    genome = Genome(spec, 4)
    for line, recipe in zip(lines, backend.seen, strict=True):
        assert list(line["values"]) == genome.labels
        assert all(0.0 <= v <= 1.0 for v in line["values"].values())
        # What was scored is the recipe those values make, and the fitness is its score.
        assert recipe == genome.recipe_for(list(line["values"].values()))
        assert line["scores"] == {LABEL: line["fitness"]}
        assert line["fitness"] == pytest.approx(QuadraticBackend().score(recipe))
    best = min(lines, key=lambda line: line["fitness"])
    assert finished == events.SearchFinished(
        10, best["fitness"], tuple(best["values"].values()), out, stopped=False
    )
    assert not backend.closed  # the caller's backend is the caller's to close

    # best.toml: a plain recipe whose per-layer values are the best candidate's.
    recipe = load_recipe(out / "best.toml")
    assert recipe.search is None and recipe.output == "best-merge"
    values = list(best["values"].values())
    assert layer_values(recipe, "a") == pytest.approx(layer_values(genome.recipe_for(values), "a"))
    assert Path(recipe.models["a"].source).is_absolute()
    assert load_recipe(out / "best.yaml").models["b"].parameters == recipe.models["b"].parameters
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 10 and summary["stopped"] is False
    assert summary["best"]["values"] == best["values"]
    assert summary["best"]["evaluation"] == best["evaluation"]

    kinds = [type(event).__name__ for event in seen]
    assert kinds[0] == "SearchStarted" and kinds[-1] == "SearchFinished"
    assert kinds.count("CandidateScored") == 10
    done = [e for e in seen if isinstance(e, events.GenerationDone)]
    assert [(e.generation, e.evaluations) for e in done] == [(0, 4), (1, 8)]  # the third is cut
    bests = [e for e in seen if isinstance(e, events.NewBest)]
    assert [e.fitness for e in bests] == sorted((e.fitness for e in bests), reverse=True)
    assert bests[-1].values == tuple(values) and bests[-1].recipe.search is None
    started = seen[0]
    assert isinstance(started, events.SearchStarted)
    assert (started.budget, started.population, started.resumed) == (10, 4, 0)
    assert started.labels == tuple(genome.labels)


def test_the_same_seed_gives_the_same_search(spec: SearchSpec, tmp_path: Path) -> None:
    _run(spec, tmp_path / "one")
    _run(spec, tmp_path / "two")
    _run(spec, tmp_path / "other", seed=1)
    one = (tmp_path / "one" / "evaluations.jsonl").read_text()
    assert one == (tmp_path / "two" / "evaluations.jsonl").read_text()
    assert (tmp_path / "one" / "best.toml").read_text() == (
        tmp_path / "two" / "best.toml"
    ).read_text()
    other = read_lines(tmp_path / "other" / "evaluations.jsonl")
    assert other[0]["values"] != json.loads(one.splitlines()[0])["values"]


def test_the_search_improves(spec: SearchSpec, tmp_path: Path) -> None:
    finished, _, backend = _run(spec, tmp_path / "out", budget=40)
    genome = Genome(spec, 4)
    start = backend.score(genome.recipe_for(genome.x0))
    assert finished.best_fitness is not None and finished.best_fitness < start / 2


def test_a_stopped_search_resumes_without_repeating_work(spec: SearchSpec, tmp_path: Path) -> None:
    _run(spec, tmp_path / "whole")
    out = tmp_path / "out"
    stopped, _, first = _run(spec, out, QuadraticBackend(cancel_after=5))
    assert stopped.stopped and stopped.evaluations == 5
    assert len(read_lines(out / "evaluations.jsonl")) == 5
    assert json.loads((out / "summary.json").read_text())["stopped"] is True
    finished, seen, second = _run(spec, out)
    assert not finished.stopped and finished.evaluations == 10
    assert len(second.seen) == 5  # only what was left
    assert (out / "evaluations.jsonl").read_text() == (
        tmp_path / "whole" / "evaluations.jsonl"
    ).read_text()
    started = seen[0]
    assert isinstance(started, events.SearchStarted) and started.resumed == 5
    scored = [e for e in seen if isinstance(e, events.CandidateScored)]
    assert [e.resumed for e in scored] == [True] * 5 + [False] * 5
    assert [e.generation for e in seen if isinstance(e, events.GenerationDone)] == [0, 1]


def test_a_larger_budget_continues_the_generation(spec: SearchSpec, tmp_path: Path) -> None:
    _run(spec, tmp_path / "whole")
    out = tmp_path / "out"
    _run(spec, out, budget=6)  # ends inside generation 1
    finished, _, backend = _run(spec, out)
    assert finished.evaluations == 10 and len(backend.seen) == 4
    assert (out / "evaluations.jsonl").read_text() == (
        tmp_path / "whole" / "evaluations.jsonl"
    ).read_text()
    again, _, idle = _run(spec, out)  # nothing left to do
    assert again.evaluations == 10 and idle.seen == []


def test_a_file_from_another_search_is_refused(spec: SearchSpec, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(spec, out, budget=6)
    before = (out / "evaluations.jsonl").read_text()
    with pytest.raises(UserError) as caught:
        _run(spec, out, seed=3)
    assert "from another search" in caught.value.message
    assert caught.value.where == str(out / "evaluations.jsonl")
    with pytest.raises(UserError, match="from another search"):
        _run(spec, out, population=5)
    assert (out / "evaluations.jsonl").read_text() == before


def test_a_line_cut_short_is_dropped(spec: SearchSpec, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(spec, out, budget=6)
    with (out / "evaluations.jsonl").open("a") as handle:
        handle.write('{"evaluation": 6, "generation": 1, "cand')  # killed while writing
    finished, _, backend = _run(spec, out)
    assert finished.evaluations == 10 and len(backend.seen) == 4
    assert [line["evaluation"] for line in read_lines(out / "evaluations.jsonl")] == list(range(10))


def test_a_broken_candidate_is_ranked_last(spec: SearchSpec, tmp_path: Path) -> None:
    out = tmp_path / "out"
    finished, seen, _ = _run(spec, out, QuadraticBackend(broken=[1]))
    lines = read_lines(out / "evaluations.jsonl")
    assert lines[1]["fitness"] is None and lines[1]["scores"] == {LABEL: None}
    assert len(lines) == 10 and finished.best_fitness is not None
    assert math.isfinite(finished.best_fitness)
    scored = [e for e in seen if isinstance(e, events.CandidateScored)]
    assert math.isinf(scored[1].fitness)
    # Resuming reads the broken line back as it was.
    again, _, backend = _run(spec, out, budget=12)
    assert again.evaluations == 12 and len(backend.seen) == 2


def test_cancel_before_the_first_candidate_writes_nothing(spec: SearchSpec, tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    finished, _, backend = _run(spec, tmp_path / "out", cancel=cancel)
    assert finished.evaluations == 0 and finished.stopped and backend.seen == []
    assert not (tmp_path / "out").exists()


def test_abandon_mid_candidate_keeps_the_scored_and_resume_finishes(
    spec: SearchSpec, tmp_path: Path
) -> None:
    """The app's leave: abandon (with cancel) set while candidates run, on the real local
    backend. What was scored stays, the candidate in progress is not written, a rerun resumes and
    ends with the same file as a search never interrupted."""
    whole = tmp_path / "whole"
    run_search(spec, out_dir=whole, device="cpu", budget=6)
    out = tmp_path / "out"
    cancel, abandon = threading.Event(), threading.Event()

    def leave_after_three(event: events.SearchEvent) -> None:
        if isinstance(event, events.CandidateScored) and event.evaluation == 2:
            abandon.set()  # the next candidate's first block raises; cancel comes later

    stopped = run_search(
        spec,
        out_dir=out,
        device="cpu",
        budget=6,
        on_event=leave_after_three,
        cancel=cancel,
        abandon=abandon,
    )
    assert stopped.stopped and stopped.evaluations == 3
    assert [line["evaluation"] for line in read_lines(out / "evaluations.jsonl")] == [0, 1, 2]
    finished = run_search(spec, out_dir=out, device="cpu", budget=6)
    assert finished.evaluations == 6 and not finished.stopped

    def scored(path: Path) -> list[tuple]:
        return [(x["evaluation"], x["values"], x["fitness"]) for x in read_lines(path)]

    assert scored(out / "evaluations.jsonl") == scored(whole / "evaluations.jsonl")


def test_errors_before_anything_is_written(
    tmp_path: Path, llama_family: dict[str, Path], tiny_model_factory
) -> None:
    out = tmp_path / "out"
    spec = load_search_spec(
        write_spec(tmp_path / "deep", llama_family, search="layer_groups = 6\nbudget = 30\n")
    )
    backend = QuadraticBackend()
    with pytest.raises(UserError, match="layer_groups is 6 but the models have 4 layers"):
        run_search(spec, out_dir=out, backend=backend)
    spec = load_search_spec(write_spec(tmp_path / "ok", llama_family, search=SEARCH))
    with pytest.raises(UserError, match="below the population"):
        run_search(spec, out_dir=out, backend=backend, budget=3)
    # Models that cannot be merged: b has other shapes than the base.
    other = {**llama_family, "b": tiny_model_factory("llama", seed=5, hidden_size=32)}
    spec = load_search_spec(write_spec(tmp_path / "bad", other, search=SEARCH))
    with pytest.raises(UserError):
        run_search(spec, out_dir=out, backend=backend)
    assert backend.seen == [] and not out.exists()

"""The Search screen (F10) on tiny real llama checkpoints: the form filled from the recipe's
`[search]` table (or the demo's texts), a real search in a worker (events, the curve, the latest
evaluations, the best candidate in the heat map), keys answered while it runs, stop, resume from
evaluations.jsonl, apply the best as one undoable edit; and the screen's plain parts (settings,
progress, the braille curve) without an app."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest

from mergetui.editing.document import RecipeDocument
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.recipe.io import load_recipe
from mergetui.search import events
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.search.curve import BRAILLE, plot_dots, scale_label
from mergetui.tui.search.evaluations import fitness_text
from mergetui.tui.search.progress import SearchProgress
from mergetui.tui.search.screen import SearchScreen
from mergetui.tui.search.settings import (
    SearchSettings,
    demo_texts,
    search_table,
    settings_for,
)

TEXT = (
    "The quick brown fox jumps over the lazy dog. A merge of two models is scored on this text, "
    "and the search looks for the weights that read it best.\n"
) * 6


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The test machine is shared: there torch's team of threads spins against other processes
    and a tiny candidate takes seconds instead of a fraction of one. The screen's behaviour does not
    depend on the thread count, so the search runs on one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_recipe(tmp_path: Path, family: dict[str, Path], search: str | None = None) -> Path:
    """recipes/soup.toml: linear over a and b, and (by default) a small `[search]` table."""
    (tmp_path / "calib").mkdir(exist_ok=True)
    (tmp_path / "calib" / "prose.txt").write_text(TEXT, encoding="utf-8")
    path = tmp_path / "recipes" / "soup.toml"
    path.parent.mkdir(exist_ok=True)
    if search is None:
        search = """
            [search]
            parameters = ["weight"]
            layer_groups = 2
            smooth = true
            budget = 8
            population = 4
            seed = 3

            [[search.objective]]
            kind = "perplexity"
            text = "../calib/prose.txt"
            weight = 2.0
            """
    path.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "linear"
            dtype = "float32"
            output = "../out"

            [models.a]
            source = "{family["a"]}"
            [models.a.parameters]
            weight = 0.6

            [models.b]
            source = "{family["b"]}"
            [models.b.parameters]
            weight = 0.4
            """
        )
        + textwrap.dedent(search),
        encoding="utf-8",
    )
    return path


def gate_the_evaluator(
    monkeypatch: pytest.MonkeyPatch, *holds: int
) -> list[tuple[threading.Event, threading.Event]]:
    """Hold the real evaluator each time it has scored one of `holds` candidates, until that
    hold's `release` is set; its `reached` says it is held (so the search is surely running)."""
    from mergetui.search.evaluator import CandidateEvaluator

    gates = {count: (threading.Event(), threading.Event()) for count in holds}
    real = CandidateEvaluator.evaluate
    calls = []

    def held(self, recipe):
        scores = real(self, recipe)
        calls.append(1)
        if len(calls) in gates:
            reached, release = gates[len(calls)]
            reached.set()
            assert release.wait(60)
        return scores

    monkeypatch.setattr(CandidateEvaluator, "evaluate", held)
    return [gates[count] for count in holds]


async def wait_for(pilot, condition, tries: int = 1200) -> None:
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition never became true")


async def on_search_screen(app: MergeTuiApp, pilot) -> SearchScreen:
    await pilot.pause(0.2)
    await pilot.press("f10")
    await pilot.pause()
    assert isinstance(app.screen, SearchScreen)
    await app.workers.wait_for_complete()
    await pilot.pause()
    return app.screen


def lines(out: Path) -> int:
    path = out / "evaluations.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_search_start_stop_resume_apply_and_undo(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe_path = write_recipe(tmp_path, llama_family)
    out = recipe_path.parent / "soup-evolve"  # the CLI's default: SPEC_STEM-evolve beside it
    (first, go_on), (fourth, stop_there) = gate_the_evaluator(monkeypatch, 2, 4)
    app = MergeTuiApp(RecipeDocument.open(recipe_path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_search_screen(app, pilot)
        # The form comes from the recipe's [search] table.
        form = screen.form.read()
        assert (form.parameters, form.layer_groups, form.budget, form.seed) == (
            ("weight",),
            2,
            8,
            3,
        )
        assert form.texts == ("../calib/prose.txt",)
        assert screen.out_dir == out
        assert screen.check_action("stop", ()) is False
        assert screen.check_action("apply_best", ()) is None  # nothing to apply yet: shown dim

        await pilot.press("ctrl+r")
        await wait_for(pilot, first.is_set)
        assert screen.running and screen.form.disabled
        assert screen.check_action("start", ()) is False
        # Events arrived as messages: candidates in the table, a best in the grid.
        await wait_for(pilot, lambda: len(screen.table.rows) >= 1)
        assert screen.progress.started and screen.progress.budget == 8
        assert screen.progress.best is not None
        assert "best #" in str(screen.query_one("#best-title").render())
        grid_model = screen.best_pane.model
        assert grid_model.shape == (1 + 4 + 1, 2)  # embed, 4 layers, head x weight of a and b

        # Keys are answered while candidates are being scored (the third, then the fourth):
        # a key press's round trip, loosely timed (the aim is well under 100 ms).
        # The time is from the key sent to its action run (Pilot's own wait after a key, for the
        # CPU to go idle, is no part of the app's answer).
        grid = screen.best_pane.grid
        handled: list[float] = []
        move = grid.action_move

        def timed_move(rows: int, cols: int) -> None:
            handled.append(time.perf_counter())
            move(rows, cols)

        grid.action_move = timed_move
        go_on.set()
        latencies = []
        for key, step in (("down", 1), ("down", 1), ("up", -1)):
            assert screen.running
            before = grid.cursor
            sent = time.perf_counter()
            await pilot.press(key)
            assert grid.cursor == (before[0] + step, before[1])
            latencies.append(handled[-1] - sent)
        print("key latencies while scoring (s):", [round(t, 4) for t in latencies])
        assert max(latencies) < 0.5
        await wait_for(pilot, fourth.is_set)
        assert screen.running
        # Stop: the candidate in progress finishes and is kept, nothing more is scored.
        await pilot.press("escape")
        assert "stopping" in str(screen.query_one("#search-state").render())
        stop_there.set()
        await wait_for(pilot, lambda: not screen.running)
        assert screen.outcome == "stopped"
        assert lines(out) == 4
        assert "stopped" in str(screen.query_one("#search-state").render())
        assert not screen.form.disabled

        # Resume: the scored candidates are replayed, not run again; the budget is met.
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.running)
        assert screen.outcome == "finished", screen.query_one("#search-state").render()
        assert screen.progress.resumed == 4
        assert lines(out) == 8
        assert sum(row.resumed for row in screen.table.rows) == 4
        assert len(screen.progress.best_curve) == 2  # two generations of four
        assert screen.curve.best == screen.progress.best_curve
        assert all(b <= m for b, m in zip(screen.curve.best, screen.curve.median, strict=True))
        assert (out / "best.toml").is_file()

        # Apply the best: one edit, the recipe's weights become the best's; one undo restores.
        document = app.document

        def weights() -> dict:
            return {m: e.parameters.get("weight") for m, e in document.recipe.models.items()}

        original = weights()
        best = screen.progress.best
        await pilot.press("ctrl+b")
        await pilot.pause()
        applied = weights()
        assert applied == {m: e.parameters["weight"] for m, e in best.recipe.models.items()}
        assert applied != original
        assert isinstance(applied["a"], list) and len(applied["a"]) == 2  # a smooth gradient
        assert document.modified and document.recipe.search is not None  # the table stays
        # The Recipe screen's grid shows it (layer 0 of a: the best's first value), and its
        # ctrl+z undoes the same one edit.
        await pilot.press("f3")
        await pilot.pause()
        grid = app.screen.grid_model
        column = [c.model for c in grid.columns].index("a")
        assert grid.value(1, column) == pytest.approx(best.values[0], abs=1e-3)
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert weights() == original and not document.modified
        assert grid.value(1, column) == pytest.approx(0.6)
        # Back on the Search screen: redo and undo there too.
        await pilot.press("f10")
        await pilot.pause()
        await pilot.press("ctrl+y")
        await pilot.pause()
        assert weights() == applied
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert weights() == original and not document.modified


async def test_leaving_mid_candidate_drops_it_at_once(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaving the app (the screen's stop_search, run on unmount) stops the candidate in progress
    at its model's next block instead of waiting for its score; esc (stop) lets it finish."""
    from mergetui.search.evaluator import CandidateEvaluator

    recipe_path = write_recipe(tmp_path, llama_family)
    out = recipe_path.parent / "soup-evolve"
    reached, release = threading.Event(), threading.Event()
    real = CandidateEvaluator.evaluate
    calls: list[int] = []

    def held_before_the_second(self, recipe):
        calls.append(1)
        if len(calls) == 2:  # the second candidate: hold before its merge and scoring
            reached.set()
            assert release.wait(60)
        return real(self, recipe)

    monkeypatch.setattr(CandidateEvaluator, "evaluate", held_before_the_second)
    app = MergeTuiApp(RecipeDocument.open(recipe_path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_search_screen(app, pilot)
        await pilot.press("ctrl+r")
        await wait_for(pilot, reached.is_set)
        abandon = screen.abandon_event
        assert abandon is not None and not abandon.is_set()
        screen.action_stop()  # esc: the candidate in progress would finish
        assert not abandon.is_set()
        screen.stop_search()  # leaving: it is dropped
        assert abandon.is_set() and screen.cancel_event.is_set()
        release.set()
        await wait_for(pilot, lambda: not screen.running)
        assert screen.outcome == "stopped"
        assert lines(out) == 1  # the first candidate kept, the second never written
        assert len(calls) == 2


async def test_a_bad_form_says_why_and_starts_nothing(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    recipe_path = write_recipe(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(recipe_path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_search_screen(app, pilot)
        screen.query_one("#search-texts").value = "../calib/missing.txt"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not screen.running and screen.outcome == "failed"
        state = str(screen.query_one("#search-state").render())
        assert "missing.txt" in state and "does not exist" in state
        screen.query_one("#search-texts").value = "../calib/prose.txt"
        screen.query_one("#search-budget").value = "2"  # below the population of 4
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not screen.running
        assert "below the population" in str(screen.query_one("#search-state").render())
        assert not (recipe_path.parent / "soup-evolve").exists()
        # Another search's results in the folder: refused, with what to do here.
        out = recipe_path.parent / "soup-evolve"
        out.mkdir()
        foreign = (
            '{"evaluation": 0, "generation": 0, "candidate": 0, "values": {"x[0]": 0.5}, '
            '"scores": {"perplexity:prose.txt": 1.0}, "fitness": 1.0, "seconds": 0.1}\n'
        )
        (out / "evaluations.jsonl").write_text(foreign)
        screen.query_one("#search-budget").value = "8"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.running)
        state = str(screen.query_one("#search-state").render())
        assert screen.outcome == "failed" and "from another search" in state
        assert "move soup-evolve away" in state and "--out" not in state
        assert (out / "evaluations.jsonl").read_text() == foreign


async def test_palette_help_and_reaching_the_screen(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        titles = {c.title: c for c in app.palette_commands(app.screen)}
        assert titles["Go to Search"].help.startswith("f10")
        titles["Go to Search"].callback()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SearchScreen)
        ours = {c.title: c.help for c in app.palette_commands(screen)}
        assert ours["Search: start or resume"].startswith("ctrl+r")
        assert ours["Search: apply the best"].startswith("ctrl+b")
        sections = dict(screen.help_sections())
        keys = " ".join(k for k, _ in sections["Search screen"])
        assert "^r" in keys and "esc" in keys and "^b" in keys


async def test_another_recipe_fills_the_form_again(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    other = tmp_path / "other.toml"
    other.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "slerp"
            base = "a"
            [parameters]
            t = 0.3
            [models.a]
            source = "{llama_family["a"]}"
            [models.b]
            source = "{llama_family["b"]}"
            """
        ),
        encoding="utf-8",
    )
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await on_search_screen(app, pilot)
        assert screen.form.read().budget == 8  # from soup.toml's table
        app._open_path(str(other))  # what ctrl+o does once a path is typed
        await pilot.press("ctrl+r")  # the form is filled for the new recipe first, not started
        await pilot.pause()
        assert not screen.running
        form = screen.form.read()
        assert form.choices == ("t",) and form.parameters == ("t",)  # slerp's number
        assert (form.budget, form.texts) == (48, ("calib/prose.txt",))  # defaults, demo texts
        assert screen.out_dir == tmp_path / "other-evolve"
        title = str(screen.query_one("#best-title").render())
        assert title.startswith("start")
        screen.query_one("#search-budget").value = "12"
        await pilot.pause()
        state = str(screen.query_one("#search-state").render())
        assert "scores 12 candidates → other-evolve" in state


# -- the plain parts ---------------------------------------------------------------------------


def test_settings_default_to_the_demo_texts(tmp_path: Path, llama_family) -> None:
    recipe_path = write_recipe(tmp_path, llama_family, search="")
    (tmp_path / "calib" / "code.txt").write_text("def f():\n    return 1\n", encoding="utf-8")
    recipe = load_recipe(recipe_path)
    settings = settings_for(recipe, recipe_path.parent)
    assert settings.texts == ("../calib/code.txt", "../calib/prose.txt")
    assert settings.parameters == ("weight",)  # linear's tuned parameter
    assert (settings.layer_groups, settings.smooth, settings.budget) == (4, True, 48)
    assert demo_texts(tmp_path / "no" / "where") == ()


def test_the_table_keeps_what_the_form_does_not_show() -> None:
    table = {
        "parameters": ["weight"],
        "bounds": {"weight": [0.1, 0.9]},
        "population": 6,
        "objective": [
            {"kind": "perplexity", "text": "a.txt", "weight": 3.0},
            {"kind": "lm_eval", "task": "hellaswag", "limit": 10},
        ],
    }
    settings = SearchSettings(
        choices=("weight",),
        parameters=("weight",),
        layer_groups=3,
        smooth=False,
        texts=("a.txt", "b.txt"),
        budget=12,
        seed=7,
        table=table,
    )
    made = search_table(settings)
    assert made["bounds"] == {"weight": [0.1, 0.9]} and made["population"] == 6
    assert made["objective"] == [
        {"kind": "perplexity", "text": "a.txt", "weight": 3.0},
        {"kind": "perplexity", "text": "b.txt"},
        {"kind": "lm_eval", "task": "hellaswag", "limit": 10},
    ]
    assert (made["layer_groups"], made["smooth"], made["budget"], made["seed"]) == (3, False, 12, 7)
    assert table["objective"][0] == {"kind": "perplexity", "text": "a.txt", "weight": 3.0}


def test_progress_follows_the_events(tmp_path: Path) -> None:
    progress = SearchProgress()
    assert "loading" in progress.running_line()
    progress.observe(events.SearchStarted(4, 2, ("a.weight[0]",), 2, tmp_path, "cpu", "local"))
    progress.observe(events.CandidateScored(0, 0, (0.5,), {}, 3.0, 0.0, True))
    progress.observe(events.NewBest(0, 3.0, (0.5,), None))
    progress.observe(events.CandidateScored(1, 0, (0.6,), {}, 4.0, 0.0, True))
    progress.observe(events.GenerationDone(0, 2, 3.0, 3.5, None))
    progress.observe(events.CandidateScored(2, 1, (0.7,), {}, 2.0, 1.5))
    progress.observe(events.NewBest(2, 2.0, (0.7,), None))
    progress.observe(events.CandidateScored(3, 1, (0.8,), {}, 5.0, 1.5))
    progress.observe(events.GenerationDone(1, 4, 2.0, 3.5, 12.0))
    assert progress.best_curve == [3.0, 2.0] and progress.median_curve == [3.5, 3.5]
    assert [row.resumed for row in progress.rows] == [True, True, False, False]
    line = progress.running_line()
    assert "4/4 evaluated" in line and "best 2.0000" in line and "2 resumed" in line
    assert "ETA 12.0 s" in line
    progress.observe(events.SearchFinished(4, 2.0, (0.7,), tmp_path, False))
    assert "done" in progress.ended_line("finished") and progress.eta_seconds is None


def test_the_braille_curve() -> None:
    # Two points, a falling line: the first at the top left, the last at the bottom right.
    best, median = plot_dots([[2.0, 1.0], [2.0, 2.0]], 4, 2, 1.0, 2.0)
    assert best[0] & 0x01 and best[2 * 4 - 1] & 0x80  # top-left dot, bottom-right dot
    assert all(best[cell] for cell in range(8) if cell in (0, 1, 6, 7))  # connected
    assert median[0] & 0x01 and median[3] & 0x08 and not any(median[4:])  # flat along the top
    assert chr(BRAILLE | best[0]) != " "
    assert plot_dots([[float("nan"), 1.0]], 2, 1, 0.0, 2.0)[0] == [0, 0x10]  # NaN: no line
    assert scale_label(2.345678) == "2.346" and len(scale_label(123456789.0)) <= 6
    assert fitness_text(None) == "—" and fitness_text(3.14159) == "3.1416"

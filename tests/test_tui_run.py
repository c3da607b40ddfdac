"""The Run screen driven by keys (Pilot) on tiny real checkpoints: a merge with its progress messages,
cancel (confirmed, refused), replace and output prompts, failures, the history and reopening a past
run, "chat with it" and "push to Hub", and the palette's Run merge from another screen."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from tui_helpers import gate_the_engine, log_text, on_run_screen, until_done, wait_reached

from mergetui.editing.document import RecipeDocument
from mergetui.merge.history import load_history
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.recipe.toml_write import dumps_toml
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.dialogs.confirm import ConfirmDialog, ConfirmQuit
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.recipe.screen import RecipeScreen
from mergetui.tui.run import clocks, worker
from mergetui.tui.run.messages import ProgressState, RunProgress
from mergetui.tui.run.screen import RunScreen
from mergetui.tui.run.worker import Relay as _Relay


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


def write_recipe(tmp_path: Path, family: dict[str, Path], output: str | None = "../out") -> Path:
    """recipes/soup.toml; its output (relative to the recipe file) is tmp_path/out by default."""
    path = tmp_path / "recipes" / "soup.toml"
    path.parent.mkdir(exist_ok=True)
    out_line = f'output = "{output}"\n' if output else ""
    path.write_text(
        textwrap.dedent(
            """\
            [merge]
            method = "linear"
            dtype = "float32"
            """
        )
        + out_line
        + textwrap.dedent(
            f"""
            [models.a]
            source = "{family["a"]}"
            [models.a.parameters]
            weight = 0.6

            [models.b]
            source = "{family["b"]}"
            [models.b.parameters]
            weight = 0.4
            """
        ),
        encoding="utf-8",
    )
    return path


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".mergetui-tmp-" in p.name]


async def test_merge_from_the_app_with_progress_and_history(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe_path = write_recipe(tmp_path, llama_family)
    monkeypatch.setattr(worker, "PROGRESS_HZ", 10**6)  # every tensor becomes a message
    seen: list[ProgressState] = []
    original = RunScreen._show_progress

    def spy(self, state):
        seen.append(state)
        original(self, state)

    monkeypatch.setattr(RunScreen, "_show_progress", spy)
    app = MergeTuiApp(RecipeDocument.open(recipe_path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        assert screen.check_action("cancel_merge", ()) is False  # nothing to cancel yet
        await pilot.press("r")
        await until_done(app, pilot, screen)
        out = tmp_path / "out"
        assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
        assert temporaries(tmp_path) == []
        # Progress came as messages while it ran: bytes and tensors only grow, and end complete.
        done = [s.tensors_done for s in seen]
        assert len([d for d in done if 0 < d]) >= 5
        assert done == sorted(done)
        final = seen[-1]
        assert final.tensors_done == final.tensor_count == 2 + 4 * 9 + 1
        assert final.bytes_done == final.total_bytes
        assert final.layers_done == {0, 1, 2, 3} and final.pre_done and final.post_done
        assert screen.last_outcome == "finished"
        stats = str(screen.query_one("#run-stats").render())
        assert f"{final.tensor_count}/{final.tensor_count} tensors" in stats
        assert "ETA" in stats and "/s" in stats
        assert "4/4" in str(screen.query_one("#run-layers").render())
        log = log_text(screen)
        assert "linear of a, b → out" in log and "finished in" in log
        assert app.last_merge_output == str(out)
        assert screen.check_action("chat_with_output", ()) is True
        # The history: one finished run, with the recipe as it was run.
        history = load_history()
        assert [r.outcome for r in history] == ["finished"]
        assert history[0].output_dir == str(out)
        assert history[0].recipe_toml == dumps_toml(app.document.recipe)
        assert history[0].recipe_path == str(recipe_path)
        assert screen.query_one("#run-history").row_count == 1


async def test_unsaved_edits_are_merged(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        with app.document.edit("weight"):
            app.document.recipe.models["a"].parameters["weight"] = 1.0
            app.document.recipe.models["b"].parameters["weight"] = 0.0
        await pilot.press("r")
        await until_done(app, pilot, screen)
    from safetensors.torch import load_file

    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    a = load_file(str(llama_family["a"] / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    assert merged[name].equal(a[name])
    assert load_history()[0].recipe().models["a"].parameters["weight"] == 1.0


async def test_cancel_asks_then_leaves_nothing(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        for _ in range(200):
            if reached.is_set():
                break
            await pilot.pause(0.05)
        assert reached.is_set() and screen.running
        assert screen.check_action("run_merge", ()) is False
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await pilot.pause()
        assert screen.cancel_event is not None and screen.cancel_event.is_set()
        release.set()
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "cancelled"
        assert not (tmp_path / "out").exists()
        assert temporaries(tmp_path) == []
        assert "nothing was written" in str(screen.query_one("#run-state").render())
        assert [r.outcome for r in load_history()] == ["cancelled"]
        assert screen.check_action("chat_with_output", ()) is False


async def test_cancel_refused_keeps_merging(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        for _ in range(200):
            if reached.is_set():
                break
            await pilot.pause(0.05)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await pilot.pause()
        assert not screen.cancel_event.is_set()
        release.set()
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "finished"
        assert (tmp_path / "out" / "model.safetensors").is_file()


async def test_existing_output_asks_before_replacing(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    from mergetui.cli import main

    recipe = write_recipe(tmp_path, llama_family)
    # A previous merge's output: the only kind of folder a merge replaces (tests/test_harden_output)
    assert main(["merge", str(recipe), "--out", str(tmp_path / "out")]) == 0
    (tmp_path / "out" / "README.md").write_text("old")
    app = MergeTuiApp(RecipeDocument.open(recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await pilot.pause()
        assert not screen.running and (tmp_path / "out" / "README.md").read_text() == "old"
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("y")
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "finished"
        assert (tmp_path / "out" / "README.md").read_text() != "old"
        assert (tmp_path / "out" / "model.safetensors").is_file()


async def test_a_recipe_without_output_asks_for_one(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family, output=None)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, TextPrompt)
        assert app.screen.initial == str(Path("merges") / "soup")
        await pilot.press("enter")
        await until_done(app, pilot, screen)
        assert app.document.recipe.output == str(Path("merges") / "soup")
        assert app.document.modified
        # Relative to the recipe's folder, as every path in a recipe.
        assert (tmp_path / "recipes" / "merges" / "soup" / "model.safetensors").is_file()


async def test_a_failed_merge_says_why_and_is_recorded(tmp_path: Path) -> None:
    recipe = tmp_path / "broken.toml"
    recipe.write_text(
        '[merge]\nmethod = "linear"\noutput = "out"\n\n'
        '[models.ghost]\nsource = "./no-such-model"\n[models.ghost.parameters]\nweight = 1.0\n',
        encoding="utf-8",
    )
    app = MergeTuiApp(RecipeDocument.open(recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "failed"
        state = str(screen.query_one("#run-state").render())
        assert "failed" in state and "no-such-model" in state
        assert not (tmp_path / "out").exists()
        history = load_history()
        assert history[0].outcome == "failed" and "no-such-model" in history[0].message
        await pilot.press("f3")  # the app goes on
        await pilot.pause()
        assert isinstance(app.screen, RecipeScreen)


async def test_reopen_a_past_runs_recipe(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    recipe_path = write_recipe(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(recipe_path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await until_done(app, pilot, screen)
        ran = dumps_toml(app.document.recipe)
        with app.document.edit("method"):
            app.document.recipe.method = "task_arithmetic"
        await pilot.press("f7")
        await pilot.pause()
        assert app.screen.query_one("#run-history").has_focus
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuit)  # the edit is not saved: ask first
        await pilot.press("d")
        await pilot.pause()
        assert app.current_mode == "recipe"
        assert dumps_toml(app.document.recipe) == ran
        assert app.document.origin == recipe_path
        assert not app.document.modified


async def test_chat_with_it_loads_the_output_on_the_chat_screen(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await until_done(app, pilot, screen)
        await pilot.press("t")
        await pilot.pause()
        assert app.current_mode == "chat"
        for _ in range(200):
            await app.workers.wait_for_complete()
            await pilot.pause(0.05)
            if app.screen.loaded is not None:
                break
        assert app.screen.loaded.path == (tmp_path / "out").resolve()


async def test_push_to_hub_hands_the_folder_to_the_app(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    pushed: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("u")  # nothing finished yet: no push
        await pilot.press("r")
        await until_done(app, pilot, screen)
        if not hasattr(MergeTuiApp, "action_push_to_hub"):
            await pilot.press("u")
            await pilot.pause()
            assert any("not available" in n.message for n in app._notifications)
        app.action_push_to_hub = pushed.append
        await pilot.press("u")
        await pilot.pause()
    assert pushed == [str(tmp_path / "out")]


async def test_palette_run_merge_from_the_recipe_screen(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.4)
        await app.workers.wait_for_complete()
        assert isinstance(app.screen, RecipeScreen)
        commands = {c.title: c for c in app.palette_commands(app.screen)}
        commands["Run merge"].callback()
        await pilot.pause(0.2)
        assert app.current_mode == "run"
        screen = app.screen
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "finished"
        titles = {c.title for c in app.palette_commands(screen)}
        assert {"Cancel merge", "Chat with the merge", "Reopen a past run's recipe"} <= titles


def test_progress_is_coalesced(llama_family: dict[str, Path], tmp_path: Path) -> None:
    """Hundreds of tensors in a burst give a handful of progress messages, and the last is exact."""
    from mergetui.merge.events import TensorDone
    from mergetui.merge.plan import make_plan
    from mergetui.recipe.io import load_recipe

    recipe_path = write_recipe(tmp_path, llama_family)
    plan = make_plan(load_recipe(recipe_path), recipe_dir=recipe_path.parent)

    class Collector:
        def __init__(self) -> None:
            self.messages: list = []

        def post_message(self, message) -> bool:
            self.messages.append(message)
            return True

    collector = Collector()
    relay = _Relay(collector, plan)
    done = 0
    for _ in range(20):  # 20 passes over the tensors, as fast as Python goes
        for tensor in plan.tensors:
            done += tensor.nbytes
            relay(TensorDone(tensor.index, plan.tensor_count, tensor.name, done, 0, tensor.layer))
    relay.flush()
    progress = [m for m in collector.messages if isinstance(m, RunProgress)]
    assert 1 <= len(progress) < 20 * plan.tensor_count / 10
    assert progress[-1].state.tensors_done == 20 * plan.tensor_count
    assert progress[-1].state.bytes_done == done


def test_history_file_is_json_lines(tmp_path: Path) -> None:
    from mergetui.merge.history import RunRecord, append_run, history_path

    append_run(RunRecord(1.0, "[merge]\n", "out", "finished", 2.0))
    lines = history_path().read_text().splitlines()
    assert history_path().parent == tmp_path / "data"
    assert json.loads(lines[0])["outcome"] == "finished"


# -- found in the newcomer walkthrough (issue 6) ---------------------------------------------------


async def test_the_state_line_names_the_device_auto_chose(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan says `auto`; the state line must say where the engine really merges."""
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await wait_reached(pilot, reached)
        await pilot.pause()
        state = str(screen.query_one("#run-state").render())
        assert "merging on cpu" in state and "auto" not in state
        assert "merging on cpu" in log_text(screen)
        release.set()
        await until_done(app, pilot, screen)


async def test_a_plan_notice_is_logged_once(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    recipe = tmp_path / "dare.toml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "dare_ties"
            base = "base"
            output = "out"

            [models.base]
            source = "{llama_family["base"]}"

            [models.a]
            source = "{llama_family["a"]}"
            [models.a.parameters]
            weight = 1.0
            density = 0.5
            """
        ),
        encoding="utf-8",
    )
    app = MergeTuiApp(RecipeDocument.open(recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "finished"
        notes = [line for line in log_text(screen).splitlines() if line.startswith("note:")]
        assert any("random" in line and "seed" in line for line in notes), notes
        assert len(notes) == len(set(notes)), notes  # each notice once, not plan + engine


async def test_a_cancelled_merge_shows_no_eta_and_no_current_tensor(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, release = gate_the_engine(monkeypatch)
    monkeypatch.setattr(worker, "PROGRESS_HZ", 10**6)  # the held tensor is drawn at once
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await wait_reached(pilot, reached)
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        release.set()
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "cancelled"
        stats = str(screen.query_one("#run-stats").render())
        assert "ETA —" in stats, stats
        assert str(screen.query_one("#run-tensor").render()) == ""


async def test_the_cancel_question_closes_when_the_merge_ends_first(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await wait_reached(pilot, reached)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        release.set()  # the merge finishes while the question is open
        await until_done(app, pilot, screen)
        await pilot.pause()
        assert screen.last_outcome == "finished"
        assert app.screen is screen  # no moot "Cancel the merge?" left on top
        assert screen.cancel_dialog is None
        assert any("finished before" in n.message for n in app._notifications)
        await pilot.press("t")  # the screen's keys work again
        await pilot.pause()
        assert app.current_mode == "chat"


async def test_history_tab_says_how_to_reopen_and_the_title_says_from_history(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    recipe_path = write_recipe(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(recipe_path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await until_done(app, pilot, screen)
        await pilot.press("f7")
        await pilot.pause()
        hint = screen.query_one("#run-history-hint")
        assert hint.region.height == 1 and "o" in str(hint.render())
        assert "reopens" in str(hint.render())
        await pilot.press("o")
        await pilot.pause()
        assert app.current_mode == "recipe"
        assert app.document.display_name == "soup.toml (from history)"
        assert "(from history)" in app.sub_title
        # A YAML import still says so.
        assert RecipeDocument(app.document.recipe, origin=Path("x.yml")).display_name == (
            "x.yml (imported)"
        )


async def test_run_help_explains_each_key(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    from mergetui.tui.help import HelpScreen

    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        await on_run_screen(app, pilot)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        rows = dict(app.screen.sections[0][1])
        assert rows["r"] == "Run the merge of the open recipe"
        assert rows["c"] == "Cancel the running merge (asks first)"
        assert rows["t"] == "Chat with the finished merge (F5)"
        assert rows["u"] == "Push the finished merge to the Hub"


async def test_switching_back_redraws_the_summary_only_when_it_changed(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from textual.widgets import Static

    updates: list[str] = []
    real_update = Static.update

    def spy(self, content="", *args, **kwargs):
        if self.id in ("run-summary", "run-state"):
            updates.append(self.id)
        return real_update(self, content, *args, **kwargs)

    monkeypatch.setattr(Static, "update", spy)
    refreshes: list[int] = []
    real_refresh = RunScreen.refresh_bindings

    def count_refresh(self):
        refreshes.append(1)
        return real_refresh(self)

    monkeypatch.setattr(RunScreen, "refresh_bindings", count_refresh)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        assert "output: out" in str(screen.query_one("#run-summary").render())
        updates.clear()
        before = len(refreshes)
        await pilot.press("f3")
        await pilot.press("f4")
        await pilot.pause()
        assert updates == []  # nothing changed: no update, no second layout
        assert len(refreshes) > before  # the footer's keys are still re-checked
        with app.document.edit("output"):
            app.document.recipe.output = "elsewhere"
        await pilot.press("f3")
        await pilot.press("f4")
        await pilot.pause()
        assert updates == ["run-summary"]
        # Beside the recipe (recipes/soup.toml), shown from the working folder.
        assert "output: recipes/elsewhere" in str(screen.query_one("#run-summary").render())


async def test_elapsed_keeps_counting_while_no_tensor_finishes(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the walkthrough: a slow first tensor left "elapsed 0.2 s" on screen for seconds."""
    now = [1000.0]
    monkeypatch.setattr(clocks, "CLOCK", lambda: now[0])
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await wait_reached(pilot, reached)  # the engine is held inside its first tensor
        await pilot.pause()
        assert "elapsed 0.0 s" in str(screen.query_one("#run-stats").render())
        now[0] += 42.0
        await pilot.pause(1.3)  # one tick of the once-a-second redraw
        assert "elapsed 42.0 s" in str(screen.query_one("#run-stats").render())
        release.set()
        await until_done(app, pilot, screen)
        assert screen.ticker is None  # stopped with the merge


async def test_o_off_the_history_tab_shows_the_runs_and_keeps_the_recipe(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    """Found in the walkthrough: "o" typed on the Log tab replaced the open recipe with a past
    run's, without a question when nothing was unsaved."""
    from textual.widgets import TabbedContent

    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await until_done(app, pilot, screen)
        document = app.document
        assert screen.query_one(TabbedContent).active == "log"
        await pilot.press("o")
        await pilot.pause()
        assert app.document is document and app.current_mode == "run"
        assert screen.query_one(TabbedContent).active == "history"
        assert screen.query_one("#run-history").has_focus
        await pilot.press("o")  # now a run is in sight: o reopens it
        await pilot.pause()
        assert app.current_mode == "recipe" and app.document is not document


async def test_at_80x24_the_idle_hint_and_the_dialog_keep_the_screen_readable(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    """Found in the walkthrough: at 80 columns the idle hint was cut at "· the output", and a
    dialog hid the screen it asks about (the app's opaque Screen background reached dialogs)."""
    (tmp_path / "out").mkdir()
    app = MergeTuiApp(RecipeDocument.open(write_recipe(tmp_path, llama_family)))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await on_run_screen(app, pilot)
        state = screen.query_one("#run-state")
        assert "asks before replacing it" in str(state.render())
        assert state.region.height == 2  # wrapped onto a second line, not cut
        assert screen.styles.background.a == 1  # screens are opaque...
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert app.screen.styles.background.a < 1  # ...a dialog dims the Run screen below it
        await pilot.press("n")
        await pilot.pause()

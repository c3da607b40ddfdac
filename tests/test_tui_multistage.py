"""A multi-stage file in the app (Pilot, tiny real checkpoints): the Recipe screen shows its stages
and switches between them; the Run screen runs the whole file (stage labels, each stage's progress,
the same tensors as `mergetui merge`), a rerun skips every stage, cancel keeps the finished stage,
and the final output is the merge the Chat screen loads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tui_helpers import gate_the_engine, log_text, on_run_screen, until_done, wait_reached

from mergetui.cli import main
from mergetui.editing.document import RecipeDocument
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.dialogs.confirm import ConfirmDialog
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.recipe.screen import RecipeScreen


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


def write_multi(folder: Path, family: dict[str, Path], *, output: str | None = "final") -> Path:
    """A linear soup of a and b (stage 'soup'), then SLERP from the base towards the soup (the
    final stage): folder/multi.toml writing the final stage to `output` (beside the file), or,
    with no output, mergekit-multi's YAML (folder/multi.yml), which has no output key."""
    if output is None:
        path = folder / "multi.yml"
        path.write_text(
            textwrap.dedent(
                f"""\
                name: soup
                merge_method: linear
                models:
                  - model: {family["a"]}
                    parameters: {{weight: 0.6}}
                  - model: {family["b"]}
                    parameters: {{weight: 0.4}}
                dtype: float32
                ---
                merge_method: slerp
                base_model: {family["base"]}
                models:
                  - model: {family["base"]}
                  - model: soup
                parameters:
                  t: [0, 0.5, 1]
                dtype: float32
                """
            ),
            encoding="utf-8",
        )
        return path
    path = folder / "multi.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [[stages]]
            name = "soup"

            [stages.merge]
            method = "linear"
            dtype = "float32"

            [stages.models.a]
            source = "{family["a"]}"
            parameters = {{ weight = 0.6 }}

            [stages.models.b]
            source = "{family["b"]}"
            parameters = {{ weight = 0.4 }}

            [[stages]]

            [stages.merge]
            method = "slerp"
            base = "base"
            dtype = "float32"
            output = "{output}"

            [stages.models.base]
            source = "{family["base"]}"

            [stages.models.soup]
            source = "soup"

            [stages.parameters]
            t = [0, 0.5, 1]
            """
        ),
        encoding="utf-8",
    )
    return path


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def stamp(folder: Path) -> int:
    return (folder / "mergetui.toml").stat().st_mtime_ns


async def test_the_recipe_screen_shows_the_stages_and_switches(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    path = write_multi(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RecipeScreen)
        bar = str(screen.query_one("#stage-bar").render())
        assert "1 soup: linear of a, b" in bar and "2 final: slerp of base, soup" in bar
        assert app.sub_title == "multi.toml · stage 1/2: soup"
        keys = [row for _, rows in screen.help_sections() for row in rows]
        assert any("Next stage" in str(row) for row in keys)
        actions = {c.action for c in app.palette_commands(screen)}
        assert {"stage(1)", "stage(-1)"} <= actions
        assert app.document.recipe.method == "linear"
        await pilot.press("f9")
        await pilot.press("ctrl+right")
        await pilot.pause(0.3)
        assert app.document.stage_index == 1 and app.document.recipe.method == "slerp"
        assert screen.query_one("#recipe-tabs").active == "problems"  # the same tab
        # 'soup' is the first stage's output, not a missing Hub model
        assert not [p for p in screen.problems if "soup" in str(getattr(p, "where", ""))]
        assert app.sub_title == "multi.toml · stage 2/2: final"
        await pilot.press("ctrl+right")  # round to the first again
        await pilot.pause()
        assert app.document.stage_index == 0
        # ctrl+s does not overwrite the multi-stage file with one stage
        before = path.read_text()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert path.read_text() == before
        assert any("multi-stage" in n.message for n in app._notifications)


async def test_run_screen_runs_both_stages_like_the_cli_then_a_rerun_skips_both(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_multi(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(path))
    final, soup = tmp_path / "final", tmp_path / "final-stages" / "soup"
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        summary = str(screen.query_one("#run-summary").render())
        assert "2 stages: soup (linear), final (slerp)" in summary
        await pilot.press("r")
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "finished", log_text(screen)
        log = log_text(screen)
        first, second = log.index("stage 1/2: soup → "), log.index("stage 2/2: final → ")
        assert first < log.index("linear of") < second < log.index("slerp of")
        assert "2 stages, 2 merged, 0 up to date" in log
        assert app.last_merge_output == str(final)
        assert screen.check_action("chat_with_output", ()) is True
        state = str(screen.query_one("#run-state").render())
        assert "2 merged" in state and "t chat" in state
        merged_final, merged_soup = stamp(final), stamp(soup)

        # again: both up to date, nothing merged
        await pilot.press("r")
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "finished"
        log = log_text(screen)
        assert "stage 1/2: soup → " in log and "stage 2/2: final → " in log
        assert log.count("up to date (merged from this recipe): skipped") == 2
        assert "2 stages, 0 merged, 2 up to date" in log
        assert (stamp(final), stamp(soup)) == (merged_final, merged_soup)
        assert app.last_merge_output == str(final)

    # the same tensors as `mergetui merge` of the same file
    cli_out = tmp_path / "cli"
    assert main(["merge", str(path), "--out", str(cli_out), "--device", "cpu"]) == 0
    for ours, theirs in ((final, cli_out), (soup, tmp_path / "cli-stages" / "soup")):
        a, b = tensors(ours), tensors(theirs)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name


async def test_no_output_asks_and_the_stages_go_beside_it(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    path = write_multi(tmp_path, llama_family, output=None)
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        assert "not set" in str(screen.query_one("#run-summary").render())
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, TextPrompt)
        assert app.screen.initial == str(Path("merges") / "multi")
        await pilot.press("enter")
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "finished", log_text(screen)
        # relative to the file's folder; the named stages beside it, as `mergetui merge --out`
        assert (tmp_path / "merges" / "multi" / "model.safetensors").is_file()
        assert (tmp_path / "merges" / "multi-stages" / "soup" / "model.safetensors").is_file()
        assert not app.document.modified  # the chosen folder is the run's, not an edit


async def test_cancel_in_the_second_stage_keeps_the_first_and_a_rerun_skips_it(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_multi(tmp_path, llama_family)
    final, soup = tmp_path / "final", tmp_path / "final-stages" / "soup"
    from mergetui.merge import runner

    real = runner.run_merge
    calls = {"n": 0}

    reached, release = gate_the_engine(monkeypatch)
    gated = runner.run_merge

    def pick(plan, **kwargs):  # the first stage runs freely, the second is held
        calls["n"] += 1
        return (real if calls["n"] == 1 else gated)(plan, **kwargs)

    monkeypatch.setattr(runner, "run_merge", pick)
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        await pilot.press("r")
        await wait_reached(pilot, reached)
        state = str(screen.query_one("#run-state").render())
        assert "stage 2/2: final" in state
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await pilot.pause()
        release.set()
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "cancelled"
        assert (soup / "model.safetensors").is_file()
        assert not final.exists()
        assert not [p for p in tmp_path.iterdir() if ".mergetui-tmp-" in p.name]
        state = str(screen.query_one("#run-state").render())
        assert "stage 2/2: final was not written" in state and "kept" in state
        assert screen.check_action("chat_with_output", ()) is False
        kept = stamp(soup)

        monkeypatch.setattr(runner, "run_merge", real)
        await pilot.press("r")
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "finished", log_text(screen)
        log = log_text(screen)
        assert log.count("skipped") == 1 and "1 merged, 1 up to date" in log
        assert stamp(soup) == kept and (final / "model.safetensors").is_file()


def test_a_stage_reopened_from_the_history_is_never_saved_over_its_file(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    from mergetui.errors import UserError

    path = write_multi(tmp_path, llama_family)
    stage = RecipeDocument.open(path).recipe
    document = RecipeDocument(stage, path=None, origin=path, origin_note="from history")
    before = path.read_text()
    with pytest.raises(UserError) as caught:
        document.save(document.suggested_path())
    assert "multi-stage file" in caught.value.message
    assert path.read_text() == before
    assert document.save(tmp_path / "soup.toml").is_file()  # elsewhere it saves as a recipe


async def test_an_edited_stage_asks_before_replacing_and_reruns_what_depends_on_it(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    path = write_multi(tmp_path, llama_family)
    assert main(["merge", str(path), "--device", "cpu"]) == 0  # both stages merged by the CLI
    final, soup = tmp_path / "final", tmp_path / "final-stages" / "soup"
    merged_final = stamp(final)
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_run_screen(app, pilot)
        with app.document.edit("weight"):  # stage 1 is open: an unsaved edit of the soup
            app.document.recipe.models["a"].parameters["weight"] = 1.0
            app.document.recipe.models["b"].parameters["weight"] = 0.0
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)  # soup's folder is another recipe's now
        await pilot.press("n")
        await pilot.pause()
        assert not screen.running and screen.last_outcome is None
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("y")
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "finished", log_text(screen)
        assert "2 stages, 2 merged, 0 up to date" in log_text(screen)
        assert stamp(final) != merged_final  # stale once the soup was merged again
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(tensors(soup)[name], tensors(llama_family["a"])[name])
    assert path.read_text().count("weight = 0.6") == 1  # the file itself is not written

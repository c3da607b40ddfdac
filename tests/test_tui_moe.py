"""An MoE recipe in the app (Pilot, tiny real checkpoints): the Recipe screen shows it read-only
(base, gate mode, experts per token, each expert's prompts, the shared expert, what its models'
headers say); the Run screen assembles it with the CLI's core (the same tensors as `mergetui
merge`), a cancel leaves nothing, and the output is the merge the Chat screen loads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tui_helpers import log_text, on_screen, until_done

from mergetui.cli import main
from mergetui.editing.document import RecipeDocument
from mergetui.errors import UserError
from mergetui.merge.history import load_history
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.dialogs.confirm import ConfirmDialog
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.recipe.moe_view import MoeView
from mergetui.tui.recipe.screen import RecipeScreen
from mergetui.tui.run.screen import RunScreen


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


def write_yaml(folder: Path, family: dict[str, Path], gate_mode: str = "cheap_embed") -> Path:
    """A mergekit-moe config of three experts, one with negative prompts (no output key)."""
    path = folder / "moe.yml"
    path.write_text(
        f"""\
# three experts from one base
base_model: {family["base"]}
gate_mode: {gate_mode}
dtype: float32
experts_per_token: 2
experts:
  - source_model: {family["a"]}
    positive_prompts: ["def parse(line):", "import os"]
  - source_model: {family["b"]}
    positive_prompts: ["Once upon a time there was"]
    negative_prompts: ["def main():"]
  - source_model: {family["c"]}
    positive_prompts: ["The weather today"]
    residual_scale: 0.5
""",
        encoding="utf-8",
    )
    return path


def write_toml(folder: Path, family: dict[str, Path]) -> Path:
    """The [moe] form with an output beside the file and a seed (random gates)."""
    path = folder / "moe.toml"
    path.write_text(
        f"""\
[moe]
base = "{family["base"]}"
gate_mode = "random"
dtype = "float32"
experts_per_token = 1
output = "out"
seed = 7

[[moe.experts]]
source = "{family["a"]}"
positive_prompts = ["def parse(line):"]

[[moe.experts]]
source = "{family["b"]}"
positive_prompts = ["Once upon a time"]
""",
        encoding="utf-8",
    )
    return path


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same(ours: Path, theirs: Path) -> None:
    a, b = tensors(ours), tensors(theirs)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (ours / "config.json").read_text() == (theirs / "config.json").read_text()


async def test_the_recipe_screen_shows_the_experts_prompts_and_gate_mode(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    path = write_yaml(tmp_path, llama_family)
    before = path.read_text()
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_screen(app, pilot, "f3", RecipeScreen)
        assert isinstance(screen, RecipeScreen)
        assert app.sub_title == "moe.yml · MoE"
        view = screen.query_one(MoeView)
        assert view.display and not screen.query_one("#recipe-tabs").display
        text = view.text
        assert f"base {llama_family['base']}" in text
        assert "gate mode cheap_embed · 2 expert(s) per token · dtype float32" in text
        assert "Experts (3)" in text and "Shared expert" not in text
        for name in ("a", "b", "c"):
            assert str(llama_family[name]) in text
        lines = [line.strip() for line in text.splitlines()]
        a = lines.index(f"1 {llama_family['a']}")
        assert lines[a + 1 : a + 3] == ['+ "def parse(line):"', '+ "import os"']
        b = lines.index(f"2 {llama_family['b']}")
        assert lines[b + 1 : b + 3] == ['+ "Once upon a time there was"', '− "def main():"']
        assert "residual_scale 0.5" in lines
        assert "output not set (F4 r asks)" in text
        # the models' headers, read in a worker: what a run would assemble
        for _ in range(100):
            if "✓" in view.check or "✗" in view.check:
                break
            await pilot.pause(0.05)
        check = str(view.query_one("#moe-check").render())
        assert "✓ assembles a Mixtral of 3 experts, 4 layers" in check, check
        # keys: no tabs, undo or stages; save says why it does not write the file
        assert screen.check_action("tab", ("layers",)) is False
        keys = [row for _, rows in screen.help_sections() for row in rows]
        assert not any("Layers tab" in str(row) for row in keys)
        actions = {c.action for c in app.palette_commands(screen)}
        assert not {"undo", "stage(1)", "tab('layers')"} & actions
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert any("does not write" in n.message for n in app._notifications)
        assert path.read_text() == before
        assert not app.document.modified


async def test_a_shared_expert_and_a_refused_model_show(
    tmp_path: Path, tiny_model_factory, llama_family: dict[str, Path]
) -> None:
    base = tiny_model_factory("qwen2", seed=0)
    expert = tiny_model_factory("qwen2", seed=1, base=base)
    path = tmp_path / "qwen.yml"
    path.write_text(
        f"""\
base_model: {base}
gate_mode: cheap_embed
experts_per_token: 1
experts:
  - source_model: {expert}
    positive_prompts: ["def parse(line):"]
  - source_model: {llama_family["a"]}
    positive_prompts: ["Once upon a time"]
shared_experts:
  - source_model: {base}
    positive_prompts: ["hello"]
""",
        encoding="utf-8",
    )
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await on_screen(app, pilot, "f3", RecipeScreen)
        view = screen.query_one(MoeView)
        text = view.text
        assert "Experts (2)" in text and "Shared expert (1)" in text and '"hello"' in text
        for _ in range(100):
            if "✗" in view.check or "✓" in view.check:
                break
            await pilot.pause(0.05)
        check = str(view.query_one("#moe-check").render())
        assert "✗" in check and "architecture" in check, check


@pytest.mark.parametrize("gate_mode", ["cheap_embed", "hidden"])
async def test_run_screen_assembles_like_the_cli_and_records_it(
    tmp_path: Path, llama_family: dict[str, Path], gate_mode: str
) -> None:
    path = write_yaml(tmp_path, llama_family, gate_mode)
    app = MergeTuiApp(RecipeDocument.open(path))
    out = tmp_path / "merges" / "moe"
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_screen(app, pilot, "f4", RunScreen)
        assert isinstance(screen, RunScreen)
        summary = str(screen.query_one("#run-summary").render())
        assert f"MoE of 3 experts · gate {gate_mode} · 2 per token" in summary
        assert "not set (r asks)" in summary
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, TextPrompt)
        assert app.screen.initial == str(Path("merges") / "moe")
        await pilot.press("enter")
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "finished", log_text(screen)
        log = log_text(screen)
        assert f"MoE (Mixtral) of 3 experts, gate {gate_mode}, 2 per token → merges/moe" in log
        assert "assembling on " in log
        assert "finished in" in log and "a Mixtral of 3 experts" in log
        state = str(screen.query_one("#run-state").render())
        assert "assembled into merges/moe" in state
        stats = str(screen.query_one("#run-stats").render())
        count = len(tensors(out))
        assert f"{count}/{count} tensors" in stats
        assert "4/4" in str(screen.query_one("#run-layers").render())
        assert app.last_merge_output == str(out)
        assert screen.check_action("chat_with_output", ()) is True
        assert not app.document.modified  # the chosen folder is the run's, not an edit
        assert path.read_text().startswith("# three experts")

        # the history: one entry, which reopens as the MoE recipe (read-only)
        (record,) = load_history()
        assert record.method == "moe" and record.outcome == "finished"
        assert record.output_dir == str(out) and record.recipe_path == str(path)
        await pilot.press("f7")
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, RecipeScreen)
        assert app.document.moe is not None and len(app.document.moe.experts) == 3
        assert app.sub_title == "moe.yml · MoE (from history)"

    # the same model as `mergetui merge` of the same file (on the device the app picked: the
    # hidden gates are computed there)
    assert main(["merge", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert_same(out, tmp_path / "cli")


async def test_a_toml_with_an_output_asks_before_replacing_it(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    path = write_toml(tmp_path, llama_family)
    assert main(["merge", str(path), "--device", "cpu"]) == 0  # the CLI made ./out first
    (tmp_path / "out").rename(tmp_path / "cli")
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await on_screen(app, pilot, "f4", RunScreen)
        assert isinstance(screen, RunScreen)
        assert "output: out" in str(screen.query_one("#run-summary").render())
        await pilot.press("r")
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "finished", log_text(screen)
        assert_same(tmp_path / "out", tmp_path / "cli")
        # `t`: the Chat screen loads the MoE just assembled
        await pilot.press("t")
        await pilot.pause()
        assert app.current_mode == "chat"
        for _ in range(200):
            await app.workers.wait_for_complete()
            await pilot.pause(0.05)
            if app.screen.loaded is not None:
                break
        assert app.screen.loaded.path == (tmp_path / "out").resolve()
        # again: the folder exists, a question first; "keep it" runs nothing
        await pilot.press("f4")
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await pilot.pause()
        assert not screen.running
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("y")
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "finished", log_text(screen)
    assert_same(tmp_path / "out", tmp_path / "cli")


async def test_cancel_leaves_nothing(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.merge import moe_run

    reached, release = threading.Event(), threading.Event()
    real = moe_run.run_moe

    def held(plan, *, on_event=None, cancel=None, force=False):
        def listener(event):
            if type(event).__name__ == "TensorDone" and not reached.is_set():
                reached.set()
                assert release.wait(30)
            on_event(event)

        return real(plan, on_event=listener, cancel=cancel, force=force)

    monkeypatch.setattr(moe_run, "run_moe", held)
    path = write_toml(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_screen(app, pilot, "f4", RunScreen)
        assert isinstance(screen, RunScreen)
        await pilot.press("r")
        for _ in range(200):
            if reached.is_set():
                break
            await pilot.pause(0.05)
        assert reached.is_set()
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await pilot.pause()
        release.set()
        await until_done(app, pilot, screen, tries=600)
        assert screen.last_outcome == "cancelled"
        assert "nothing was written" in str(screen.query_one("#run-state").render())
        assert screen.check_action("chat_with_output", ()) is False
    # no output, no temporary folder: only the recipe (and the app's own folders)
    assert [p for p in tmp_path.iterdir() if p.name not in ("config", "data")] == [path]
    (record,) = load_history()
    assert record.outcome == "cancelled" and record.method == "moe"


def test_the_document_never_writes_an_moe_recipe(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    path = write_toml(tmp_path, llama_family)
    document = RecipeDocument.open(path)
    assert document.moe is not None and document.moe.seed == 7
    before = path.read_text()
    for attempt in (
        lambda: document.save(),
        lambda: document.save(tmp_path / "x.toml"),
        lambda: document.export_yaml(tmp_path / "x.yml"),
    ):
        with pytest.raises(UserError):
            attempt()
    assert path.read_text() == before and not (tmp_path / "x.toml").exists()
    broken = tmp_path / "broken.yml"
    broken.write_text(f"base_model: {llama_family['base']}\nexperts: []\n")
    with pytest.raises(UserError, match="expert"):
        RecipeDocument.open(broken)


async def test_the_checkpoints_screen_does_not_add_to_an_moe_recipe(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    from mergetui.tui.checkpoints.screen import CheckpointsScreen

    path = write_toml(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(path), initial_screen="checkpoints")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.5)
        await app.workers.wait_for_complete()
        screen = app.screen
        assert isinstance(screen, CheckpointsScreen)
        screen.current_row = lambda: type("Row", (), {"error": None, "name": "x"})()
        screen.action_add(False)
        await pilot.pause()
        assert any("read-only" in n.message for n in app._notifications)
        assert not app.document.modified and not app.document.recipe.models


async def test_a_folder_no_merge_wrote_is_refused_and_r_asks_again(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    path = write_yaml(tmp_path, llama_family)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_screen(app, pilot, "f4", RunScreen)
        assert isinstance(screen, RunScreen)
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, TextPrompt)
        app.screen.query_one("Input").value = "mine"
        await pilot.press("enter")
        await pilot.pause()
        assert not screen.running
        note = app._notifications
        assert any("press r again to choose another folder" in n.message for n in note)
        assert (mine / "notes.txt").read_text() == "keep me"
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, TextPrompt)


async def test_opening_an_moe_recipe_then_a_merge_recipe_swaps_the_view_and_the_tabs(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    merge = tmp_path / "soup.toml"
    merge.write_text(
        f'[merge]\nmethod = "linear"\n\n[models.a]\nsource = "{llama_family["a"]}"\n\n'
        f'[models.b]\nsource = "{llama_family["b"]}"\n',
        encoding="utf-8",
    )
    moe = write_toml(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(merge))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await on_screen(app, pilot, "f3", RecipeScreen)
        assert isinstance(screen, RecipeScreen)
        assert screen.query_one("#recipe-tabs").display
        assert not screen.query_one(MoeView).display
        app._open_path(str(moe))
        await pilot.pause(0.3)
        assert app.sub_title == "moe.toml · MoE"
        assert screen.query_one(MoeView).display
        assert not screen.query_one("#recipe-tabs").display
        assert "seed 7" in screen.query_one(MoeView).text
        assert "MoE recipe" in str(screen.query_one("#status").render())
        app._open_path(str(merge))
        await pilot.pause(0.3)
        assert app.sub_title == "soup.toml"
        assert screen.query_one("#recipe-tabs").display
        assert not screen.query_one(MoeView).display
        await pilot.press("f7")  # the tab keys work again
        await pilot.pause()
        assert screen.query_one("#recipe-tabs").active == "layers"


async def test_the_search_screen_says_an_moe_recipe_is_not_searchable(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    from mergetui.tui.search.screen import MOE_NOT_SEARCHABLE, SearchScreen

    path = write_toml(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await on_screen(app, pilot, "f10", SearchScreen)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "not searchable" in str(screen.query_one("#search-state").render())
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not screen.running
        assert any(n.message.startswith(MOE_NOT_SEARCHABLE) for n in app._notifications)

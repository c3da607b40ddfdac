"""Extracting a LoRA adapter from the Checkpoints screen (issue 16 §2, "from the CLI and the app"),
driven by keys (Pilot): `e` on a local fine-tune opens the dialog (the base defaults to the open
recipe's), the run is the core's in a worker, and the adapter equals the core's own run on the same
inputs and joins the list; bad numbers and a foreign output folder are refused in the dialog with
nothing run; `x` cancels, leaving nothing written; an adapter extract-lora wrote is replaced only
after a second enter; the default output is beside the fine-tune and never an existing folder.

The fine-tune is a tiny Llama base plus a delta of known spectrum on every projection and a little
noise everywhere (tests/extract_helpers.py), so every module has something to decompose.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from extract_helpers import make_finetune
from safetensors.torch import load_file
from textual.widgets import Checkbox, Input, Static

from mergetui.demo import make_tiny_model
from mergetui.editing.document import RecipeDocument
from mergetui.merge.extract_plan import ExtractOptions, plan_extraction
from mergetui.merge.extract_run import run_extraction
from mergetui.paths import CONFIG_ENV
from mergetui.recipe.model import ModelEntry
from mergetui.settings import AppConfig
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.checkpoints.extract import ExtractStrip
from mergetui.tui.checkpoints.screen import CheckpointsScreen
from mergetui.tui.dialogs.extract import ExtractDialog


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A models folder holding `base` and its fine-tune `tuned`."""
    models = tmp_path_factory.mktemp("extract-app") / "models"
    base = make_tiny_model(models / "base", seed=0, num_layers=2)
    tuned = make_finetune(base, models / "tuned", lambda name: [3.0, 2.0, 1.0], noise=1e-3, seed=1)
    return {"models": models, "base": base, "tuned": tuned}


@pytest.fixture(autouse=True)
def quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def make_app(models: Path, base: Path | None = None) -> MergeTuiApp:
    document = RecipeDocument.new("task_arithmetic")
    if base is not None:
        document.recipe.models["base"] = ModelEntry("base", str(base))
        document.recipe.base = "base"
    config = AppConfig(models_dirs=[str(models)])
    return MergeTuiApp(document=document, initial_screen="checkpoints", config=config)


async def settle(pilot) -> None:
    for _ in range(2):
        await pilot.pause(0.3)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def open_dialog(pilot, name: str = "tuned") -> ExtractDialog:
    """The cursor on `name`, then `e`."""
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, CheckpointsScreen)
    index = [row.name for row in screen.rows].index(name)
    screen.table.move_cursor(row=index)
    await pilot.press("e")
    await pilot.pause()
    assert isinstance(pilot.app.screen, ExtractDialog)
    return pilot.app.screen


def fill(dialog: ExtractDialog, **fields: str) -> None:
    for field, value in fields.items():
        dialog.query_one(f"#ex-{field}", Input).value = value


def message(dialog: ExtractDialog) -> str:
    return str(dialog.query_one("#ex-message", Static).render())


async def until_extracted(pilot, screen: CheckpointsScreen, tries: int = 600) -> None:
    for _ in range(tries):
        await pilot.pause(0.05)
        running = [w for w in pilot.app.workers if w.group == "ck-extract" and w.is_running]
        if screen.extraction is None and not running:
            await settle(pilot)
            return
    raise AssertionError("the extraction did not end")


def core_run(pair: dict[str, Path], out: Path, **options: object) -> dict[str, torch.Tensor]:
    plan = plan_extraction(pair["tuned"], pair["base"], ExtractOptions(**options))
    run_extraction(plan, out, device="cpu")
    return load_file(out / "adapter_model.safetensors")


def same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


async def test_the_app_extracts_the_cores_adapter_and_lists_it(
    pair: dict[str, Path], tmp_path: Path
) -> None:
    reference = core_run(pair, tmp_path / "reference", rank=4, energy=0.95, embed_lora=True)
    out = pair["models"] / "tuned-lora-r4"
    app = make_app(pair["models"], base=pair["base"])
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await open_dialog(pilot)
        # The base comes from the recipe; the output sits beside the fine-tune and names the rank.
        assert dialog.query_one("#ex-base", Input).value == str(pair["base"].resolve())
        assert dialog.query_one("#ex-out", Input).value == str(pair["models"] / "tuned-lora-r128")
        fill(dialog, rank="4", energy="0.95")
        await pilot.pause()
        assert dialog.query_one("#ex-out", Input).value == str(out)
        dialog.query_one("#ex-embed", Checkbox).value = True
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CheckpointsScreen)
        assert screen.extraction is not None or out.is_dir()
        await until_extracted(pilot, screen)
        same_tensors(load_file(out / "adapter_model.safetensors"), reference)
        # Listed at once (its models folder read again) with the adapter's facts; cursor on it.
        row = screen.current_row()
        assert row is not None and row.path == out and row.architecture == "LoRA"
        assert row.adapter["rank"] <= 4 and row.adapter["base_model"] == str(pair["base"].resolve())
        said = [n.message for n in app._notifications]
        assert any("modules at rank ≤" in n and "worst" in n and str(out) in n for n in said)
        assert not screen.query_one(ExtractStrip).display
        # Again into the same folder: it is an adapter extract-lora wrote, replaced only after
        # a second enter (at rank 2 this time).
        dialog = await open_dialog(pilot)
        fill(dialog, rank="2", out=str(out))
        await pilot.press("enter")
        assert app.screen is dialog and "enter again replaces it" in message(dialog)
        await pilot.press("enter")
        await until_extracted(pilot, screen)
    replaced = core_run(pair, tmp_path / "reference-2", rank=2)
    same_tensors(load_file(out / "adapter_model.safetensors"), replaced)


REFUSED = [
    # (fields typed, the field that gets the focus back, what the message says)
    ({"rank": "0"}, "rank", "from 1 to 65536, not 0"),
    ({"rank": "12.5"}, "rank", "whole number"),
    ({"rank": "100000"}, "rank", "not 100000"),
    ({"rank": ""}, "rank", "the rank is empty"),
    ({"energy": "1.5"}, "energy", "above 0 and at most 1"),
    ({"energy": "0"}, "energy", "above 0 and at most 1"),
    ({"energy": "nan"}, "energy", "above 0 and at most 1"),
    ({"energy": "most"}, "energy", "not 'most'"),
    ({"base": ""}, "base", "which base"),
    ({"base": "nobody/not-cached"}, "base", "no Hub model nobody/not-cached in the HF cache"),
    ({"out": "notes.txt"}, "out", "not a folder"),
    ({"out": "foreign"}, "out", "it is never replaced"),
]


async def test_the_dialog_refuses_bad_fields_and_runs_nothing(
    pair: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.bin").write_text("not ours")
    out = tmp_path / "adapter"
    app = make_app(pair["models"])
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await open_dialog(pilot)
        for fields, field, says in REFUSED:
            fill(dialog, base=str(pair["base"]), out=str(out), rank="8", energy="")
            fill(dialog, **fields)
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is dialog, fields
            assert says in message(dialog), (fields, message(dialog))
            assert dialog.query_one("#ex-message").has_class("error")
            assert dialog.query_one(f"#ex-{field}").has_focus, fields
        await pilot.press("escape")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CheckpointsScreen) and screen.extraction is None
        assert not [w for w in app.workers if w.group == "ck-extract"]
    assert not out.exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["weights.bin"]


async def test_x_cancels_and_nothing_is_written(
    pair: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.merge import extract_run

    reached, release = threading.Event(), threading.Event()
    real = extract_run.run_extraction

    def held(plan, out, *, on_event=None, **kwargs):
        def listener(event):  # hold the real run after its first module until the test says
            on_event(event)
            if not reached.is_set():
                reached.set()
                assert release.wait(30)

        return real(plan, out, on_event=listener, **kwargs)

    monkeypatch.setattr(extract_run, "run_extraction", held)
    out = tmp_path / "cancelled"
    app = make_app(pair["models"])
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await open_dialog(pilot)
        fill(dialog, base=str(pair["base"]), out=str(out), rank="4")
        await pilot.press("enter")
        screen = app.screen
        for _ in range(400):
            if reached.is_set():
                break
            await pilot.pause(0.05)
        assert reached.is_set()
        await pilot.pause(0.1)
        strip = screen.query_one(ExtractStrip)
        assert strip.display and "x cancels" in str(strip.query_one("#ck-extract-label").render())
        await pilot.press("x")  # the screen still answers keys while the run is held
        assert screen.extraction.cancel.is_set()
        release.set()
        await until_extracted(pilot, screen)
        said = [n.message for n in app._notifications]
        assert "extraction cancelled: nothing was written" in said
        assert not strip.display
    assert sorted(p.name for p in tmp_path.iterdir() if "cancelled" in p.name) == []


async def test_e_on_an_adapter_or_without_a_local_folder_says_why(
    pair: dict[str, Path], tmp_path: Path
) -> None:
    core_run(pair, pair["models"] / "an-adapter", rank=2)
    try:
        app = make_app(pair["models"])
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            screen = app.screen
            index = [row.name for row in screen.rows].index("an-adapter")
            screen.table.move_cursor(row=index)
            await pilot.press("e")
            await pilot.pause()
            assert app.screen is screen
            said = [n.message for n in app._notifications]
            assert any("already a LoRA adapter" in n for n in said)
    finally:
        import shutil

        shutil.rmtree(pair["models"] / "an-adapter")


def test_output_names_beside_the_fine_tune_never_an_existing_folder(tmp_path: Path) -> None:
    from mergetui.checkpoints.sources import CheckpointRow
    from mergetui.tui.checkpoints.extract import default_base, out_namer

    folder = CheckpointRow(
        "tuned", str(tmp_path / "m" / "tuned"), "folder", tmp_path / "m" / "tuned"
    )
    (tmp_path / "m" / "tuned-lora-r8").mkdir(parents=True)  # taken: the next free name
    name = out_namer(folder, [])
    assert name(128) == "m/tuned-lora-r128" and name(8) == "m/tuned-lora-r8-2"
    # A fine-tune in the HF cache: never inside the cache, in the first models folder instead.
    cached = CheckpointRow("org/tuned", "org/tuned", "cache", tmp_path / "hf" / "snap")
    assert out_namer(cached, [str(tmp_path / "models")])(16) == "models/tuned-lora-r16"
    assert out_namer(cached, [])(16) == "tuned-lora-r16"
    # The recipe's base, unless it is the fine-tune itself.
    document = RecipeDocument.new("task_arithmetic")
    assert default_base(document, tmp_path / "m" / "tuned") == ""
    document.recipe.models["b"] = ModelEntry("b", str(tmp_path / "m" / "tuned-lora-r8"))
    document.recipe.base = "b"
    assert default_base(document, tmp_path / "m" / "tuned") == "m/tuned-lora-r8"
    assert default_base(document, tmp_path / "m" / "tuned-lora-r8") == ""

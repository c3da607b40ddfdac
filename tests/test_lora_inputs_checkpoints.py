"""LoRA adapters on the Checkpoints screen's core: a scanned folder lists an adapter with its
rank, alpha and targets, the details pane says them, and adding it to a recipe makes a model of
its base carrying it (one undo step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergetui.demo import make_tiny_model

pytest.importorskip("torch")
pytest.importorskip("peft")

from lora_helpers import make_adapter  # noqa: E402


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora-screen")
    base = make_tiny_model(root / "base", seed=0)
    make_adapter(
        base, root / "adapter", r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj"]
    )
    return root


def test_a_models_folder_lists_the_adapter_with_its_facts(models_dir: Path) -> None:
    from mergetui.checkpoints.sources import scan_models_dirs

    rows = {row.name: row for row in scan_models_dirs([models_dir])}
    assert set(rows) == {"base", "adapter"}
    adapter = rows["adapter"]
    assert adapter.error is None and adapter.architecture == "LoRA"
    assert adapter.adapter is not None
    assert (adapter.adapter["rank"], adapter.adapter["alpha"]) == (4, 16.0)
    assert adapter.adapter["scale"] == pytest.approx(8.0)  # rsLoRA: 16 / sqrt(4)
    # q_proj's A (4 x 64) and B (64 x 4) in each of 4 layers
    assert adapter.parameters == 4 * (4 * 64 + 64 * 4)
    assert rows["base"].adapter is None and rows["base"].architecture == "LlamaForCausalLM"


def test_details_pane_says_rank_alpha_and_targets(models_dir: Path) -> None:
    from mergetui.checkpoints.sources import scan_models_dirs
    from mergetui.tui.checkpoints.text import details_text

    [row] = [r for r in scan_models_dirs([models_dir]) if r.name == "adapter"]
    text = details_text(row)
    assert "rank 4 · alpha 16 · scale 8 (alpha / sqrt(r), rsLoRA)" in text
    assert "q_proj (4 tensors)" in text
    assert str(models_dir / "base") in text  # the base it was trained on


def test_adding_the_adapter_makes_a_model_of_its_base(models_dir: Path) -> None:
    from mergetui.checkpoints.sources import scan_models_dirs
    from mergetui.editing.document import RecipeDocument
    from mergetui.recipe.model import Recipe
    from mergetui.tui.checkpoints.adding import add_checkpoint

    [row] = [r for r in scan_models_dirs([models_dir]) if r.name == "adapter"]
    document = RecipeDocument(Recipe(method="linear"))
    name = add_checkpoint(document, row, as_base=False)
    entry = document.recipe.models[name]
    assert (entry.source, entry.lora) == (str(models_dir / "base"), row.source)
    assert add_checkpoint(document, row, as_base=False) == name  # already there: not added twice
    assert len(document.recipe.models) == 1
    document.undo()
    document.undo()
    assert not document.recipe.models


def test_a_typed_model_may_carry_an_adapter(models_dir: Path) -> None:
    from mergetui.tui.dialogs.models import model_reference, suggest_model_name

    base, adapter = models_dir / "base", models_dir / "adapter"
    assert model_reference(f"{base}+{adapter}") == (str(base), str(adapter), "")
    assert model_reference("org/base+org/adapter") == ("org/base", "org/adapter", "")
    assert model_reference(str(base)) == (str(base), None, "")
    assert model_reference(f"{base}+{models_dir / 'nowhere'}")[2].startswith("adapter: no folder")
    assert "one '+'" in model_reference("a/b+c/d+e/f")[2]
    assert suggest_model_name(f"{base}+{adapter}", {"adapter"}) == "adapter-2"


async def test_the_add_model_dialog_adds_a_model_with_its_adapter(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.editing.document import RecipeDocument
    from mergetui.paths import CONFIG_ENV, DATA_ENV
    from mergetui.tui.app import MergeTuiApp
    from mergetui.tui.dialogs.models import AddModelDialog

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[merge]\nmethod = "linear"\n\n[models.base]\nsource = "{models_dir}/base"\n'
    )
    app = MergeTuiApp(RecipeDocument.open(recipe))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.4)
        await pilot.press("f6")
        app.screen.query_one("#models").focus()
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, AddModelDialog)
        app.screen.query_one("#source").value = f"{models_dir}/base+{models_dir}/adapter"
        await pilot.press("enter")
        await pilot.pause()
        entry = app.document.recipe.models["adapter"]
        assert (entry.source, entry.lora) == (str(models_dir / "base"), str(models_dir / "adapter"))

"""LoRA adapters as merge inputs (issue 16 §1): `base+adapter` in mergekit YAML and `lora =` in TOML
give mergekit-yaml's tensors, the arithmetic is PEFT's, streaming changes nothing, and the recipe
round-trips. Errors and `mergetui inspect` are in tests/test_lora_inputs_errors.py.

Tiny bfloat16 Llamas (mergetui.demo.make_tiny_model) and adapters made offline with peft
(tests/lora_helpers.py): lora_B set to seeded non-zero values (PEFT starts it at zero), saved with
safetensors. The task-vector configs merge in float32, as tests/test_parity_mergekit.py does
(mergekit does their arithmetic in the config's dtype, mergetui in float32); the adapters are still
applied to bfloat16 weights, rounded to bfloat16 as mergekit's merged copy is. Sparsified ties on
bfloat16 inputs differs from mergekit's with or without an adapter (top-k among equal magnitudes),
so ties is compared dense on bfloat16 and sparse on float32.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from lora_helpers import make_adapter, tensors

from mergetui.demo import make_tiny_model

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

HAS_MERGEKIT = importlib.util.find_spec("mergekit") is not None
needs_mergekit = pytest.mark.skipif(not HAS_MERGEKIT, reason="mergekit is not installed")


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    base = make_tiny_model(root / "base", seed=0, dtype="bfloat16")
    tuned = make_tiny_model(root / "tuned", base=base, seed=1, dtype="bfloat16")
    other = make_tiny_model(root / "other", base=base, seed=2, dtype="bfloat16")
    plain = make_adapter(
        base,
        root / "plain",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        modules_to_save=["lm_head"],
    )
    rs = make_adapter(
        base,
        root / "rs",
        seed=1,
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["k_proj", "up_proj", "embed_tokens"],
    )
    return {"root": root, "base": base, "tuned": tuned, "other": other, "plain": plain, "rs": rs}


@pytest.fixture(scope="module")
def family32(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """float32 models: ties' top-k picks among equal bfloat16 magnitudes differently from
    mergekit's with or without an adapter, so sparsified ties is compared on float32."""
    root = tmp_path_factory.mktemp("lora32")
    base = make_tiny_model(root / "base", seed=0)
    return {
        "root": root,
        "base": base,
        "tuned": make_tiny_model(root / "tuned", base=base, seed=1),
        "other": make_tiny_model(root / "other", base=base, seed=2),
        "plain": make_adapter(
            base, root / "plain", r=4, lora_alpha=4, target_modules=["o_proj", "gate_proj"]
        ),
    }


def merge_with_mergetui(recipe_file: Path, out: Path) -> dict[str, torch.Tensor]:
    from mergetui.merge.plan import make_plan
    from mergetui.merge.runner import run_merge
    from mergetui.recipe.io import load_recipe

    plan = make_plan(load_recipe(recipe_file), recipe_dir=recipe_file.parent, out=out)
    run_merge(plan)
    return tensors(out)


def merge_with_mergekit(config: Path, out: Path, cache: Path) -> dict[str, torch.Tensor]:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions
    from mergekit.merge import run_merge as mergekit_run_merge

    parsed = MergeConfiguration.model_validate(yaml.safe_load(config.read_text()))
    options = MergeOptions(
        quiet=True, copy_tokenizer=False, write_model_card=False, lora_merge_cache=str(cache)
    )
    mergekit_run_merge(parsed, str(out), options)
    return tensors(out)


def assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(theirs)
    different = [name for name in theirs if not torch.equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


def expected_lora(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """PEFT's merge_and_unload on a bfloat16 model: float32 update, one rounding."""
    return (w.float() + (b.float() @ a.float()) * scale).to(w.dtype)


# -- parity with mergekit-yaml ------------------------------------------------------------------

CONFIGS = {
    "linear": """
merge_method: linear
models:
  - model: {base}+{plain}
    parameters: {{weight: 0.6}}
  - model: {tuned}
    parameters: {{weight: 0.4}}
dtype: bfloat16
""",
    "ties": """
merge_method: ties
base_model: {base}
models:
  - model: {tuned}+{plain}
    parameters: {{weight: 0.7, density: 1.0}}
  - model: {other}
    parameters: {{weight: 0.5, density: 1.0}}
dtype: float32
""",
    "ties-sparse-float32": """
merge_method: ties
base_model: {base}
models:
  - model: {tuned}+{plain}
    parameters: {{weight: 0.7, density: 0.6}}
  - model: {other}
    parameters: {{weight: 0.5, density: 0.8}}
""",
    "rslora-task-arithmetic": """
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {base}+{rs}
    parameters: {{weight: 1.0}}
  - model: {tuned}
    parameters: {{weight: 0.5}}
dtype: float32
""",
}


@needs_mergekit
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_tensors_as_mergekit_yaml(
    family: dict[str, Path], family32: dict[str, Path], name: str
) -> None:
    family = family32 if name.endswith("float32") else family
    root = family["root"]
    config = root / f"{name}.yaml"
    config.write_text(CONFIGS[name].format(**{k: str(v) for k, v in family.items()}))
    ours = merge_with_mergetui(config, root / f"{name}-ours")
    theirs = merge_with_mergekit(config, root / f"{name}-mergekit", root / f"{name}-cache")
    assert_same(ours, theirs)
    # The adapter really took part: the merge differs from one without it.
    text = config.read_text()
    for adapter in ("plain", "rs"):
        if adapter in family:
            text = text.replace(f"+{family[adapter]}", "")
    plain = root / f"{name}-plain.yaml"
    plain.write_text(text)
    without = merge_with_mergetui(plain, root / f"{name}-without")
    assert any(not torch.equal(without[k], ours[k]) for k in ours)


# -- the arithmetic ------------------------------------------------------------------------------


def test_passthrough_applies_peft_formula_and_modules_to_save(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mergetui.merge.lora_apply

    monkeypatch.setattr(mergetui.merge.lora_apply, "BLOCK_ELEMENTS", 1000)  # several per tensor
    root = family["root"]
    recipe = root / "alone.toml"
    recipe.write_text(
        '[merge]\nmethod = "passthrough"\n\n'
        f'[models.tuned]\nsource = "{family["base"]}"\nlora = "{family["plain"]}"\n'
    )
    out = merge_with_mergetui(recipe, root / "alone-out")
    base = tensors(family["base"])
    adapter = tensors(family["plain"])
    prefix = "base_model.model."
    q = "model.layers.2.self_attn.q_proj"
    a, b = adapter[f"{prefix}{q}.lora_A.weight"], adapter[f"{prefix}{q}.lora_B.weight"]
    assert torch.equal(out[f"{q}.weight"], expected_lora(base[f"{q}.weight"], a, b, 8 / 4))
    assert torch.equal(out["lm_head.weight"], adapter[f"{prefix}lm_head.weight"].to(torch.bfloat16))
    card = (root / "alone-out" / "README.md").read_text()
    assert f"with the LoRA adapter `{family['plain']}` applied" in card
    untouched = "model.layers.2.self_attn.k_proj.weight"
    assert torch.equal(out[untouched], base[untouched])
    assert out[untouched].dtype == torch.bfloat16


def test_rslora_scale_and_embedding_update(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mergetui.merge.lora_apply
    from mergetui.checkpoints.lora import open_adapter

    monkeypatch.setattr(mergetui.merge.lora_apply, "BLOCK_ELEMENTS", 1000)

    adapter = open_adapter(family["rs"])
    assert adapter.use_rslora and adapter.scale == pytest.approx(16 / math.sqrt(8))
    embed = adapter.modules["model.embed_tokens.weight"]
    assert embed.transposed  # PEFT stores lora_embedding_A as (r, vocab)
    root = family["root"]
    recipe = root / "rs-alone.toml"
    recipe.write_text(
        '[merge]\nmethod = "passthrough"\n\n'
        f'[models.m]\nsource = "{family["base"]}"\nlora = "{family["rs"]}"\n'
    )
    out = merge_with_mergetui(recipe, root / "rs-alone-out")
    base, raw = tensors(family["base"]), tensors(family["rs"])
    a = raw["base_model.model.model.embed_tokens.lora_embedding_A"]
    b = raw["base_model.model.model.embed_tokens.lora_embedding_B"]
    w = base["model.embed_tokens.weight"]
    delta = (b.float() @ a.float()).T * (16 / math.sqrt(8))
    # PEFT's Embedding.merge adds the update cast to the weight's dtype: two roundings
    want = (w.float() + delta.to(w.dtype).float()).to(w.dtype)
    assert torch.equal(out["model.embed_tokens.weight"], want)
    assert not torch.equal(want, (w.float() + delta).to(w.dtype))


@pytest.mark.parametrize("block", [1 << 20, 7])
@pytest.mark.parametrize("transposed", [False, True])
def test_pieces_and_chunks_give_the_whole_tensor(
    tmp_path: Path, transposed: bool, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read path hands apply_lora a run of elements: any run gives the whole's elements,
    whatever the blocks it is updated in."""
    from safetensors.torch import save_file

    import mergetui.merge.lora_apply

    monkeypatch.setattr(mergetui.merge.lora_apply, "BLOCK_ELEMENTS", block)

    from mergetui.checkpoints.lora import LoraModule
    from mergetui.checkpoints.safetensors_io import read_header
    from mergetui.merge.lora_apply import apply_lora
    from mergetui.merge.plan_tensors import PlannedInput
    from mergetui.merge.reader import TensorReader

    gen = torch.Generator().manual_seed(3)
    rows, cols, rank = 37, 23, 5
    w = torch.randn(rows, cols, generator=gen).to(torch.bfloat16)
    out_dim, in_dim = (cols, rows) if transposed else (rows, cols)
    a = torch.randn(rank, in_dim, generator=gen)
    b = torch.randn(out_dim, rank, generator=gen)
    save_file({"w": w, "a": a, "b": b}, str(tmp_path / "t.safetensors"))
    info, _ = read_header(tmp_path / "t.safetensors")
    module = LoraModule("w", info["a"], info["b"], 0.75, transposed)
    delta = (b @ a) * 0.75
    want = (w.float() + (delta.T if transposed else delta)).to(torch.bfloat16).reshape(-1)
    source = PlannedInput(
        "m", "w", info["w"].file, info["w"].offset, info["w"].nbytes, "BF16", (rows, cols), module
    )
    with TensorReader() as reader:
        whole = apply_lora(reader, source, w.clone(), 0, in_place=True)
        assert torch.equal(whole.reshape(-1), want)
        flat = w.reshape(-1)
        for start, stop in ((0, 1), (5, 61), (22, 23), (100, 851), (850, rows * cols)):
            got = apply_lora(reader, source, flat[start:stop].clone(), start, in_place=False)
            assert torch.equal(got, want[start:stop]), (start, stop)


# -- the recipe ----------------------------------------------------------------------------------


def test_toml_form_equals_yaml_form_and_round_trips(family: dict[str, Path]) -> None:
    from mergetui.recipe.io import dumps_recipe, loads_recipe

    yaml_text = CONFIGS["ties"].format(**{k: str(v) for k, v in family.items()})
    from_yaml = loads_recipe(yaml_text, "yaml")
    entry = next(e for e in from_yaml.models.values() if e.lora)
    assert (entry.source, entry.lora) == (str(family["tuned"]), str(family["plain"]))
    assert entry.name == "plain"  # named after the adapter, apart from the base itself
    toml_text = dumps_recipe(from_yaml, "toml")
    assert f'lora = "{family["plain"]}"' in toml_text
    from_toml = loads_recipe(toml_text, "toml")
    assert from_toml == from_yaml
    again = dumps_recipe(from_toml, "yaml")
    assert f"model: {family['tuned']}+{family['plain']}" in again
    assert loads_recipe(again, "yaml") == from_yaml

    # mergekit's mapping form says the same.
    mapping = yaml_text.replace(
        f"model: {family['tuned']}+{family['plain']}",
        f"model: {{model: {family['tuned']}, lora: {family['plain']}}}",
    )
    assert loads_recipe(mapping, "yaml") == from_yaml


def test_toml_and_yaml_merge_the_same(family: dict[str, Path]) -> None:
    from mergetui.recipe.io import dumps_recipe, load_recipe

    root = family["root"]
    yaml_file = root / "same.yaml"
    yaml_file.write_text(CONFIGS["linear"].format(**{k: str(v) for k, v in family.items()}))
    toml_file = root / "same.toml"
    toml_file.write_text(dumps_recipe(load_recipe(yaml_file), "toml"))
    assert_same(
        merge_with_mergetui(toml_file, root / "same-toml"),
        merge_with_mergetui(yaml_file, root / "same-yaml"),
    )


def test_relative_adapter_paths_follow_the_recipe(family: dict[str, Path], tmp_path: Path) -> None:
    """A relative lora is read from the recipe's folder, and moves with it when saved elsewhere."""
    from mergetui.recipe.io import loads_recipe
    from mergetui.recipe.paths import locate_adapter, rebase_paths

    root = family["root"]
    recipe = loads_recipe(
        '[merge]\nmethod = "passthrough"\n[models.m]\nsource = "base"\nlora = "plain"\n', "toml"
    )
    assert locate_adapter("plain", root) == (family["plain"].resolve(), True)
    (tmp_path / "sub").mkdir()
    changes = rebase_paths(recipe, root, tmp_path / "sub")
    assert changes[-1][:2] == ("model m's adapter", "plain")
    moved = recipe.models["m"].lora
    assert moved is not None and (tmp_path / "sub" / moved).resolve() == family["plain"].resolve()


def test_the_stored_recipe_copy_names_the_adapter_absolutely(family: dict[str, Path]) -> None:
    """The copy a merge keeps (mergetui.toml) reruns from anywhere: its local adapter too."""
    from mergetui.recipe.io import load_recipe

    root = family["root"]
    recipe = root / "relative.toml"
    recipe.write_text(
        '[merge]\nmethod = "passthrough"\n\n[models.m]\nsource = "base"\nlora = "plain"\n'
    )
    first = merge_with_mergetui(recipe, root / "relative-out")
    stored = load_recipe(root / "relative-out" / "mergetui.toml")
    assert stored.models["m"].lora == str(family["plain"].resolve())
    moved = root / "elsewhere"
    moved.mkdir(exist_ok=True)
    (moved / "copy.toml").write_text((root / "relative-out" / "mergetui.toml").read_text())
    assert_same(merge_with_mergetui(moved / "copy.toml", root / "relative-again"), first)


@needs_mergekit
def test_conv1d_fan_in_fan_out_same_as_mergekit(tmp_path: Path) -> None:
    """GPT-2's Conv1D layers store W transposed (PEFT's fan_in_fan_out): the update is too."""
    from mergetui.checkpoints.lora import open_adapter

    base = make_tiny_model(tmp_path / "base", "gpt2", seed=0)
    tuned = make_tiny_model(tmp_path / "tuned", base=base, seed=1)
    adapter = make_adapter(
        base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]
    )
    assert all(module.transposed for module in open_adapter(adapter).modules.values())
    config = tmp_path / "gpt2.yaml"
    config.write_text(
        "merge_method: linear\nmodels:\n"
        f"  - model: {base}+{adapter}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {tuned}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
    )
    ours = merge_with_mergetui(config, tmp_path / "ours")
    assert_same(ours, merge_with_mergekit(config, tmp_path / "theirs", tmp_path / "cache"))


def test_a_stage_with_a_relative_adapter_is_skipped_when_up_to_date(
    family: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Multi-stage runs compare a stage's recipe copy with its output's: a relative adapter must
    read the same (absolute) on both sides, or a merged stage would look like another recipe's."""
    from mergetui.cli import main

    root = family["root"]
    config = root / "two-stages.toml"
    config.write_text(
        '[[stages]]\nname = "first"\n\n[stages.merge]\nmethod = "passthrough"\n\n'
        '[stages.models.m]\nsource = "base"\nlora = "plain"\n\n'
        '[[stages]]\n\n[stages.merge]\nmethod = "linear"\n\n'
        '[stages.models.first]\nsource = "first"\nparameters = { weight = 0.5 }\n\n'
        '[stages.models.tuned]\nsource = "tuned"\nparameters = { weight = 0.5 }\n'
    )
    out = root / "two-stages-out"
    assert main(["merge", str(config), "--out", str(out)]) == 0
    assert "2 merged" in capsys.readouterr().out
    assert main(["merge", str(config), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("up to date (merged from this recipe): skipped") == 2

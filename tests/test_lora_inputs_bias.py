"""LoRA inputs with `lora_bias: true` (PEFT's lora_B with a bias): merged as PEFT merges them, the
layer's bias + scale * lora_B.bias rounded once, with mergekit-yaml's tensors (Qwen2's q/k/v,
GPT-2's Conv1D). A base layer without a bias cannot take one (PEFT, hence mergekit-yaml, fails):
a located error that says why. lora_B.bias tensors under a config without lora_bias (what
mergekit-extract-lora writes) are dropped, as PEFT drops them, with a warning. extract-lora's
adapter of a Qwen2 pair (lora_bias: true) gives back the fine-tune's biases.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from lora_helpers import make_adapter, tensors
from test_lora_inputs import assert_same, merge_with_mergekit, merge_with_mergetui

from mergetui.demo import make_tiny_model

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
needs_mergekit = pytest.mark.skipif(
    importlib.util.find_spec("mergekit") is None, reason="mergekit is not installed"
)
PREFIX = "base_model.model."
TARGETS = {"qwen2": ["q_proj", "k_proj", "v_proj"], "gpt2": ["c_attn", "c_fc"]}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-bias")
    found: dict[str, Path] = {"root": root}
    for arch in ("qwen2", "gpt2", "llama"):
        base = make_tiny_model(root / arch, arch, seed=0, dtype="bfloat16")
        found[arch] = base
        found[f"{arch}-tuned"] = make_tiny_model(
            root / f"{arch}-tuned", base=base, seed=1, dtype="bfloat16"
        )
    for arch, targets in TARGETS.items():
        found[f"{arch}-adapter"] = make_adapter(
            found[arch],
            root / f"{arch}-adapter",
            r=4,
            lora_alpha=8,
            target_modules=targets,
            lora_bias=True,
        )
    return found


def two_models(kit: dict[str, Path], arch: str, adapter: Path, name: str) -> Path:
    config = kit["root"] / f"{name}.yaml"
    config.write_text(
        "merge_method: linear\nmodels:\n"
        f"  - model: {kit[arch]}+{adapter}\n    parameters: {{weight: 0.6}}\n"
        f"  - model: {kit[arch + '-tuned']}\n    parameters: {{weight: 0.4}}\ndtype: bfloat16\n"
    )
    return config


@needs_mergekit
@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_lora_bias_same_as_mergekit_yaml(kit: dict[str, Path], arch: str) -> None:
    root = kit["root"]
    config = two_models(kit, arch, kit[f"{arch}-adapter"], f"{arch}-bias")
    ours = merge_with_mergetui(config, root / f"{arch}-bias-ours")
    assert_same(ours, merge_with_mergekit(config, root / f"{arch}-mk", root / f"{arch}-cache"))


def test_lora_bias_is_peft_formula(kit: dict[str, Path]) -> None:
    root, adapter = kit["root"], kit["qwen2-adapter"]
    recipe = root / "alone.toml"
    recipe.write_text(
        f'[merge]\nmethod = "passthrough"\n\n[models.m]\nsource = "{kit["qwen2"]}"\n'
        f'lora = "{adapter}"\n'
    )
    out = merge_with_mergetui(recipe, root / "alone-out")
    base, raw = tensors(kit["qwen2"]), tensors(adapter)
    name = "model.layers.1.self_attn.k_proj"
    bias = base[f"{name}.bias"]
    want = (bias.float() + raw[f"{PREFIX}{name}.lora_B.bias"].float() * 2).to(bias.dtype)
    assert torch.equal(out[f"{name}.bias"], want) and not torch.equal(want, bias)
    untouched = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(out[untouched], base[untouched])


@needs_mergekit
def test_lora_b_bias_without_lora_bias_is_dropped_as_peft_does(
    kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from mergetui.cli import main

    root = kit["root"]
    adapter = root / "no-lora-bias"
    shutil.copytree(kit["qwen2-adapter"], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["lora_bias"] = False
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    recipe = two_models(kit, "qwen2", adapter, "no-lora-bias")
    out = root / "no-lora-bias-ours"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())
    assert "holds 12 lora_B.bias tensors but its config does not set lora_bias: true" in printed
    ours = tensors(out)
    assert_same(ours, merge_with_mergekit(recipe, root / "no-lora-bias-mk", root / "nlb-cache"))
    with_bias = merge_with_mergetui(two_models(kit, "qwen2", kit["qwen2-adapter"], "w"), root / "w")
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(ours[f"{name}.weight"], with_bias[f"{name}.weight"])
    assert not torch.equal(ours[f"{name}.bias"], with_bias[f"{name}.bias"])


@needs_mergekit
def test_lora_bias_on_layers_without_a_bias_is_a_located_error(kit: dict[str, Path]) -> None:
    from mergetui.errors import UserError
    from mergetui.recipe.io import load_recipe
    from mergetui.recipe.validate import validate_recipe

    root = kit["root"]
    adapter = make_adapter(
        kit["llama"], root / "llama-adapter", r=4, target_modules=["q_proj"], lora_bias=True
    )
    recipe = root / "llama-bias.toml"
    recipe.write_text(
        f'[merge]\nmethod = "passthrough"\n\n[models.m]\nsource = "{kit["llama"]}"\n'
        f'lora = "{adapter}"\n'
    )
    with pytest.raises(UserError) as caught:
        merge_with_mergetui(recipe, root / "llama-bias-out")
    error = caught.value
    assert error.where == "models.m.lora"
    assert "adds a bias to model.layers.0.self_attn.q_proj (lora_bias: true)" in error.message
    assert "has no bias" in error.message and "lora_bias: false" in error.fix
    problems = validate_recipe(load_recipe(recipe), base_dir=root)
    assert any(p.is_error and "lora_bias: true" in p.message for p in problems)
    config = root / "llama-bias.yaml"
    config.write_text(f"merge_method: passthrough\nmodels:\n  - model: {kit['llama']}+{adapter}\n")
    with pytest.raises(RuntimeError, match="lora_bias=True. because the base layer has no bias"):
        merge_with_mergekit(config, root / "llama-bias-mk", root / "llama-bias-cache")


@needs_mergekit
def test_extract_lora_round_trip_keeps_the_biases(
    kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """extract-lora saves Qwen2's q/k/v bias deltas with lora_bias: true, which PEFT applies to
    every target: its merge refuses o_proj and the MLP, which have no bias (mergekit-yaml fails).
    mergetui applies the biases the adapter holds, a warning says so: the fine-tune's biases,
    to bfloat16 rounding."""
    from mergetui.cli import main

    root, base, tuned = kit["root"], kit["qwen2"], kit["qwen2-tuned"]
    adapter = root / "qwen2-extracted"
    assert main(["extract-lora", str(tuned), str(base), "--out", str(adapter)]) == 0
    assert json.loads((adapter / "adapter_config.json").read_text())["lora_bias"] is True
    config = root / "qwen2-round-trip.yaml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {base}+{adapter}\n"
        "    parameters: {weight: 1.0}\n"
    )
    capsys.readouterr()
    out = root / "qwen2-round-trip-ours"
    assert main(["merge", str(config), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())
    assert "lora_bias: true, but 16 adapted layers have no bias" in printed
    with pytest.raises(RuntimeError, match="base layer has no bias"):
        merge_with_mergekit(config, root / "qwen2-rt-mk", root / "qwen2-rt-cache")
    ours, want, was = tensors(out), tensors(tuned), tensors(base)
    biases = [name for name in want if name.endswith("_proj.bias")]
    assert len(biases) == 12
    for name in biases:
        assert not torch.equal(want[name], was[name])
        assert torch.allclose(ours[name].float(), want[name].float(), rtol=2**-7, atol=1e-6), name

"""`mergetui extract-lora` (issue 16 §2): the same adapter as mergekit-extract-lora (each module's
B @ A, the saved tensors, the config that matters), `--energy` ranks on a delta of known spectrum,
the adapter loading with PEFT and transformers, base + adapter giving back the fine-tune to the
reported error, and mergetui's own LoRA inputs reading it back.

The fine-tunes are a tiny Llama base plus, on every projection, a delta U diag(s) V^T of chosen
singular values s (tests/extract_helpers.py), with or without a little noise on every tensor.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from extract_helpers import PREFIX, lora_products, make_finetune, run_mergekit_extract
from lora_helpers import tensors

from mergetui.cli import main
from mergetui.demo import make_tiny_model
from mergetui.merge.extract_plan import ExtractOptions, plan_extraction
from mergetui.merge.extract_run import run_extraction

needs_mergekit = pytest.mark.skipif(
    importlib.util.find_spec("mergekit") is None, reason="mergekit is not installed"
)
SPECTRUM = [4.0, 2.0, 1.0, 0.5]  # q_proj's delta in the `spectral` fine-tune


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extract")
    base = make_tiny_model(root / "base", seed=0, num_layers=2)
    noisy = make_finetune(base, root / "noisy", lambda name: [3.0, 2.0, 1.0], noise=1e-3, seed=1)

    def spectrum(name: str) -> list[float]:
        return SPECTRUM if name.endswith("q_proj.weight") else [1.0]

    spectral = make_finetune(base, root / "spectral", spectrum, seed=2)
    return {"root": root, "base": base, "noisy": noisy, "spectral": spectral}


def extract(family: dict[str, Path], tuned: str, out: str, **options: object):
    """The core API's run (the CLI's table shows the same result)."""
    plan = plan_extraction(family[tuned], family["base"], ExtractOptions(**options))
    return run_extraction(plan, family["root"] / out, device="cpu")


# -- parity with mergekit-extract-lora ------------------------------------------------------------


@needs_mergekit
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (["--rank", "8"], ["--max-rank", "8"]),
        (
            [
                "--rank",
                "4",
                "--embed-lora",
                "--include",
                "proj|head",
                "--exclude",
                r"layers\.1\.mlp",
            ],
            ["--max-rank", "4", "--embed-lora", "-i", "proj|head", "-e", r"layers\.1\.mlp"],
        ),
    ],
    ids=["defaults", "embed-lora-include-exclude"],
)
def test_same_adapter_as_mergekit(
    family: dict[str, Path], ours: list[str], theirs: list[str]
) -> None:
    root, base, tuned = family["root"], family["base"], family["noisy"]
    name = "-".join(theirs).replace("\\", "").replace(".", "")
    run_mergekit_extract(tuned, base, root / f"mk{name}", *theirs)
    assert (
        main(
            [
                "extract-lora",
                str(tuned),
                str(base),
                "--out",
                str(root / f"us{name}"),
                "--device",
                "cpu",
                *ours,
            ]
        )
        == 0
    )
    mine, reference = tensors(root / f"us{name}"), tensors(root / f"mk{name}")
    assert set(mine) == set(reference)
    ours_products, their_products = lora_products(mine), lora_products(reference)
    assert set(ours_products) == set(their_products) and their_products
    for module, product in their_products.items():
        torch.testing.assert_close(ours_products[module], product, atol=2e-5, rtol=1e-4)
    for tensor, value in reference.items():
        if "lora_" in tensor and tensor.endswith(("A", "A.weight")):  # sqrt(S) on each side
            torch.testing.assert_close(
                mine[tensor].norm(dim=1), value.norm(dim=1), rtol=1e-4, atol=1e-6
            )
        elif "lora_" in tensor:
            torch.testing.assert_close(
                mine[tensor].norm(dim=0), value.norm(dim=0), rtol=1e-4, atol=1e-6
            )
    for tensor, value in reference.items():
        if ".lora_" not in tensor:  # modules_to_save: the fine-tune's own tensor
            assert torch.equal(mine[tensor], value), tensor
    config = json.loads((root / f"us{name}" / "adapter_config.json").read_text())
    expected = json.loads((root / f"mk{name}" / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "modules_to_save", "rank_pattern", "alpha_pattern", "peft_type"):
        assert config[key] == expected[key], key
    assert sorted(config["target_modules"]) == sorted(expected["target_modules"])


def test_embed_lora_and_exclude_choose_the_modules(family: dict[str, Path]) -> None:
    result = extract(
        family, "noisy", "choose", rank=4, embed_lora=True, exclude=(r"layers\.1\.mlp",)
    )
    adapter = tensors(result.out)
    assert f"{PREFIX}model.embed_tokens.lora_embedding_A" in adapter
    assert f"{PREFIX}lm_head.lora_A.weight" in adapter
    assert not any("layers.1.mlp" in name for name in adapter)  # excluded: not saved either
    assert "embed_tokens" not in result.config["modules_to_save"]
    assert result.config["modules_to_save"] == [
        "input_layernorm",
        "post_attention_layernorm",
        "norm",
    ]


def test_save_module_keeps_a_module_whole(family: dict[str, Path]) -> None:
    """(mergekit 0.1.5's own --save-module fails on any Llama: it appends to click's tuple.)"""
    result = extract(family, "noisy", "save", rank=4, save_modules=("o_proj",))
    adapter, tuned = tensors(result.out), tensors(family["noisy"])
    name = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(adapter[PREFIX + name], tuned[name])
    assert not any("o_proj.lora" in key for key in adapter)
    assert result.config["modules_to_save"][0] == "o_proj"
    assert "o_proj" not in result.config["target_modules"]


# -- --energy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("energy", "rank", "q_rank"),
    [(0.75, 128, 1), (0.9, 128, 2), (0.98, 128, 3), (1.0, 128, 4), (0.98, 2, 2)],
)
def test_energy_picks_each_modules_rank(
    family: dict[str, Path], energy: float, rank: int, q_rank: int
) -> None:
    result = extract(family, "spectral", f"energy-{energy}-{rank}", rank=rank, energy=energy)
    ranks = {m.module: m.rank for m in result.modules}
    assert {r for module, r in ranks.items() if module.endswith("q_proj")} == {q_rank}
    assert {r for module, r in ranks.items() if not module.endswith("q_proj")} == {1}
    power = [s * s for s in SPECTRUM]
    expected_error = math.sqrt(sum(power[q_rank:]) / sum(power))
    for module in result.modules:
        if module.module.endswith("q_proj"):
            assert module.error == pytest.approx(expected_error, abs=1e-5)
            assert module.energy == pytest.approx(1 - expected_error**2, abs=1e-5)
        else:
            assert module.error < 1e-5
    config = result.config
    assert config["r"] == config["lora_alpha"] == max(q_rank, 1)
    others = {m: 1 for m in ranks if not m.endswith("q_proj")}
    assert config["rank_pattern"] == ({} if q_rank == 1 else others)
    assert config["alpha_pattern"] == config["rank_pattern"]
    shapes = tensors(result.out)
    a = shapes[f"{PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert a.shape == (q_rank, 64)


def test_energy_table_on_the_command_line(family: dict[str, Path], capsys) -> None:
    out = family["root"] / "table"
    code = main(
        [
            "extract-lora",
            str(family["spectral"]),
            str(family["base"]),
            "--out",
            str(out),
            "--energy",
            "0.9",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if "layers.0.self_attn.q_proj" in line)
    assert row.split("│")[2].strip() == "2"
    assert f"{math.sqrt(1.25 / 21.25):.4g}" in row
    assert "r 2 (lora_alpha 2" in printed
    card = (out / "README.md").read_text()
    assert f"- {json.dumps(str(family['base']))}" in card and "library_name: peft" in card


# -- loading and reproducing the fine-tune -------------------------------------------------------


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_loads_with_peft_and_transformers_and_gives_back_the_finetune(
    family: dict[str, Path],
) -> None:
    import transformers
    from peft import PeftModel

    result = extract(family, "noisy", "full")  # rank 128: every module at full rank
    assert result.max_error < 1e-5
    ids = torch.tensor([[1, 5, 9, 20, 33, 7]])
    load = transformers.AutoModelForCausalLM.from_pretrained
    tuned_logits = _logits(load(family["noisy"], dtype=torch.float32), ids)
    peft_model = PeftModel.from_pretrained(load(family["base"], dtype=torch.float32), result.out)
    peft_logits = _logits(peft_model, ids)
    torch.testing.assert_close(peft_logits, tuned_logits, atol=1e-4, rtol=1e-4)
    plain = load(family["base"], dtype=torch.float32)
    plain.load_adapter(str(result.out))
    torch.testing.assert_close(_logits(plain, ids), peft_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        _logits(load(family["base"], dtype=torch.float32), ids), tuned_logits, atol=1e-3
    )


def test_base_plus_adapter_is_the_finetune_to_the_reported_error(family: dict[str, Path]) -> None:
    import transformers
    from peft import PeftModel

    result = extract(family, "noisy", "rank2", rank=2)
    base = transformers.AutoModelForCausalLM.from_pretrained(family["base"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, result.out).merge_and_unload().state_dict()
    tuned, original = tensors(family["noisy"]), tensors(family["base"])
    for module in result.modules:
        name = f"{module.module}.weight"
        delta = tuned[name] - original[name]
        error = float((merged[name] - tuned[name]).norm() / delta.norm())
        assert error == pytest.approx(module.error, rel=1e-3, abs=1e-6), name
        assert 0.05 < module.error < 1  # rank 2 of a rank-3 delta plus noise: not exact
    for name in ("model.norm.weight", "model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(merged[name], tuned[name])


def test_mergetui_lora_input_reads_it_back(family: dict[str, Path]) -> None:
    from mergetui.merge.plan import make_plan
    from mergetui.merge.runner import run_merge
    from mergetui.recipe.io import load_recipe

    result = extract(family, "noisy", "readback")
    root = family["root"]
    recipe = root / "readback.toml"
    recipe.write_text(
        '[merge]\nmethod = "passthrough"\n\n'
        f'[models.tuned]\nsource = "{family["base"]}"\nlora = "{result.out}"\n'
    )
    run_merge(make_plan(load_recipe(recipe), recipe_dir=root, out=root / "readback-merged"))
    merged, tuned = tensors(root / "readback-merged"), tensors(family["noisy"])
    assert set(merged) == set(tuned)
    for name, value in tuned.items():
        torch.testing.assert_close(merged[name], value, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "gemma"])
def test_biases_and_tied_embeddings_load_with_peft(tmp_path: Path, arch: str) -> None:
    """Qwen2's q/k/v biases: their deltas as lora_B.bias, as mergekit writes them, with
    lora_bias so PEFT loads rather than drops them; Gemma's tied head saved from the embedding."""
    import transformers
    from peft import PeftModel

    base = make_tiny_model(tmp_path / "base", arch=arch, num_layers=1)
    tuned = make_tiny_model(tmp_path / "tuned", base=base, seed=1)
    plan = plan_extraction(tuned, base, ExtractOptions())
    result = run_extraction(plan, tmp_path / "adapter", device="cpu")
    adapter = tensors(result.out)
    if arch == "qwen2":
        assert result.config["lora_bias"] is True
        assert f"{PREFIX}model.layers.0.self_attn.q_proj.lora_B.bias" in adapter
    else:
        assert "lora_bias" not in result.config
        embedding = tensors(tuned)["model.embed_tokens.weight"]
        assert torch.equal(adapter[f"{PREFIX}lm_head.weight"], embedding)
    load = transformers.AutoModelForCausalLM.from_pretrained
    ids = torch.tensor([[1, 5, 9, 20]])
    peft_model = PeftModel.from_pretrained(load(base, dtype=torch.float32), result.out)
    expected = _logits(load(tuned, dtype=torch.float32), ids)
    torch.testing.assert_close(_logits(peft_model, ids), expected, atol=1e-4, rtol=1e-4)

"""diff (the analysis) and merge (the plan) read the same tensors: one skipped-suffix list and one
float-dtype table, so buffers a model rebuilds on load are left out of both."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergetui.merge.analysis_plan import plan_analysis
from mergetui.merge.plan import make_plan
from mergetui.recipe.model import ModelEntry, Recipe

BUFFERS = {
    # Rotary frequencies, as older llama checkpoints carry them.
    "llama": (
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "model.layers.1.self_attn.rotary_emb.inv_freq",
    ),
    # GPT-2's causal mask and its masked value, as older GPT-2 checkpoints carry them.
    "gpt2": ("transformer.h.0.attn.bias", "transformer.h.0.attn.masked_bias"),
}
KEPT = {
    "llama": "model.layers.0.self_attn.q_proj.weight",
    "gpt2": "transformer.h.0.attn.c_attn.bias",
}


def _with_buffers(source: Path, folder: Path, names: tuple[str, ...]) -> Path:
    shutil.copytree(source, folder)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    for name in names:
        tensors[name] = torch.arange(4, dtype=torch.float32)
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("arch", sorted(BUFFERS))
def test_diff_and_merge_see_the_same_tensors(
    arch: str, tiny_model_factory: object, tmp_path: Path
) -> None:
    base = tiny_model_factory(arch, seed=0)  # type: ignore[operator]
    sources = {"base": base, "a": tiny_model_factory(arch, seed=1, base=base)}  # type: ignore[operator]
    models = {
        name: _with_buffers(path, tmp_path / name, BUFFERS[arch]) for name, path in sources.items()
    }
    analysis = plan_analysis(models, base="base")
    entries = {
        name: ModelEntry(name, str(path), parameters={"weight": 0.5})
        for name, path in models.items()
    }
    plan = make_plan(Recipe(method="linear", models=entries), out=tmp_path / "out")

    analysed = {tensor.name for tensor in analysis.tensors}
    merged = {tensor.name for tensor in plan.tensors}
    assert analysed == merged
    assert not analysed & set(BUFFERS[arch])
    assert KEPT[arch] in merged

"""extract-lora's plan without transformers' modelling code: each known decoder layout gives the
modules the built (meta) model gives, in its order, and the same plan; anything else (another
architecture, a tensor the layout does not know) builds the model as before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from mergetui.checkpoints.inspect import open_checkpoint
from mergetui.demo import make_tiny_model
from mergetui.merge import extract_plan
from mergetui.merge.extract_plan import (
    ExtractOptions,
    _meta_model,
    _walk,
    known_layout,
    plan_extraction,
)

OPTIONS = [
    ExtractOptions(rank=4),
    ExtractOptions(rank=4, embed_lora=True, exclude=(r"layers\.1\.mlp",)),
    ExtractOptions(rank=4, save_modules=("o_proj",), include=("proj|head",)),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("layouts")
    pairs = {}
    for arch in ("llama", "mistral", "qwen2", "gemma", "phi3"):
        base = make_tiny_model(root / f"{arch}-base", arch=arch, num_layers=2, tokenizer=False)
        tuned = make_tiny_model(root / f"{arch}-tuned", base=base, seed=1, tokenizer=False)
        pairs[arch] = (tuned, base)
    return pairs


def _summary(plan: extract_plan.ExtractPlan) -> tuple:
    return (
        [(t.module, t.embedding, t.finetuned.name, t.bias is not None) for t in plan.targets],
        [(s.module, s.info.name, s.name) for s in plan.saved],
        plan.modules_to_save,
    )


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma", "phi3"])
def test_known_layouts_are_the_models_own(
    models: dict[str, tuple[Path, Path]], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned, base = models[arch]
    checkpoint = open_checkpoint(tuned)
    layout = known_layout(checkpoint)
    assert layout is not None
    assert layout == _walk(_meta_model(checkpoint))
    fast = [_summary(plan_extraction(tuned, base, options)) for options in OPTIONS]
    monkeypatch.setattr(extract_plan, "known_layout", lambda checkpoint: None)
    built = [_summary(plan_extraction(tuned, base, options)) for options in OPTIONS]
    assert fast == built


def test_an_unknown_tensor_or_architecture_builds_the_model(tmp_path: Path) -> None:
    base = make_tiny_model(tmp_path / "base", num_layers=1, tokenizer=False)
    assert known_layout(open_checkpoint(base)) is not None
    weights = load_file(base / "model.safetensors")
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = weights["model.norm.weight"].clone()
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    assert known_layout(open_checkpoint(base)) is None
    gpt2 = make_tiny_model(tmp_path / "gpt2", arch="gpt2", num_layers=1, tokenizer=False)
    assert known_layout(open_checkpoint(gpt2)) is None
    plan = plan_extraction(base, base, ExtractOptions(rank=2))  # the model built: same choices
    assert len(plan.targets) == 7 and plan.modules_to_save[0] == "embed_tokens"


def test_a_known_layout_plans_without_transformers_models(
    models: dict[str, tuple[Path, Path]],
) -> None:
    """The point of the layouts: transformers' modelling code (~170 MB) is never imported."""
    tuned, base = models["llama"]
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mergetui.merge.extract_plan import ExtractOptions, plan_extraction\n"
        f"plan = plan_extraction(Path({str(tuned)!r}), Path({str(base)!r}), ExtractOptions())\n"
        "assert len(plan.targets) == 14, plan.targets\n"
        "print(sorted(m for m in sys.modules if m.startswith('transformers')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

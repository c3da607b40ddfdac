"""LoRA inputs on bases with tied embeddings (issue 16 §1): an adapter's head pieces land where
PEFT's merge_and_unload (which mergekit-yaml runs on `base+adapter`) puts them.

- extract-lora's adapter from a tied pair (the head saved as the embedding's copy) merges back to
  the fine-tune to the reported error, with mergekit-yaml's tensors: all of them for Gemma, all
  but the redundant `lm_head.weight` copy mergekit writes for a Llama (its architecture has an
  optional head, and PEFT's merged copy stores it untied).
- mergekit-extract-lora's adapter: a Llama's as ours; a Gemma's names lm_head in modules_to_save
  with no tensor, which PEFT cannot load (mergekit-yaml fails); mergetui merges it, with a
  warning, to the fine-tune.
- A LoRA on the tied head changes the shared embedding (after the embedding's own LoRA, rounded
  in between): mergekit-yaml's tensors exactly, on bfloat16.
- A saved head of its own cannot be a tied checkpoint's: a located error saying how to untie.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from lora_helpers import make_adapter, make_tied_llama, tensors
from test_lora_inputs import assert_same, merge_with_mergekit, merge_with_mergetui

from mergetui.demo import make_tiny_model

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
needs_mergekit = pytest.mark.skipif(
    importlib.util.find_spec("mergekit") is None, reason="mergekit is not installed"
)
HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tied")
    llama = make_tied_llama(root / "llama", dtype="bfloat16")
    llama32 = make_tied_llama(root / "llama32")
    gemma = make_tiny_model(root / "gemma", "gemma", seed=0)
    return {
        "root": root,
        "llama": llama,
        "llama-tuned": make_tiny_model(root / "llama-tuned", base=llama, seed=1),
        "llama32": llama32,
        "llama32-tuned": make_tiny_model(root / "llama32-tuned", base=llama32, seed=1),
        "gemma": gemma,
        "gemma-tuned": make_tiny_model(root / "gemma-tuned", base=gemma, seed=1),
    }


def linear_alone(root: Path, name: str, base: Path, adapter: Path) -> Path:
    config = root / f"{name}.yaml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {base}+{adapter}\n"
        "    parameters: {weight: 1.0}\n"
    )
    return config


def extract(tuned: Path, base: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> float:
    """`mergetui extract-lora` at rank 8 (a real approximation): the largest relative error."""
    from mergetui.cli import main

    assert main(["extract-lora", str(tuned), str(base), "--out", str(out), "--rank", "8"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    return float(re.search(r"largest relative error ([0-9.e+-]+)", printed).group(1))


def assert_is_the_finetune(merged: dict, tuned: Path, base: Path, error: float) -> None:
    """Each tensor is the fine-tune's, to the error extract-lora reported (saved ones exactly)."""
    want, was = tensors(tuned), tensors(base)
    assert set(merged) == set(want)
    worst = 0.0
    for name, value in want.items():
        delta = (value.float() - was[name].float()).norm()
        got = (merged[name].float() - value.float()).norm() / delta
        if name == EMBED or "norm" in name:
            assert torch.equal(merged[name], value), name
        worst = max(worst, float(got))
    assert 0.1 < error and worst == pytest.approx(error, rel=1e-3)


@needs_mergekit
@pytest.mark.parametrize("family", ["llama32", "gemma"])
def test_extract_lora_round_trip_on_a_tied_pair(
    tied: dict[str, Path], family: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root, base, tuned = tied["root"], tied[family], tied[f"{family}-tuned"]
    adapter = root / f"{family}-extracted"
    error = extract(tuned, base, adapter, capsys)
    assert f"base_model.model.{HEAD}" in tensors(adapter)  # the head, saved as the embedding
    config = linear_alone(root, f"{family}-round-trip", base, adapter)
    ours = merge_with_mergetui(config, root / f"{family}-round-trip-ours")
    assert_is_the_finetune(ours, tuned, base, error)
    theirs = merge_with_mergekit(config, root / f"{family}-round-trip-mk", root / f"{family}-c")
    if family == "llama32":  # mergekit writes PEFT's untied copy of the head: the embedding
        assert torch.equal(theirs.pop(HEAD), theirs[EMBED])
    assert_same(ours, theirs)


@needs_mergekit
@pytest.mark.parametrize("family", ["llama32", "gemma"])
def test_mergekit_extract_lora_adapter_on_a_tied_pair(
    tied: dict[str, Path], family: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """mergekit-extract-lora saves a Llama's tied head (its architecture names one), not a
    Gemma's, though modules_to_save names it for both."""
    from extract_helpers import run_mergekit_extract

    from mergetui.cli import main

    root, base, tuned = tied["root"], tied[family], tied[f"{family}-tuned"]
    adapter = root / f"{family}-mergekit-extracted"
    run_mergekit_extract(tuned, base, adapter, "--max-rank", "8")
    config = linear_alone(root, f"{family}-mergekit-extracted", base, adapter)
    out = root / f"{family}-mergekit-extracted-ours"
    assert main(["merge", str(config), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())
    ours = tensors(out)
    assert HEAD not in ours and torch.equal(ours[EMBED], tensors(tuned)[EMBED])
    theirs_out, cache = root / f"{family}-mergekit-extracted-mk", root / f"{family}-mk-cache"
    if family == "gemma":
        assert f"base_model.model.{HEAD}" not in tensors(adapter)
        assert "modules_to_save names lm_head but the adapter holds no lm_head tensor" in printed
        with pytest.raises(KeyError, match="lm_head"):  # PEFT cannot load it
            merge_with_mergekit(config, theirs_out, cache)
    else:
        theirs = merge_with_mergekit(config, theirs_out, cache)
        assert torch.equal(theirs.pop(HEAD), theirs[EMBED])
        assert_same(ours, theirs)
    ours_extracted = root / f"{family}-ours-extracted"
    extract(tuned, base, ours_extracted, capsys)
    again = merge_with_mergetui(
        linear_alone(root, f"{family}-ours-again", base, ours_extracted),
        root / f"{family}-ours-again-out",
    )
    # the same model as from our own extraction, to mergekit's float32 SVD (~2e-5 relative off
    # the exact truncation ours computes in float64: 1.8e-6 on weights of at most 0.09 here)
    for name, value in ours.items():
        assert torch.allclose(value, again[name], atol=1e-5), name


@needs_mergekit
@pytest.mark.parametrize("targets", [["q_proj", "lm_head"], ["q_proj", "embed_tokens", "lm_head"]])
def test_lora_on_the_tied_head_changes_the_embedding(
    tied: dict[str, Path], targets: list[str]
) -> None:
    root, base = tied["root"], tied["llama"]  # bfloat16: each update rounded, in PEFT's order
    name = "-".join(targets)
    adapter = make_adapter(base, root / name, seed=3, r=4, lora_alpha=8, target_modules=targets)
    config = linear_alone(root, name, base, adapter)
    ours = merge_with_mergetui(config, root / f"{name}-ours")
    assert HEAD not in ours and not torch.equal(ours[EMBED], tensors(base)[EMBED])
    assert_same(ours, merge_with_mergekit(config, root / f"{name}-mk", root / f"{name}-c"))
    if "embed_tokens" in targets:  # both updates, the embedding's first, each rounded
        raw, prefix = tensors(adapter), "base_model.model."
        w = tensors(base)[EMBED].float()
        e = (
            raw[f"{prefix}model.embed_tokens.lora_embedding_B"]
            @ raw[f"{prefix}model.embed_tokens.lora_embedding_A"]
        ).T * 2
        h = raw[f"{prefix}lm_head.lora_B.weight"] @ raw[f"{prefix}lm_head.lora_A.weight"] * 2
        bf16 = torch.bfloat16  # Embedding.merge rounds its update first, then each sum
        twice = ((w + e.to(bf16).float()).to(bf16).float() + h).to(bf16)
        assert torch.equal(ours[EMBED], twice)
        assert not torch.equal(ours[EMBED], (w + e + h).to(torch.bfloat16))


@pytest.mark.parametrize("saved", [["lm_head"], ["embed_tokens", "lm_head"]])
def test_a_head_of_its_own_on_a_tied_base_is_a_located_error(
    tied: dict[str, Path], saved: list[str]
) -> None:
    from mergetui.errors import UserError
    from mergetui.recipe.io import load_recipe
    from mergetui.recipe.validate import validate_recipe

    root, base = tied["root"], tied["gemma"]
    name = "saved-" + "-".join(saved)
    adapter = make_adapter(base, root / name, r=4, target_modules=["q_proj"], modules_to_save=saved)
    recipe = root / f"{name}.toml"
    recipe.write_text(
        f'[merge]\nmethod = "passthrough"\n\n[models.m]\nsource = "{base}"\nlora = "{adapter}"\n'
    )
    with pytest.raises(UserError) as caught:
        merge_with_mergetui(recipe, root / f"{name}-out")
    assert caught.value.where == "models.m.lora"
    assert (
        "replaces lm_head.weight (modules_to_save) with values of its own" in caught.value.message
    )
    assert "untie the base first (save it with tie_word_embeddings: false" in caught.value.fix
    problems = validate_recipe(load_recipe(recipe), base_dir=root)
    assert any(
        p.is_error and p.where == "models.m.lora" and "untie" in (p.fix or "") for p in problems
    )

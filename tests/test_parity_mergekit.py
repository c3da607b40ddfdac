"""Parity with mergekit 0.1.5: the same YAML config through both engines, every method, several
architectures, tensor by tensor.

mergekit runs in-process (`mergekit.merge.run_merge`), once per (architecture, config), on tiny
float32 checkpoints made by the test fixtures; ours runs the same YAML file through
`load_recipe -> make_plan -> run_merge`. Deterministic methods must agree to
max|ours - theirs| / max|theirs| <= 1e-3 on every tensor, with the same tensor names and the same
output layer count. Random methods (DARE, DELLA) cannot match bit for bit (different generators),
so they must keep the same share of the task vectors and the same scale, and be reproducible from
their seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mergetui.merge.plan import make_plan
from mergetui.merge.runner import run_merge
from mergetui.recipe.io import load_recipe

ARCHES = ("llama", "qwen2", "gemma", "gpt2")
# Every method runs on these; gpt2 (Conv1D weights, transformer.h.N, tied head) runs a subset.
FULL_ARCHES = ("llama", "qwen2", "gemma")
GPT2_METHODS = ("linear", "slerp", "ties", "model_stock", "frankenmerge", "depth_upscaling")
RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")
TOLERANCE = 1e-3

# {base}, {a}, {b}: absolute model folders. Layer counts are 4.
CONFIGS: dict[str, str] = {
    "linear": """
models:
  - model: {base}
    parameters: {{weight: 0.5}}
  - model: {a}
    parameters: {{weight: [0.2, 0.4]}}
  - model: {b}
    parameters: {{weight: 0.3}}
merge_method: linear
dtype: float32
""",
    "slerp": """
models:
  - model: {base}
  - model: {a}
merge_method: slerp
base_model: {base}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
    "nuslerp": """
models:
  - model: {a}
    parameters: {{weight: 0.7}}
  - model: {b}
    parameters: {{weight: 0.3}}
merge_method: nuslerp
base_model: {base}
dtype: float32
""",
    "multislerp": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.6}}
  - model: {b}
    parameters: {{weight: 0.4}}
merge_method: multislerp
base_model: {base}
dtype: float32
""",
    "karcher": """
models:
  - model: {base}
  - model: {a}
  - model: {b}
merge_method: karcher
parameters: {{max_iter: 20, tol: 1.0e-6}}
dtype: float32
""",
    "task_arithmetic": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.7}}
  - model: {b}
    parameters: {{weight: [0.2, 0.5]}}
merge_method: task_arithmetic
base_model: {base}
parameters: {{lambda: 0.9}}
dtype: float32
""",
    "ties": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.4, density: 0.7}}
merge_method: ties
base_model: {base}
dtype: float32
""",
    "breadcrumbs": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.5, density: 0.8, gamma: 0.05}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.7, gamma: 0.02}}
merge_method: breadcrumbs
base_model: {base}
dtype: float32
""",
    "breadcrumbs_ties": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.5, density: 0.8, gamma: 0.05}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.7, gamma: 0.02}}
merge_method: breadcrumbs_ties
base_model: {base}
parameters: {{normalize: true}}
dtype: float32
""",
    "dare_ties": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5}}
merge_method: dare_ties
base_model: {base}
dtype: float32
""",
    "dare_linear": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.6, density: 0.4}}
  - model: {b}
    parameters: {{weight: 0.4, density: 0.6}}
merge_method: dare_linear
base_model: {base}
dtype: float32
""",
    "della": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.5, density: 0.5, epsilon: 0.1}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5, epsilon: 0.1}}
merge_method: della
base_model: {base}
dtype: float32
""",
    "della_linear": """
models:
  - model: {base}
  - model: {a}
    parameters: {{weight: 0.5, density: 0.6, epsilon: 0.15}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.4, epsilon: 0.15}}
merge_method: della_linear
base_model: {base}
dtype: float32
""",
    "sce": """
models:
  - model: {base}
  - model: {a}
  - model: {b}
merge_method: sce
base_model: {base}
parameters: {{select_topk: 0.5}}
dtype: float32
""",
    "ram": """
models:
  - model: {base}
  - model: {a}
  - model: {b}
merge_method: ram
base_model: {base}
parameters: {{epsilon: 0.01}}
dtype: float32
""",
    "ramplus_tl": """
models:
  - model: {base}
  - model: {a}
  - model: {b}
merge_method: ramplus_tl
base_model: {base}
parameters: {{epsilon: 0.01, r: 0.5, alpha: 0.4}}
dtype: float32
""",
    "model_stock": """
models:
  - model: {base}
  - model: {a}
  - model: {b}
merge_method: model_stock
base_model: {base}
dtype: float32
""",
    "nearswap": """
models:
  - model: {base}
  - model: {a}
merge_method: nearswap
base_model: {base}
parameters: {{t: 0.01}}
dtype: float32
""",
    "arcee_fusion": """
models:
  - model: {base}
  - model: {a}
merge_method: arcee_fusion
base_model: {base}
dtype: float32
""",
    "passthrough": """
models:
  - model: {a}
    parameters: {{scale: [1.0, 0.5]}}
merge_method: passthrough
dtype: float32
""",
    # Goliath-style frankenmerge: interleaved, overlapping runs of two models, layers re-used.
    "frankenmerge": """
slices:
  - sources:
      - model: {a}
        layer_range: [0, 3]
  - sources:
      - model: {b}
        layer_range: [1, 4]
  - sources:
      - model: {a}
        layer_range: [2, 4]
        parameters: {{scale: 0.5}}
merge_method: passthrough
dtype: float32
""",
    # SOLAR-style depth up-scaling: one model stacked with itself, overlapping.
    "depth_upscaling": """
slices:
  - sources:
      - model: {base}
        layer_range: [0, 3]
  - sources:
      - model: {base}
        layer_range: [1, 4]
merge_method: passthrough
dtype: float32
""",
    # A slice-form SLERP: per-slice t gradients and a slice-level parameter.
    "slerp_slices": """
slices:
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {a}
        layer_range: [0, 2]
    parameters:
      t: [0.1, 0.9]
  - sources:
      - model: {base}
        layer_range: [2, 4]
      - model: {a}
        layer_range: [2, 4]
merge_method: slerp
base_model: {base}
parameters:
  t: 0.3
dtype: float32
""",
}


STACKS = ("frankenmerge", "depth_upscaling")


def _cases() -> list[tuple[str, str]]:
    cases = [
        (arch, method)
        for arch in FULL_ARCHES
        for method in CONFIGS
        # mergekit cannot stack Qwen2 under transformers 5: see test_qwen2_stacks_where_mergekit_fails
        if not (arch == "qwen2" and method in STACKS)
    ]
    cases += [("gpt2", method) for method in GPT2_METHODS]
    return cases


@pytest.fixture(scope="session")
def families(tiny_model_factory: Callable[..., Path]) -> dict[str, dict[str, Path]]:
    result = {}
    for arch in ARCHES:
        base = tiny_model_factory(arch, seed=0)
        result[arch] = {
            "base": base,
            "a": tiny_model_factory(arch, seed=1, base=base),
            "b": tiny_model_factory(arch, seed=2, base=base),
        }
    return result


@pytest.fixture(scope="session")
def parity_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parity")


def _write_config(root: Path, arch: str, method: str, family: dict[str, Path]) -> Path:
    path = root / f"{arch}-{method}.yml"
    if not path.exists():
        path.write_text(
            CONFIGS[method].format(
                base=family["base"].resolve(), a=family["a"].resolve(), b=family["b"].resolve()
            )
        )
    return path


def _run_mergekit(config: Path, out: Path, seed: int = 0) -> Path:
    if out.exists():
        return out
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions
    from mergekit.merge import run_merge as mergekit_run_merge

    parsed = MergeConfiguration.model_validate(yaml.safe_load(config.read_text()))
    options = MergeOptions(
        random_seed=seed, quiet=True, copy_tokenizer=False, write_model_card=False
    )
    mergekit_run_merge(parsed, str(out), options)
    return out


def _run_ours(config: Path, out: Path, seed: int | None = 0) -> Path:
    recipe = load_recipe(config)
    plan = make_plan(recipe, recipe_dir=config.parent, out=out, device="cpu", seed=seed)
    run_merge(plan, force=True)
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    return tensors


def _layer_count(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    for key in ("num_hidden_layers", "n_layer"):
        if key in config:
            return int(config[key])
    raise AssertionError("no layer count in config.json")


@pytest.mark.parametrize(("arch", "method"), _cases())
def test_parity_with_mergekit(
    arch: str, method: str, families: dict[str, dict[str, Path]], parity_root: Path
) -> None:
    family = families[arch]
    config = _write_config(parity_root, arch, method, family)
    theirs_dir = _run_mergekit(config, parity_root / f"{arch}-{method}-mergekit")
    ours_dir = _run_ours(config, parity_root / f"{arch}-{method}-ours")
    theirs, ours = _tensors(theirs_dir), _tensors(ours_dir)

    assert set(ours) == set(theirs), (
        f"only ours: {sorted(set(ours) - set(theirs))[:5]}, "
        f"only mergekit: {sorted(set(theirs) - set(ours))[:5]}"
    )
    assert _layer_count(ours_dir) == _layer_count(theirs_dir)
    if method in RANDOM_METHODS:
        _assert_same_statistics(ours, theirs, _tensors_of(family["base"]))
        return
    worst = ("", 0.0)
    for name, expected in theirs.items():
        got = ours[name]
        assert got.shape == expected.shape, name
        assert got.dtype == expected.dtype, name
        scale = expected.abs().max().item()
        error = (got.float() - expected.float()).abs().max().item()
        relative = error / scale if scale > 0 else error
        if relative > worst[1]:
            worst = (name, relative)
    assert worst[1] <= TOLERANCE, (
        f"{worst[0]}: max|ours - mergekit| / max|mergekit| = {worst[1]:.2e}"
    )


def _tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    return _tensors(folder)


def _assert_same_statistics(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
) -> None:
    """Random masks differ, but the kept share and the scale of the change must agree."""
    ours_kept = theirs_kept = total = 0
    ours_delta = theirs_delta = 0.0
    for name, expected in theirs.items():
        if expected.numel() < 1024 or name not in base:
            continue
        reference = base[name].float()
        ours_change = ours[name].float() - reference
        theirs_change = expected.float() - reference
        ours_kept += int((ours_change != 0).sum())
        theirs_kept += int((theirs_change != 0).sum())
        ours_delta += float(ours_change.abs().sum())
        theirs_delta += float(theirs_change.abs().sum())
        total += expected.numel()
    assert total > 0
    assert abs(ours_kept - theirs_kept) / total < 0.02, (ours_kept / total, theirs_kept / total)
    assert abs(ours_delta - theirs_delta) / theirs_delta < 0.05, (ours_delta, theirs_delta)


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_random_methods_are_reproducible_from_the_seed(
    method: str, families: dict[str, dict[str, Path]], parity_root: Path
) -> None:
    config = _write_config(parity_root, "llama", method, families["llama"])
    first = _tensors(_run_ours(config, parity_root / f"seed-{method}-1", seed=11))
    again = _tensors(_run_ours(config, parity_root / f"seed-{method}-2", seed=11))
    other = _tensors(_run_ours(config, parity_root / f"seed-{method}-3", seed=12))
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first)


@pytest.mark.parametrize("method", STACKS)
def test_qwen2_stacks_where_mergekit_fails(
    method: str, families: dict[str, dict[str, Path]], parity_root: Path
) -> None:
    """mergekit rewrites only `num_hidden_layers` of a stack, which transformers 5 refuses for
    configs with a per-layer `layer_types` list; mergetui rebuilds the list, so its stack loads and
    each output layer is its source layer."""
    config = _write_config(parity_root, "qwen2", method, families["qwen2"])
    with pytest.raises(Exception, match="layer_types"):
        _run_mergekit(config, parity_root / f"qwen2-{method}-mergekit-fails")
    ours_dir = _run_ours(config, parity_root / f"qwen2-{method}-ours")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ours_dir))
    recipe = load_recipe(config)
    sources = [
        (recipe.models[s.sources[0].model].source, layer, s.sources[0].parameters.get("scale"))
        for s in recipe.slices or []
        for layer in range(*s.sources[0].layer_range)
    ]
    assert len(model.model.layers) == len(sources) == _layer_count(ours_dir)
    merged = _tensors(ours_dir)
    for out_layer, (source, layer, scale) in enumerate(sources):
        original = _tensors(Path(source))[f"model.layers.{layer}.self_attn.q_proj.weight"]
        expected = original * scale if scale is not None else original
        torch.testing.assert_close(
            merged[f"model.layers.{out_layer}.self_attn.q_proj.weight"], expected
        )

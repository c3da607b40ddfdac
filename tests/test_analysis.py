"""Merge insight metrics (mergetui.merge.analysis) on hand-made and tiny real checkpoints.

Each metric is checked against its formula computed independently in float64 over the concatenated
tensors of a group; tensors are split into many pieces (a tiny CHUNK_ELEMENTS) so the piecewise
sums are exercised. Then: identical models, a perturbation confined to one layer's MLP, bf16 and
sharded inputs, the on-disk cache and its invalidation, cancellation and refusals.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergetui.errors import CancelledError, UserError
from mergetui.merge import analysis_run as analysis_module
from mergetui.merge.analysis import (
    Analysis,
    agreement_from,
    cosine_from,
    distance_from,
    format_metric,
)
from mergetui.merge.analysis_plan import cache_path, plan_analysis
from mergetui.merge.analysis_run import analyze, run_analysis
from mergetui.paths import CACHE_ENV
from mergetui.paths import analysis_cache_dir as cache_dir

NAMES = {
    "model.embed_tokens.weight": (10, 4),
    "model.layers.0.self_attn.q_proj.weight": (4, 4),
    "model.layers.0.mlp.up_proj.weight": (6, 4),
    "model.layers.0.input_layernorm.weight": (4,),
    "model.layers.1.self_attn.q_proj.weight": (4, 4),
    "model.layers.1.mlp.up_proj.weight": (6, 4),
    "model.layers.1.input_layernorm.weight": (4,),
    "model.norm.weight": (4,),
    "lm_head.weight": (10, 4),
}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pieces of 7 elements in blocks of 3: several blocks per piece, a short last one.
    monkeypatch.setattr(analysis_module, "CHUNK_ELEMENTS", 7)
    monkeypatch.setattr(analysis_module, "BLOCK_ELEMENTS", 3)


def write_model(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    return folder


def random_tensors(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen).to(dtype) for name, shape in NAMES.items()}


def perturbed(
    tensors: dict[str, torch.Tensor], seed: int, scale: float = 0.3
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in tensors.items()
    }


def flat(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].double().reshape(-1) for n in names])


def expected_cosine(x: torch.Tensor, r: torch.Tensor) -> float:
    return float(torch.dot(x, r) / (x.norm() * r.norm()))


def expected_distance(x: torch.Tensor, r: torch.Tensor) -> float:
    return float((x - r).norm() / r.norm())


def expected_agreement(taus: list[torch.Tensor]) -> float:
    signs = torch.stack([t.sign() for t in taus])
    nonzero = (signs != 0).sum(0)
    contested = nonzero >= 2
    positive = (signs > 0).sum(0)
    negative = (signs < 0).sum(0)
    unanimous = contested & ((positive == 0) | (negative == 0))
    return float(unanimous.sum()) / float(contested.sum()) if contested.any() else 1.0


@pytest.fixture
def family(tmp_path: Path) -> dict[str, dict[str, torch.Tensor]]:
    base = random_tensors(0)
    a = perturbed(base, 1)
    b = perturbed(base, 2, scale=0.6)
    c = perturbed(base, 3, scale=0.1)
    # Exact zeros in some task-vector entries: they abstain from the sign vote.
    a["model.layers.0.mlp.up_proj.weight"][0] = base["model.layers.0.mlp.up_proj.weight"][0]
    b["model.layers.0.mlp.up_proj.weight"][:2] = base["model.layers.0.mlp.up_proj.weight"][:2]
    return {"base": base, "a": a, "b": b, "c": c}


def folders(tmp_path: Path, family: dict[str, dict[str, torch.Tensor]]) -> dict[str, Path]:
    return {name: write_model(tmp_path / name, tensors) for name, tensors in family.items()}


GROUPS = [
    (0, None),
    (1, None),
    (0, ["mlp"]),
    (1, ["attention"]),
    (0, ["norm", "other"]),
    ("embed", None),
    ("head", None),
    ("head", ["head"]),
    (None, None),
    (None, ["mlp"]),
]


def names_of(row, kinds) -> list[str]:
    from mergetui.checkpoints.layers import block_kind, layer_index

    out = []
    for name in NAMES:
        index = layer_index(name)
        key = index if index is not None else ("embed" if "embed" in name else "head")
        if row is not None and key != row:
            continue
        if kinds is not None and block_kind(name) not in kinds:
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("row,kinds", GROUPS)
def test_metrics_match_their_formulas(tmp_path, family, small_chunks, row, kinds) -> None:
    paths = folders(tmp_path, family)
    result = analyze(paths, "base", device="cpu", use_cache=False)
    assert result.reference == "base" and result.others == ("a", "b", "c")
    metrics = result.group(row, kinds)
    names = names_of(row, kinds)
    assert metrics is not None and names
    r = flat(family["base"], names)
    xs = {m: flat(family[m], names) for m in ("a", "b", "c")}
    for model, x in xs.items():
        assert metrics.cosine[model] == pytest.approx(expected_cosine(x, r), abs=1e-6)
        assert metrics.distance[model] == pytest.approx(expected_distance(x, r), rel=1e-5)
    assert metrics.agreement == pytest.approx(
        expected_agreement([x - r for x in xs.values()]), abs=1e-12
    )
    assert metrics.numel == r.numel()


def test_two_task_vectors_agreement_is_the_share_of_agreeing_signs(tmp_path: Path) -> None:
    base = {name: torch.zeros(shape) for name, shape in NAMES.items()}
    a = {name: torch.zeros(shape) for name, shape in NAMES.items()}
    b = {name: torch.zeros(shape) for name, shape in NAMES.items()}
    base["model.norm.weight"] = torch.ones(4)
    a["model.norm.weight"] = torch.tensor([2.0, 2.0, 0.0, 1.0])  # tau: +1 +1 -1  0
    b["model.norm.weight"] = torch.tensor([3.0, 0.5, 0.0, 5.0])  # tau: +2 -.5 -1 +4
    paths = {
        "base": write_model(tmp_path / "base", base),
        "a": write_model(tmp_path / "a", a),
        "b": write_model(tmp_path / "b", b),
    }
    result = analyze(paths, "base", device="cpu", use_cache=False)
    norm = result.group("head", ["norm"])
    # entries 0..2 have two non-zero task vectors; 0 and 2 agree, 1 does not; 3 abstains.
    assert norm.agreement == pytest.approx(2 / 3)
    # Layers where nothing moved: nothing conflicts.
    assert result.group(0).agreement == 1.0
    # All-zero groups compare as the same direction, at distance 0.
    assert result.group(0).cosine["a"] == 1.0 and result.group(0).distance["a"] == 0.0


def test_formulas_edge_cases() -> None:
    assert cosine_from(0.0, 0.0, 0.0) == 1.0
    assert cosine_from(0.0, 1.0, 0.0) == 0.0
    assert cosine_from(-2.0, 1.0, 4.0) == -1.0
    assert distance_from(0.0, 0.0) == 0.0
    assert math.isinf(distance_from(1.0, 0.0))
    assert distance_from(4.0, 16.0) == 0.5
    assert agreement_from(0, 0) == 1.0
    assert agreement_from(3, 4) == 0.75
    assert format_metric("cosine", 0.99512) == "0.9951"
    assert format_metric("agreement", 0.5) == "50.0%"
    assert format_metric("distance", 0.00001) == "1.0e-05"
    assert format_metric("distance", None) == "-"


def test_identical_models(tmp_path: Path, family, small_chunks) -> None:
    a = write_model(tmp_path / "a", family["a"])
    a_copy = write_model(tmp_path / "a-copy", family["a"])
    base = write_model(tmp_path / "base", family["base"])
    alone = analyze({"a": a, "a2": a_copy}, device="cpu", use_cache=False)
    with_base = analyze({"a": a, "a2": a_copy, "base": base}, "base", device="cpu", use_cache=False)
    for row in alone.rows() + [None]:
        metrics = alone.group(row)
        assert metrics.cosine["a2"] == pytest.approx(1.0, abs=1e-12)
        assert metrics.distance["a2"] == 0.0
        assert metrics.agreement is None  # one task vector: nothing to agree with
        shared = with_base.group(row)
        assert shared.cosine["a"] == pytest.approx(shared.cosine["a2"], abs=0)
        assert shared.agreement == 1.0


def test_a_perturbation_in_one_mlp_shows_only_there(tiny_model_factory, tmp_path: Path) -> None:
    base = tiny_model_factory("llama", seed=0)
    changed = tmp_path / "changed"
    shutil.copytree(base, changed)
    tensors = load_file(str(changed / "model.safetensors"))
    target = "model.layers.2.mlp.down_proj.weight"
    tensors[target] = tensors[target] + 0.05 * torch.randn(tensors[target].shape)
    save_file(tensors, str(changed / "model.safetensors"), metadata={"format": "pt"})
    result = analyze({"base": base, "changed": changed}, device="cpu", use_cache=False)
    assert result.rows() == ["embed", 0, 1, 2, 3, "head"]
    for row in result.rows():
        for kind in result.kinds(row):
            metrics = result.group(row, [kind])
            moved = row == 2 and kind == "mlp"
            if moved:
                assert metrics.cosine["changed"] < 0.999
                assert metrics.distance["changed"] > 0.01
            else:
                assert metrics.cosine["changed"] == pytest.approx(1.0, abs=1e-12), (row, kind)
                assert metrics.distance["changed"] == 0.0, (row, kind)
    assert result.group(2).distance["changed"] > 0
    assert result.group(1).distance["changed"] == 0.0


def test_bf16_and_sharded_inputs(tmp_path: Path, family, sharded_llama, tiny_model_factory) -> None:
    half = {k: v.to(torch.bfloat16) for k, v in family["base"].items()}
    other = {k: v.to(torch.bfloat16) for k, v in family["a"].items()}
    result = analyze(
        {"x": write_model(tmp_path / "x", half), "y": write_model(tmp_path / "y", other)},
        device="cpu",
        use_cache=False,
    )
    names = names_of(None, None)
    expected = expected_cosine(flat(other, names), flat(half, names))
    assert result.group().cosine["y"] == pytest.approx(expected, abs=1e-6)
    # The same weights, once sharded: identical, whatever the file layout.
    single = tiny_model_factory("llama", seed=0)
    same = analyze({"one": single, "many": sharded_llama}, device="cpu", use_cache=False)
    assert same.group().distance["many"] == 0.0


def test_tensors_that_do_not_match_are_skipped_and_named(tmp_path: Path, family) -> None:
    odd = dict(family["a"])
    odd["model.norm.weight"] = torch.ones(5)
    del odd["lm_head.weight"]
    odd["extra.weight"] = torch.ones(3)
    result = analyze(
        {
            "base": write_model(tmp_path / "b", family["base"]),
            "odd": write_model(tmp_path / "o", odd),
        },
        device="cpu",
        use_cache=False,
    )
    text = " | ".join(result.skipped)
    assert "model.norm.weight: shape [5] in odd" in text
    assert "lm_head.weight: missing in odd" in text
    assert "only in odd" in text
    assert result.rows() == ["embed", 0, 1]


def test_refusals(tmp_path: Path, family) -> None:
    a = write_model(tmp_path / "a", family["a"])
    with pytest.raises(UserError, match="at least two"):
        analyze({"a": a})
    with pytest.raises(UserError, match="not one of the models"):
        analyze({"a": a, "b": a}, "zzz")
    other = write_model(tmp_path / "other", {"something.else": torch.ones(3)})
    with pytest.raises(UserError, match="no tensor in common"):
        analyze({"a": a, "other": other})


def test_results_are_cached_and_invalidated_when_a_file_changes(
    tmp_path: Path, family, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = folders(tmp_path, family)
    first = analyze(paths, "base", device="cpu")
    assert not first.cached
    assert cache_dir() == isolated_cache / "analysis"
    stored = list((isolated_cache / "analysis").glob("*.json"))
    assert len(stored) == 1 and not list((isolated_cache / "analysis").glob(".tmp-*"))

    calls = []
    real_compute = analysis_module._compute

    def counting(*args, **kwargs):
        calls.append(1)
        return real_compute(*args, **kwargs)

    monkeypatch.setattr(analysis_module, "_compute", counting)
    second = analyze(paths, "base", device="cpu")
    assert second.cached and calls == []
    assert second.to_dict()["rows"] == first.to_dict()["rows"]
    # Names come from the caller, not the cache: the same files under other names.
    renamed = analyze(
        {"B": paths["base"], "A": paths["a"], "Bb": paths["b"], "C": paths["c"]}, "B", device="cpu"
    )
    assert renamed.cached and renamed.group().cosine["A"] == first.group().cosine["a"]

    # Rewrite one checkpoint: same path, new contents -> recomputed.
    changed = dict(family["c"])
    changed["lm_head.weight"] = changed["lm_head.weight"] * -1
    write_model(tmp_path / "c", changed)
    stat = (tmp_path / "c" / "model.safetensors").stat()
    os.utime(tmp_path / "c" / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = analyze(paths, "base", device="cpu")
    assert not third.cached and calls == [1]
    assert third.group("head", ["head"]).cosine["c"] < 0
    assert first.group("head", ["head"]).cosine["c"] > 0
    # A different reference is a different analysis.
    fourth = analyze(paths, "a", device="cpu")
    assert not fourth.cached and calls == [1, 1]


def test_a_corrupt_cache_entry_is_recomputed(tmp_path: Path, family) -> None:
    paths = folders(tmp_path, family)
    plan = plan_analysis(paths, "base")
    run_analysis(plan, device="cpu")
    cache_path(plan).write_text("{not json")
    again = run_analysis(plan, device="cpu")
    assert not again.cached
    assert run_analysis(plan, device="cpu").cached


def test_cancel_stops_between_pieces_and_caches_nothing(
    tmp_path: Path, family, small_chunks, isolated_cache: Path
) -> None:
    paths = folders(tmp_path, family)
    cancel = threading.Event()
    seen = []

    def on_progress(event) -> None:
        seen.append(event)
        if len(seen) == 3:
            cancel.set()

    with pytest.raises(CancelledError):
        analyze(paths, "base", device="cpu", cancel=cancel, on_progress=on_progress)
    assert len(seen) == 3
    assert seen[-1].bytes_done < seen[-1].total_bytes
    assert not list(isolated_cache.rglob("*.json"))
    # No reader thread is left behind.
    assert not [t for t in threading.enumerate() if t.name == "mergetui-analysis-reader"]


def test_progress_reaches_the_total(tmp_path: Path, family, small_chunks) -> None:
    paths = folders(tmp_path, family)
    events = []
    analyze(paths, "base", device="cpu", use_cache=False, on_progress=events.append)
    assert events[-1].bytes_done == events[-1].total_bytes
    assert events[-1].tensors_done == events[-1].tensor_count == len(NAMES)
    done = [e.bytes_done for e in events]
    assert done == sorted(done)
    assert events[-1].fraction == 1.0


def test_to_dict_is_json_with_every_row_and_kind(tmp_path: Path, family) -> None:
    result = analyze(folders(tmp_path, family), "base", device="cpu", use_cache=False)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["reference"] == "base" and data["base"] == "base"
    assert data["compared"] == ["a", "b", "c"]
    assert [r["row"] for r in data["rows"]] == ["embed", 0, 1, "head"]
    assert set(data["rows"][1]["kinds"]) == {"attention", "mlp", "norm"}
    assert data["overall"]["agreement"] == pytest.approx(result.group().agreement)
    assert isinstance(result, Analysis)

"""Every deterministic method against mergekit 0.1.5's own implementation, on the same tensors.

mergekit's reference is `mergekit.merge_methods.merge_tensors`, its public entry point for raw
tensors: it builds the TensorGroup (ids, base flag) and binds per-input parameters exactly as the
graph adapter (task_adapter.ExecuteMergeMethodTask) does, then runs the registered method object.
Tolerance: max |ours - mergekit| <= 1e-5 x the largest magnitude among the inputs and the
reference (1e-4 for the two iterative spherical means, where mergekit's float32 rounding is the
larger error; see docs/methods.md).

Magnitude selections (ties, breadcrumbs, sce) are compared on task vectors with distinct
magnitudes: on equal magnitudes mergekit's (unstable) argsort picks arbitrary entries, which
test_methods_formulas checks against a stable sort instead.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import torch
from mergekit.merge_methods import merge_tensors

from mergetui.merge.methods import MethodContext, get_method_function

SHAPES = [(48, 40), (257,), (1,), (3, 5, 16), (33, 1)]


def _gen(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def ours(
    method: str,
    tensors: list[torch.Tensor],
    base_index: int | None,
    shared: dict[str, Any],
    per_model: dict[int, dict[str, Any]],
) -> torch.Tensor:
    ctx = MethodContext(
        method=method,
        tensor_name="model.layers.0.mlp.up_proj.weight",
        base_index=base_index,
        shared=dict(shared),
        per_model=[dict(per_model.get(i, {})) for i in range(len(tensors))],
        seed=1234,
    )
    return get_method_function(method)([t.clone() for t in tensors], ctx)


def theirs(
    method: str,
    tensors: list[torch.Tensor],
    base_index: int | None,
    shared: dict[str, Any],
    per_model: dict[int, dict[str, Any]],
) -> torch.Tensor:
    parameters: dict[str, Any] = dict(shared)
    names = {name for values in per_model.values() for name in values}
    for name in names:
        parameters[name] = {i: v[name] for i, v in per_model.items() if name in v}
    return merge_tensors(
        [t.clone() for t in tensors],
        method,
        parameters=parameters,
        base_index=base_index,
        name="model.layers.0.mlp.up_proj.weight",
    )


def assert_parity(
    method: str,
    tensors: list[torch.Tensor],
    base_index: int | None,
    shared: dict[str, Any],
    per_model: dict[int, dict[str, Any]],
    tolerance: float = 1e-5,
) -> None:
    got = ours(method, tensors, base_index, shared, per_model)
    want = theirs(method, tensors, base_index, shared, per_model)
    assert got.shape == want.shape
    assert got.dtype == torch.float32
    scale = max([want.abs().max().item()] + [t.abs().max().item() for t in tensors] + [1e-30])
    error = (got - want).abs().max().item() / scale
    assert error <= tolerance, f"{method}: relative error {error:.3g}"


def distinct_task_vectors(
    shape: tuple[int, ...], count: int, generator: torch.Generator
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A base and `count` models whose x - base is exact and has distinct magnitudes.

    The base sits on a 2**-10 grid and the task vectors on a 2**-20 grid, so the float32
    subtraction loses nothing and no two entries of one task vector share a magnitude.
    """
    numel = int(torch.tensor(shape).prod())
    base = torch.round(torch.randn(shape, generator=generator) * 1024) / 1024
    models = []
    for _ in range(count):
        magnitudes = (torch.randperm(numel, generator=generator) + 1).float() * 2.0**-20
        signs = torch.where(torch.rand(numel, generator=generator) < 0.5, -1.0, 1.0)
        models.append(base + (magnitudes * signs).view(shape))
    return base, models


# -- linear, slerp, nuslerp, multislerp, karcher ---------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("normalize", [True, False])
def test_linear(shape: tuple[int, ...], count: int, normalize: bool) -> None:
    g = _gen("linear", shape, count)
    tensors = [torch.randn(shape, generator=g) for _ in range(count)]
    weights = [0.7, -0.2, 0.4, 1.5][:count]
    per_model = {i: {"weight": w} for i, w in enumerate(weights)}
    assert_parity("linear", tensors, None, {"normalize": normalize}, per_model)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 1.0, 1.3])
@pytest.mark.parametrize("base_index", [0, 1])
def test_slerp(shape: tuple[int, ...], t: float, base_index: int) -> None:
    g = _gen("slerp", shape, t)
    tensors = [torch.randn(shape, generator=g) for _ in range(2)]
    assert_parity("slerp", tensors, base_index, {"t": t}, {})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", ["parallel", "nearly parallel", "antiparallel", "tiny norm"])
def test_slerp_degenerate_pairs(shape: tuple[int, ...], case: str) -> None:
    g = _gen("slerp-degenerate", shape, case)
    a = torch.randn(shape, generator=g)
    b = {
        "parallel": 2.5 * a,
        "nearly parallel": a + 1e-3 * torch.randn(shape, generator=g),
        "antiparallel": -0.5 * a,
        "tiny norm": 1e-10 * torch.randn(shape, generator=g),
    }[case]
    assert_parity("slerp", [a, b], 0, {"t": 0.3}, {})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("flatten", [True, False])
@pytest.mark.parametrize("row_wise", [True, False])
@pytest.mark.parametrize("with_base", [True, False])
def test_nuslerp(shape: tuple[int, ...], flatten: bool, row_wise: bool, with_base: bool) -> None:
    g = _gen("nuslerp", shape, flatten, row_wise, with_base)
    tensors = [torch.randn(shape, generator=g) for _ in range(3 if with_base else 2)]
    base_index = 1 if with_base else None
    others = [i for i in range(len(tensors)) if i != base_index]
    per_model = {others[0]: {"weight": 0.3}, others[1]: {"weight": 0.9}}
    shared = {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
    assert_parity("nuslerp", tensors, base_index, shared, per_model)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, -0.5), (0.0, 2.0)])
def test_nuslerp_weights_and_parallel_rows(weights: tuple[float, float]) -> None:
    g = _gen("nuslerp-weights", weights)
    a = torch.randn(20, 24, generator=g)
    b = torch.randn(20, 24, generator=g)
    b[:5] = 3 * a[:5]  # colinear rows take the linear branch
    per_model = {0: {"weight": weights[0]}, 1: {"weight": weights[1]}}
    for flatten in (True, False):
        assert_parity("nuslerp", [a, b], None, {"nuslerp_flatten": flatten}, per_model)


@pytest.mark.parametrize("shape", [(48, 40), (257,), (3, 5, 16)])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("normalize_weights", [True, False])
def test_multislerp(
    shape: tuple[int, ...], count: int, with_base: bool, normalize_weights: bool
) -> None:
    g = _gen("multislerp", shape, count, with_base)
    tensors = [torch.randn(shape, generator=g) for _ in range(count + int(with_base))]
    base_index = 0 if with_base else None
    others = [i for i in range(len(tensors)) if i != base_index]
    per_model = {i: {"weight": w} for i, w in zip(others, [0.2, 0.5, 0.9], strict=False)}
    shared = {"normalize_weights": normalize_weights}
    assert_parity("multislerp", tensors, base_index, shared, per_model, tolerance=1e-4)


def test_multislerp_antipodal_pair_falls_back_to_linear() -> None:
    a = torch.randn(30, 7, generator=_gen("antipodal"))
    per_model = {0: {"weight": 1.0}, 1: {"weight": 1.0}}
    assert_parity("multislerp", [a, -a], None, {}, per_model)


@pytest.mark.parametrize("shape", [(48, 40), (257,), (1,), (3, 5, 16)])
@pytest.mark.parametrize("count", [2, 3, 5])
@pytest.mark.parametrize(("max_iter", "tol"), [(10, 1e-5), (2, 1e-5), (50, 1e-3)])
def test_karcher(shape: tuple[int, ...], count: int, max_iter: int, tol: float) -> None:
    g = _gen("karcher", shape, count)
    tensors = [torch.randn(shape, generator=g) * (i + 1) for i in range(count)]
    shared = {"max_iter": max_iter, "tol": tol}
    assert_parity("karcher", tensors, None, shared, {}, tolerance=1e-4)


def test_karcher_with_zero_and_identical_inputs() -> None:
    a = torch.randn(16, 16, generator=_gen("karcher-zero"))
    assert_parity("karcher", [a, torch.zeros_like(a), a.clone()], None, {}, {}, tolerance=1e-4)
    zeros = [torch.zeros(5), torch.zeros(5)]
    assert_parity("karcher", zeros, None, {}, {})


# -- the task-vector family --------------------------------------------------------------------

TASK_VECTOR_SHAPES = [(48, 40), (257,), (1,), (3, 5, 16)]


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("shape", TASK_VECTOR_SHAPES)
@pytest.mark.parametrize("density", [1.0, 0.7, 0.3, 0.01, 0.0])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rescale", [True, False])
def test_task_vector_family(
    method: str, shape: tuple[int, ...], density: float, normalize: bool, rescale: bool
) -> None:
    g = _gen(method, shape, density, normalize, rescale)
    base, models = distinct_task_vectors(shape, 3, g)
    tensors = [models[0], base, models[1], models[2]]  # the base is not first
    weights = [1.0, -0.4, 0.6]
    per_model: dict[int, dict[str, Any]] = {}
    for slot, index in enumerate((0, 2, 3)):
        values: dict[str, Any] = {"weight": weights[slot], "density": density if slot else 0.5}
        if method.startswith("breadcrumbs"):
            values["gamma"] = (0.01, 0.2, 0.0)[slot]
        if method == "task_arithmetic":
            del values["density"]
        per_model[index] = values
    shared = {"normalize": normalize, "rescale": rescale, "lambda": 0.8}
    assert_parity(method, tensors, 1, shared, per_model)


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "breadcrumbs_ties"])
def test_task_vector_weights_cancelling_and_int8_mask(method: str) -> None:
    base, models = distinct_task_vectors((40, 30), 2, _gen(method, "cancel"))
    per_model = {1: {"weight": 0.5, "density": 0.6}, 2: {"weight": -0.5, "density": 0.4}}
    if method == "task_arithmetic":
        per_model = {1: {"weight": 0.5}, 2: {"weight": -0.5}}
    shared = {"normalize": True, "int8_mask": True}
    assert_parity(method, [base, *models], 0, shared, per_model)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
@pytest.mark.parametrize("normalize", [True, False])
def test_random_methods_at_full_density_are_deterministic(method: str, normalize: bool) -> None:
    g = _gen(method, "full")
    base = torch.randn(37, 29, generator=g)
    models = [base + 0.01 * torch.randn(37, 29, generator=g) for _ in range(3)]
    per_model = {
        i: {"weight": w, "density": 1.0} for i, w in zip((1, 2, 3), (0.5, 0.3, -0.2), strict=True)
    }
    shared = {"normalize": normalize, "rescale": True}
    assert_parity(method, [base, *models], 0, shared, per_model)


def test_task_vector_without_other_models_returns_the_base() -> None:
    base = torch.randn(6, 4)
    for method in ("ties", "dare_ties", "task_arithmetic"):
        assert torch.equal(ours(method, [base], 0, {}, {}), theirs(method, [base], 0, {}, {}))


# -- sce, ram, model_stock, nearswap, arcee_fusion, passthrough ---------------------------------


@pytest.mark.parametrize("shape", TASK_VECTOR_SHAPES)
@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1, 0.0])
def test_sce_with_distinct_variances(
    shape: tuple[int, ...], count: int, select_topk: float
) -> None:
    base, (model,) = distinct_task_vectors(shape, 1, _gen("sce", shape, count, select_topk))
    delta = model - base
    # (a, -a) or (a, -a, 0): every entry's variance is distinct, so the top-k is unambiguous.
    models = [base + delta, base - delta, base][:count]
    assert_parity("sce", [base, *models], 0, {"select_topk": select_topk}, {})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count", [1, 2, 4])
def test_sce_on_gaussian_task_vectors_without_selection(shape: tuple[int, ...], count: int) -> None:
    g = _gen("sce-gauss", shape, count)
    base = torch.randn(shape, generator=g)
    models = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(count)]
    assert_parity("sce", [*models, base], count, {"select_topk": 1.0}, {})


@pytest.mark.parametrize("method", ["ram", "ramplus_tl"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("epsilon", [1e-5, 0.05])
def test_ram(method: str, shape: tuple[int, ...], count: int, epsilon: float) -> None:
    g = _gen(method, shape, count, epsilon)
    base = torch.randn(shape, generator=g)
    models = []
    for _ in range(count):
        changes = torch.randn(shape, generator=g) * 0.1
        models.append(base + changes * (torch.rand(shape, generator=g) < 0.4))
    shared: dict[str, Any] = {"epsilon": epsilon}
    if method == "ramplus_tl":
        shared.update(r=0.7, alpha=0.4)
    assert_parity(method, [base, *models], 0, shared, {})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("filter_wise", [True, False])
def test_model_stock(shape: tuple[int, ...], count: int, filter_wise: bool) -> None:
    g = _gen("model_stock", shape, count, filter_wise)
    base = torch.randn(shape, generator=g)
    common = torch.randn(shape, generator=g)
    models = [base + 0.05 * common + 0.05 * torch.randn(shape, generator=g) for _ in range(count)]
    assert_parity("model_stock", [base, *models], 0, {"filter_wise": filter_wise}, {})


def test_model_stock_singular_denominator_keeps_the_base() -> None:
    base = torch.randn(4, 8)
    delta = torch.randn(4, 8)
    tensors = [base, base + delta, base - delta]  # cos = -1, N = 2: 1 + (N - 1) cos = 0
    for filter_wise in (True, False):
        assert_parity("model_stock", tensors, 0, {"filter_wise": filter_wise}, {})
        assert torch.allclose(
            ours("model_stock", tensors, 0, {"filter_wise": filter_wise}, {}), base
        )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [1e-4, 0.3, 5.0])
@pytest.mark.parametrize("base_index", [0, 1])
def test_nearswap(shape: tuple[int, ...], t: float, base_index: int) -> None:
    g = _gen("nearswap", shape, t)
    a = torch.randn(shape, generator=g)
    b = a + torch.randn(shape, generator=g) * 0.5
    b.view(-1)[0] = a.view(-1)[0]  # an identical entry: |a - b| hits the 1e-6 floor
    assert_parity("nearswap", [a, b], base_index, {"t": t}, {})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("base_index", [0, 1])
def test_arcee_fusion(shape: tuple[int, ...], base_index: int) -> None:
    g = _gen("arcee", shape)
    a = torch.randn(shape, generator=g)
    b = a + torch.randn(shape, generator=g) * torch.rand(shape, generator=g)
    assert_parity("arcee_fusion", [a, b], base_index, {}, {})


@pytest.mark.parametrize("scale", [None, 0.5, -2.0])
def test_passthrough(scale: float | None) -> None:
    x = torch.randn(7, 3)
    assert_parity("passthrough", [x], None, {}, {0: {"scale": scale}})

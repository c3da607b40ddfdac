"""Each method's formula on small hand-made tensors, with the expected values worked out by hand
(or by a few lines of plain torch written independently of the implementation)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from mergetui.errors import UserError
from mergetui.merge.methods import MethodContext, get_method_function

R2 = math.sqrt(0.5)


def run(
    method: str,
    tensors: list[Any],
    base_index: int | None = None,
    shared: dict[str, Any] | None = None,
    per_model: list[dict[str, Any]] | None = None,
    seed: int | None = 0,
) -> torch.Tensor:
    tensors = [torch.as_tensor(t, dtype=torch.float32) for t in tensors]
    ctx = MethodContext(
        method=method,
        tensor_name="model.layers.3.self_attn.q_proj.weight",
        base_index=base_index,
        shared=shared or {},
        per_model=per_model or [{} for _ in tensors],
        seed=seed,
    )
    return get_method_function(method)(tensors, ctx)


def close(got: torch.Tensor, want: Any, tol: float = 1e-6) -> None:
    want = torch.as_tensor(want, dtype=torch.float32)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=tol, rtol=tol), f"{got} != {want}"


# -- linear ---------------------------------------------------------------------------------------


def test_linear_weighted_average_and_sum() -> None:
    tensors = [[1.0, 2.0], [3.0, 6.0]]
    weights = [{"weight": 1.0}, {"weight": 3.0}]
    close(run("linear", tensors, per_model=weights), [2.5, 5.0])
    close(run("linear", tensors, shared={"normalize": False}, per_model=weights), [10.0, 20.0])


def test_linear_counts_the_base_as_an_ordinary_input() -> None:
    out = run("linear", [[2.0], [4.0]], base_index=0, per_model=[{"weight": 1}, {"weight": 1}])
    close(out, [3.0])


def test_linear_weights_that_cancel_are_a_user_error() -> None:
    with pytest.raises(UserError, match="sum to 0") as caught:
        run("linear", [[1.0], [2.0]], per_model=[{"weight": 0.5}, {"weight": -0.5}])
    assert caught.value.where == "model.layers.3.self_attn.q_proj.weight"
    assert "normalize" in caught.value.fix
    close(
        run(
            "linear",
            [[1.0], [2.0]],
            shared={"normalize": False},
            per_model=[{"weight": 0.5}, {"weight": -0.5}],
        ),
        [-0.5],
    )


# -- slerp ----------------------------------------------------------------------------------------


def test_slerp_between_orthogonal_unit_vectors_stays_on_the_circle() -> None:
    out = run("slerp", [[1.0, 0.0], [0.0, 1.0]], base_index=0, shared={"t": 0.5})
    close(out, [R2, R2])
    third = run("slerp", [[1.0, 0.0], [0.0, 1.0]], base_index=0, shared={"t": 1 / 3})
    close(third, [math.cos(math.pi / 6), math.sin(math.pi / 6)])


def test_slerp_ends_are_the_inputs_and_t_zero_is_the_base() -> None:
    a, b = [3.0, -1.0, 2.0], [0.5, 4.0, 1.0]
    close(run("slerp", [a, b], base_index=0, shared={"t": 0.0}), a)
    close(run("slerp", [a, b], base_index=1, shared={"t": 0.0}), b)
    close(run("slerp", [a, b], base_index=0, shared={"t": 1.0}), b, tol=1e-5)


def test_slerp_interpolates_unnormalised_tensors_with_the_normalised_angle() -> None:
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 5.0])
    out = run("slerp", [a, b], base_index=0, shared={"t": 0.5})
    close(out, R2 * a + R2 * b)  # sin(pi/4) / sin(pi/2) on both


def test_slerp_nearly_parallel_falls_back_to_lerp() -> None:
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([2.0, 0.02])  # cos > 0.9995
    close(run("slerp", [a, b], base_index=0, shared={"t": 0.25}), 0.75 * a + 0.25 * b)


def test_slerp_zero_tensor_uses_the_norm_floor() -> None:
    a = torch.zeros(3)
    b = torch.tensor([1.0, 2.0, 2.0])
    # |a| <= 1e-8 counts as 1, so cos = a.b = 0: a quarter circle between 0 and b.
    out = run("slerp", [a, b], base_index=0, shared={"t": 0.5})
    close(out, R2 * b)


# -- nuslerp --------------------------------------------------------------------------------------


def test_nuslerp_t_is_the_second_weights_share() -> None:
    a, b = [1.0, 0.0], [0.0, 1.0]
    per_model = [{"weight": 2.0}, {"weight": 1.0}]  # t = 1/3
    close(run("nuslerp", [a, b], per_model=per_model), [math.cos(math.pi / 6), 0.5])
    zero_sum = [{"weight": 1.0}, {"weight": -1.0}]  # t = 0.5 when the weights sum to ~0
    close(run("nuslerp", [a, b], per_model=zero_sum), [R2, R2])


def test_nuslerp_with_a_base_slerps_the_task_vectors() -> None:
    base = [10.0, 10.0]
    a, b = [11.0, 10.0], [10.0, 11.0]
    per_model = [{"weight": 1.0}, {}, {"weight": 1.0}]
    close(run("nuslerp", [a, base, b], base_index=1, per_model=per_model), [10 + R2, 10 + R2])


def test_nuslerp_rows_and_columns() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    per_model = [{"weight": 1.0}, {"weight": 1.0}]
    rows = run("nuslerp", [a, b], shared={"nuslerp_flatten": False}, per_model=per_model)
    close(rows, [[R2, R2], [1.5, 0.0]])  # row 2 is colinear: linear
    columns = run(
        "nuslerp",
        [a, b],
        shared={"nuslerp_flatten": False, "nuslerp_row_wise": True},
        per_model=per_model,
    )
    # column 1: a=(1,1), b=(0,2), 45 degrees apart; column 2: a=(0,0) (norm floor), b=(1,0).
    angle = math.pi / 4
    c = math.sin(angle / 2) / math.sin(angle)
    close(columns, [[c * 1.0, R2 * 1.0], [c * 1.0 + c * 2.0, 0.0]], tol=1e-5)


# -- multislerp and karcher -----------------------------------------------------------------------


def test_multislerp_of_orthogonal_unit_vectors_is_their_spherical_midpoint() -> None:
    per_model = [{"weight": 1.0}, {"weight": 1.0}]
    close(run("multislerp", [[1.0, 0.0], [0.0, 1.0]], per_model=per_model), [R2, R2])
    # The result's norm is the weighted mean of the input norms.
    out = run("multislerp", [[2.0, 0.0], [0.0, 4.0]], per_model=per_model)
    close(out, [3 * R2, 3 * R2])


def test_multislerp_single_model_and_base() -> None:
    close(run("multislerp", [[5.0, 6.0]], per_model=[{"weight": 0.3}]), [5.0, 6.0])
    base = [1.0, 1.0]
    out = run(
        "multislerp",
        [base, [2.0, 1.0], [1.0, 2.0]],
        base_index=0,
        per_model=[{}, {"weight": 1.0}, {"weight": 1.0}],
    )
    close(out, [1 + R2, 1 + R2])


def test_multislerp_balanced_antipodal_triple_is_a_user_error() -> None:
    per_model = [{"weight": 1.0}, {"weight": 1.0}, {"weight": 2.0}]
    with pytest.raises(UserError, match="weighted sum"):
        run("multislerp", [[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], per_model=per_model)


def test_karcher_mean_of_two_unit_vectors_is_the_arc_midpoint() -> None:
    close(run("karcher", [[1.0, 0.0], [0.0, 1.0]]), [R2, R2], tol=1e-5)
    # scale = mean of the norms
    close(run("karcher", [[3.0, 0.0], [0.0, 1.0]]), [2 * R2, 2 * R2], tol=1e-5)


def test_karcher_three_vectors_matches_an_independent_iteration() -> None:
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(12, generator=g, dtype=torch.float64) for _ in range(3)]
    units = [x / x.norm() for x in xs]
    mean = sum(units) / 3
    mean = mean / mean.norm()
    for _ in range(100):  # the Riemannian gradient step, to convergence
        tangent = torch.zeros_like(mean)
        for u in units:
            cos = torch.clamp(mean @ u, -1, 1)
            theta = torch.arccos(cos)
            tangent += (theta / torch.sin(theta)) * (u - cos * mean) / 3
        norm = tangent.norm()
        if norm < 1e-12:
            break
        mean = torch.cos(norm) * mean + torch.sin(norm) * tangent / norm
        mean = mean / mean.norm()
    want = mean * sum(x.norm() for x in xs) / 3
    got = run("karcher", [x.float() for x in xs], shared={"max_iter": 100, "tol": 1e-9})
    close(got, want.float(), tol=1e-5)


def test_karcher_of_zero_tensors_is_zero() -> None:
    close(run("karcher", [[0.0, 0.0], [0.0, 0.0]]), [0.0, 0.0])


# -- task-vector family ---------------------------------------------------------------------------

BASE = [0.0, 0.0, 0.0, 0.0]
X1 = [1.0, -2.0, 3.0, 0.5]
X2 = [-1.0, 1.0, 1.0, -4.0]


def test_task_arithmetic() -> None:
    per_model = [{}, {"weight": 1.0}, {"weight": 0.5}]
    close(run("task_arithmetic", [BASE, X1, X2], 0, per_model=per_model), [0.5, -1.5, 3.5, -1.5])
    lam = run("task_arithmetic", [BASE, X1, X2], 0, {"lambda": 2.0}, per_model)
    close(lam, [1.0, -3.0, 7.0, -3.0])
    normalized = run("task_arithmetic", [BASE, X1, X2], 0, {"normalize": True}, per_model)
    close(normalized, [0.5 / 1.5, -1.5 / 1.5, 3.5 / 1.5, -1.5 / 1.5])


def test_ties_by_hand_with_a_tie_at_the_threshold() -> None:
    per_model = [{}, {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    # x1 keeps -2, 3. x2's two largest: -4, then one of three 1s: the first one (-1) is kept.
    # sum = (-1, -2, 3, -4): every kept entry agrees with its sign; each divisor is 1.
    out = run("ties", [BASE, X1, X2], 0, per_model=per_model)
    close(out, [-1.0, -2.0, 3.0, -4.0])


def test_ties_sign_election_and_divisor() -> None:
    base = [1.0, 1.0, 1.0]
    x1 = [2.0, 0.0, 1.0]  # tau = (1, -1, 0)
    x2 = [3.0, 3.0, 1.0]  # tau = (2, 2, 0)
    x3 = [0.0, -1.0, 1.0]  # tau = (-1, -2, 0)
    per_model = [{}, {"weight": 1.0}, {"weight": 2.0}, {"weight": 1.0}]
    # weighted: (1,-1,0), (4,4,0), (-1,-2,0); sums (4, 1, 0) -> signs (+, +, +)
    # merged: (1+4, 4, 0); divisors (1+2, 2, 0->1)
    out = run("ties", [base, x1, x2, x3], 0, per_model=per_model)
    close(out, [1 + 5 / 3, 1 + 4 / 2, 1.0])
    raw = run("ties", [base, x1, x2, x3], 0, {"normalize": False}, per_model)
    close(raw, [6.0, 5.0, 1.0])


def test_magnitude_keeps_at_least_one_and_density_zero_keeps_none() -> None:
    per_model = [{}, {"weight": 1.0, "density": 0.01}]
    close(run("ties", [BASE, X1], 0, per_model=per_model), [0.0, 0.0, 3.0, 0.0])
    per_model = [{}, {"weight": 1.0, "density": 0.0}]
    close(run("ties", [BASE, X1], 0, per_model=per_model), BASE)


def test_rescale_restores_the_l1_norm() -> None:
    # tau = X1, density 0.5 keeps (-2, 3): L1 6.5 / 5 scales the kept entries by 1.3.
    per_model = [{}, {"weight": 1.0, "density": 0.5}]
    out = run("ties", [BASE, X1], 0, {"rescale": True}, per_model)
    close(out, [0.0, -2.6, 3.9, 0.0])


def test_breadcrumbs_drops_outliers_and_the_smallest() -> None:
    tau = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0]
    base = [0.0] * 10
    # density 0.5 keeps 5, gamma 0.2 drops the 2 largest, so the 3 smallest go too.
    per_model = [{}, {"weight": 1.0, "density": 0.5, "gamma": 0.2}]
    out = run("breadcrumbs", [base, tau], 0, per_model=per_model)
    close(out, [0, 0, 0, -0.4, 0.5, -0.6, 0.7, -0.8, 0, 0])
    # gamma larger than 1 - density: fewer outliers are dropped so that density is kept.
    per_model = [{}, {"weight": 1.0, "density": 0.5, "gamma": 0.9}]
    out = run("breadcrumbs", [base, tau], 0, per_model=per_model)
    close(out, [0.1, -0.2, 0.3, -0.4, 0.5, 0, 0, 0, 0, 0])


def test_breadcrumbs_ties_on_equal_magnitudes_follow_a_stable_ascending_sort() -> None:
    tau = torch.tensor([0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.25, 1.0])
    per_model = [{}, {"weight": 1.0, "density": 0.5, "gamma": 0.125}]
    out = run("breadcrumbs", [torch.zeros(8), tau], 0, per_model=per_model)
    order = torch.sort(tau.abs(), stable=True).indices  # 0.25, six 0.5s by index, 1.0
    keep = torch.zeros(8, dtype=torch.bool)
    keep[order[3:7]] = True  # n_bot = 8 - 4 - 1 = 3
    close(out, torch.where(keep, tau, 0.0))
    assert int((out != 0).sum()) == 4


def test_della_epsilon_must_keep_probabilities_inside_zero_one() -> None:
    per_model = [{}, {"weight": 1.0, "density": 0.3, "epsilon": 0.3}]
    with pytest.raises(UserError, match=r"density \+/- epsilon") as caught:
        run("della", [BASE, X1], 0, per_model=per_model)
    assert "epsilon below 0.3" in caught.value.fix
    assert caught.value.where == "model.layers.3.self_attn.q_proj.weight"


def test_density_at_least_one_changes_nothing() -> None:
    for method in ("dare_ties", "dare_linear", "della", "breadcrumbs", "ties"):
        per_model = [{}, {"weight": 1.0, "density": 1.0}, {"weight": 0.5, "density": 1.5}]
        shared = {"normalize": False, "rescale": True}
        out = run(method, [BASE, X1, X2], 0, shared, per_model)
        if method in ("dare_ties", "della", "ties"):
            # sign election still applies: entries opposing sum(tau) drop out
            want = [1.0, -2.0, 3.5, -2.0]
        else:
            want = [0.5, -1.5, 3.5, -1.5]
        close(out, want)


# -- sce, ram, model_stock, nearswap, arcee_fusion, passthrough -----------------------------------


def test_sce_energy_weights_and_sign_mask() -> None:
    base = [0.0, 0.0]
    x1 = [1.0, 1.0]  # energy 1
    x2 = [3.0, -3.0]  # energy 9
    # weights 0.1, 0.9. entry 1: both agree: (0.1*1 + 0.9*3) / 1.0 = 2.8;
    # entry 2: sum -2 -> negative: only x2 agrees: 0.9*-3 / 0.9 = -3.
    close(run("sce", [base, x1, x2], 0), [2.8, -3.0], tol=1e-5)


def test_sce_select_topk_keeps_high_variance_entries() -> None:
    base = [0.0, 0.0, 0.0, 0.0]
    x1 = [1.0, 0.1, 2.0, 0.0]
    x2 = [-1.0, 0.1, 0.0, 0.0]
    # variances: 1, 0, 1, 0 -> 2 nonzero, top 50% = 1 entry; ties between entries 0 and 2: the
    # first is kept. Then only entry 0 is nonzero: x1=1, x2=-1 -> sum 0 counts as +: x1 alone.
    close(run("sce", [base, x1, x2], 0, {"select_topk": 0.5}), [1.0, 0.0, 0.0, 0.0])


def test_ram_keeps_unique_changes_and_averages_shared_ones() -> None:
    base = [1.0, 1.0, 1.0, 1.0]
    x1 = [2.0, 1.0, 3.0, 1.000001]
    x2 = [1.0, 1.0, 5.0, 1.0]
    close(run("ram", [base, x1, x2], 0, {"epsilon": 1e-3}), [2.0, 1.0, 4.0, 1.0])


def test_ramplus_boosts_unique_changes_by_the_shared_ratio() -> None:
    base = [0.0, 0.0, 0.0, 0.0]
    x1 = [1.0, 2.0, 4.0, 0.0]  # unique: entries 0 and 1; shared: entry 2
    x2 = [0.0, 0.0, 2.0, 6.0]  # unique: entry 3; shared: entry 2
    # rho1 = 1/2 -> lambda1 = 1 + 0.5 * min(0.5, 0.4) = 1.2; rho2 = 1 -> lambda2 = 1.2
    shared = {"epsilon": 1e-5, "r": 0.5, "alpha": 0.4}
    close(run("ramplus_tl", [base, x1, x2], 0, shared), [1.2, 2.4, 3.0, 7.2], tol=1e-5)
    shared = {"epsilon": 1e-5, "r": 0.5, "alpha": 0.8}  # lambda1 = 1.25, lambda2 = 1.4
    close(run("ramplus_tl", [base, x1, x2], 0, shared), [1.25, 2.5, 3.0, 8.4], tol=1e-5)


def test_model_stock_angle_sets_the_interpolation() -> None:
    base = [0.0, 0.0]
    # orthogonal task vectors: cos 0 -> t 0 -> the base
    close(run("model_stock", [base, [1.0, 0.0], [0.0, 1.0]], 0), base)
    # 60 degrees: cos 0.5, N=2 -> t = 1 / 1.5 = 2/3 of the average
    x1, x2 = [1.0, 0.0], [0.5, math.sqrt(0.75)]
    avg = [(1.0 + 0.5) / 2, math.sqrt(0.75) / 2]
    close(run("model_stock", [base, x1, x2], 0), [2 / 3 * avg[0], 2 / 3 * avg[1]], tol=1e-6)


def test_model_stock_filter_wise_uses_one_angle_per_row() -> None:
    base = [[0.0, 0.0], [0.0, 0.0]]
    x1 = [[1.0, 0.0], [1.0, 0.0]]
    x2 = [[0.0, 1.0], [3.0, 0.0]]
    out = run("model_stock", [base, x1, x2], 0, {"filter_wise": True})
    close(out, [[0.0, 0.0], [2.0, 0.0]])  # row 1 orthogonal (t=0), row 2 parallel (t=1)


def test_nearswap() -> None:
    a = [0.0, 0.0, 0.0, 1.0]
    b = [0.05, 0.2, 1.0, 1.0]
    # w = clamp(0.1 / |a-b|, 0, 1) = (1, 0.5, 0.1, 1 (floor 1e-6))
    close(run("nearswap", [a, b], 0, {"t": 0.1}), [0.05, 0.1, 0.1, 1.0])


def test_arcee_fusion_matches_a_direct_implementation() -> None:
    g = torch.Generator().manual_seed(11)
    a = torch.randn(40, 25, generator=g)
    b = a + torch.randn(40, 25, generator=g) * torch.rand(40, 1, generator=g)
    p = torch.softmax(b, -1) + 1e-8
    q = torch.softmax(a, -1) + 1e-8
    importance = (b - a).abs() * (p * (p / q).log()).sum(-1, keepdim=True)
    ordered = importance.flatten().sort().values
    n = ordered.numel() - 1
    q1, median, q3 = ordered[int(0.25 * n)], ordered[int(0.5 * n)], ordered[int(0.75 * n)]
    want = torch.where(importance >= median + 1.5 * (q3 - q1), b, a)
    got = run("arcee_fusion", [a, b], 0)
    assert torch.equal(got, want)
    assert 0 < int((got == b).sum()) < got.numel()


def test_passthrough_copies_or_scales() -> None:
    x = torch.tensor([1.0, -2.0])
    out = run("passthrough", [x], per_model=[{"scale": None}])
    close(out, [1.0, -2.0])
    close(run("passthrough", [x], per_model=[{"scale": 0.5}]), [0.5, -1.0])
    close(run("passthrough", [x]), [1.0, -2.0])  # scale defaults to None

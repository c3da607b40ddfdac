"""DARE and DELLA: the share of kept entries, the L1 rescale, and reproducibility from the seed.

Statistical bounds are five standard deviations of the binomial count, so a correct
implementation fails them with probability below 1e-6 while a wrong density shows at once.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from mergetui.merge.methods import MethodContext, get_method_function
from mergetui.merge.methods._random import bernoulli_keep, stream_key, uniform

SHAPE = (400, 500)  # 200,000 entries: several chunks


def _family(seed: int = 0, count: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g)
    return [base] + [base + 0.01 * torch.randn(SHAPE, generator=g) for _ in range(count)]


def run(
    method: str,
    tensors: list[torch.Tensor],
    per_model: list[dict[str, Any]],
    shared: dict[str, Any] | None = None,
    seed: int | None = 7,
    name: str = "model.layers.0.mlp.down_proj.weight",
) -> torch.Tensor:
    ctx = MethodContext(
        method=method,
        tensor_name=name,
        base_index=0,
        shared=shared or {},
        per_model=per_model,
        seed=seed,
    )
    return get_method_function(method)(tensors, ctx)


def _within_binomial(kept: int, total: int, p: float) -> bool:
    return abs(kept - total * p) <= 5 * math.sqrt(total * p * (1 - p)) + 1


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("rescale", [True, False])
def test_kept_share_and_l1_rescale(method: str, density: float, rescale: bool) -> None:
    base, model = _family(count=1)
    tau = model - base
    per_model = [{}, {"weight": 1.0, "density": density, "epsilon": min(density, 1 - density) / 2}]
    out = run(method, [base, model], per_model, {"rescale": rescale})
    delta = out - base
    kept = delta != 0
    assert _within_binomial(int(kept.sum()), tau.numel(), density)
    factor = tau.abs().sum() / tau[kept].abs().sum() if rescale else torch.tensor(1.0)
    # kept entries are tau times the L1 factor, dropped ones are exactly zero
    assert torch.allclose(delta[kept], tau[kept] * factor, rtol=1e-4, atol=1e-6)
    if rescale:
        assert delta.abs().sum().item() == pytest.approx(tau.abs().sum().item(), rel=1e-4)


def test_della_keeps_large_magnitudes_more_often() -> None:
    base, model = _family(count=1)
    tau = (model - base).view(-1, SHAPE[1])
    density, epsilon = 0.5, 0.2
    per_model = [{}, {"weight": 1.0, "density": density, "epsilon": epsilon}]
    out = run("della_linear", [base, model], per_model, {"rescale": False})
    kept = (out - base).view_as(tau) != 0
    # Within each row, rank r of n gets probability (d - e) + 2e r / (n - 1).
    ranks = tau.abs().argsort(dim=1).argsort(dim=1).float() / (SHAPE[1] - 1)
    low, high = ranks < 0.25, ranks >= 0.75
    low_p, high_p = density - 0.75 * epsilon, density + 0.75 * epsilon  # quartile means
    assert _within_binomial(int(kept[low].sum()), int(low.sum()), low_p)
    assert _within_binomial(int(kept[high].sum()), int(high.sum()), high_p)


def test_della_single_entry_vectors_use_the_density() -> None:
    base = torch.zeros(20000, 1)
    model = torch.randn(20000, 1)
    per_model = [{}, {"weight": 1.0, "density": 0.3, "epsilon": 0.1}]
    out = run("della_linear", [base, model], per_model, {"rescale": False})
    assert _within_binomial(int((out != 0).sum()), 20000, 0.3)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_same_seed_and_name_reproduce_whatever_else_ran(method: str) -> None:
    tensors = _family(seed=1, count=3)
    per_model = [{}] + [{"weight": w, "density": 0.4, "epsilon": 0.1} for w in (0.5, 0.3, 0.2)]
    first = run(method, tensors, per_model, name="a.weight")
    other = run(method, _family(seed=2, count=3), per_model, name="b.weight")
    again = run(method, tensors, per_model, name="a.weight")
    assert torch.equal(first, again)
    assert not torch.equal(first, run(method, tensors, per_model, name="c.weight"))
    assert not torch.equal(first, run(method, tensors, per_model, seed=8, name="a.weight"))
    assert other.shape == first.shape


def test_models_get_independent_masks() -> None:
    base = torch.zeros(SHAPE)
    same = torch.ones(SHAPE)
    per_model = [{}, {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    out = run("dare_linear", [base, same, same.clone()], per_model, {"rescale": False})
    # out = m1 + m2 with independent masks: 0, 1 and 2 each appear in the right shares.
    for value, share in ((0.0, 0.25), (1.0, 0.5), (2.0, 0.25)):
        assert _within_binomial(int((out == value).sum()), out.numel(), share)


def test_seed_none_draws_a_fresh_stream() -> None:
    base, model = _family(count=1)
    per_model = [{}, {"weight": 1.0, "density": 0.5}]
    first = run("dare_linear", [base, model], per_model, seed=None)
    second = run("dare_linear", [base, model], per_model, seed=None)
    assert not torch.equal(first, second)


def test_dare_ties_elects_signs_after_dropping() -> None:
    base = torch.zeros(SHAPE)
    plus, minus = torch.ones(SHAPE), -0.5 * torch.ones(SHAPE)
    per_model = [{}, {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    out = run("dare_ties", [base, plus, minus], per_model, {"rescale": False})
    # where both survive the sum is +0.5: only +1 is kept; where one survives it wins alone.
    values = set(out.unique().tolist())
    assert values == {0.0, 1.0, -0.5}
    assert _within_binomial(int((out == -0.5).sum()), out.numel(), 0.25)


def test_bernoulli_streams() -> None:
    key = stream_key(5, "x", 0)
    assert key == stream_key(5, "x", 0) != stream_key(5, "x", 1)
    keep = bernoulli_keep(key, 3, 100_000, 0.3, torch.device("cpu"))
    assert keep.dtype == torch.float32 and set(keep.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(keep, bernoulli_keep(key, 3, 100_000, 0.3, torch.device("cpu")))
    assert _within_binomial(int(keep.sum()), 100_000, 0.3)
    assert not torch.equal(keep, bernoulli_keep(key, 4, 100_000, 0.3, torch.device("cpu")))
    assert bool(bernoulli_keep(key, 0, 10, 1.0, torch.device("cpu")).all())
    assert not bool(bernoulli_keep(key, 0, 10, 0.0, torch.device("cpu")).any())
    draws = uniform(key, 0, 100_000, torch.device("cpu"))
    assert 0 < draws.min().item() and draws.max().item() < 1
    assert abs(draws.mean().item() - 0.5) < 0.01


def test_della_ranks_along_dim_one_of_higher_rank_tensors() -> None:
    g = torch.Generator().manual_seed(4)
    shape = (30, 200, 20)
    base = torch.randn(shape, generator=g)
    model = base + torch.randn(shape, generator=g)
    density, epsilon = 0.5, 0.3
    per_model = [{}, {"weight": 1.0, "density": density, "epsilon": epsilon}]
    out = run("della_linear", [base, model], per_model, {"rescale": False})
    kept = out != base
    assert _within_binomial(int(kept.sum()), kept.numel(), density)
    # mergekit ranks along dim 1 for tensors of 2 or more dims
    ranks = (model - base).abs().argsort(dim=1).argsort(dim=1).float() / (shape[1] - 1)
    low, high = ranks < 0.25, ranks >= 0.75
    assert _within_binomial(int(kept[low].sum()), int(low.sum()), density - 0.75 * epsilon)
    assert _within_binomial(int(kept[high].sum()), int(high.sum()), density + 0.75 * epsilon)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "ties", "breadcrumbs_ties"])
def test_cached_masks_are_the_masks_drawn_again(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keeping the statistics pass's masked task vectors for the output pass changes nothing."""
    from mergetui.merge.methods import task_vector

    tensors = _family(seed=3)
    per_model = [{}, {"weight": 0.6, "density": 0.3}, {"weight": 0.4, "density": 0.7}]
    shared = {"rescale": True}
    cached = run(method, tensors, per_model, shared)
    monkeypatch.setattr(task_vector, "TAU_CACHE_ELEMENTS", 0)
    drawn_again = run(method, tensors, per_model, shared)
    assert torch.equal(cached, drawn_again)
    assert not torch.equal(cached, tensors[0])


@pytest.mark.parametrize("probability", [0.5, 0.25, 0.75, 3 / 256, 0.3, 0.53, 1 / 65536])
def test_keep_masks_have_their_probability_and_are_reproducible(probability: float) -> None:
    """8-bit draws (probabilities on the 2**-8 grid) and 16-bit ones (the rest) keep the asked
    share; the same key and chunk give the same mask, another chunk or key another one."""
    from mergetui.merge.methods import _random

    count = 200_000
    device = torch.device("cpu")
    keep = _random.bernoulli_keep(11, 3, count, probability, device)
    assert keep.dtype == torch.float32 and keep.shape == (count,)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert _within_binomial(int(keep.sum()), count, probability)
    assert torch.equal(keep, _random.bernoulli_keep(11, 3, count, probability, device))
    if probability * count > 20:
        assert not torch.equal(keep, _random.bernoulli_keep(11, 4, count, probability, device))
        assert not torch.equal(keep, _random.bernoulli_keep(12, 3, count, probability, device))

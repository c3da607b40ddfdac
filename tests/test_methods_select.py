"""The radix selection behind TIES, breadcrumbs and SCE: exact ranks, exact counts, stable ties.

Every answer is checked against torch's stable sort of the same values, fed in uneven chunks so
that tie runs and rank boundaries straddle chunk edges.
"""

from __future__ import annotations

import pytest
import torch

from mergetui.merge.methods import _select
from mergetui.merge.methods._select import (
    KeepRule,
    RankSelector,
    kept_sum,
    rank_window_rule,
    top_k_rule,
)

CHUNK = 97


@pytest.fixture(
    autouse=True, params=["histograms", "sorted", "switch half-way", "histograms, tiny batches"]
)
def selection_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on the radix histograms, on the small-tensor sort, on a selector that
    starts sorting and switches to histograms part-way through its values, and on histograms
    whose key batches fill up every few chunks (and are smaller than one chunk)."""
    limits = {"histograms": 0, "sorted": 1 << 20, "switch half-way": 700}
    monkeypatch.setattr(_select, "SMALL_VALUES", limits.get(request.param, 0))
    if request.param == "histograms, tiny batches":
        monkeypatch.setattr(_select, "KEY_BATCH", 60)  # below one 97-value chunk: counted each time
    return request.param


def _chunks(values: torch.Tensor) -> list[torch.Tensor]:
    return [values[i : i + CHUNK] for i in range(0, values.numel(), CHUNK)]


def _selector(values: torch.Tensor, ranks: list[int], with_sums: bool = False) -> RankSelector:
    selector = RankSelector(values.device, with_sums=with_sums)
    for chunk in _chunks(values):
        selector.add(chunk)
    selector.prepare(ranks)
    if selector.needs_second_pass:
        for chunk in _chunks(values):
            selector.refine(chunk)
    return selector


def _apply(rule: KeepRule, values: torch.Tensor) -> torch.Tensor:
    parts = []
    for chunk in _chunks(values):
        mask = rule.keep(chunk)
        if mask is not None:
            assert mask.dtype == torch.float32
            assert bool(((mask == 0) | (mask == 1)).all())
        parts.append(torch.ones_like(chunk, dtype=torch.bool) if mask is None else mask == 1)
    return torch.cat(parts)


def _samples() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    n = 1500
    return [
        ("gaussian", torch.randn(n, generator=g).abs()),
        ("few distinct values", torch.randint(0, 6, (n,), generator=g).float() * 0.375),
        ("mostly zeros", torch.where(torch.rand(n, generator=g) < 0.8, 0.0, torch.rand(n))),
        ("all equal", torch.full((n,), 0.25)),
        ("bf16-like steps", (torch.randn(n, generator=g) * 1e-3).bfloat16().float().abs()),
        ("wide range", torch.randn(n, generator=g).abs() * 10.0 ** torch.randint(-30, 30, (n,))),
    ]


@pytest.mark.parametrize(("label", "values"), _samples(), ids=[s[0] for s in _samples()])
def test_value_at_matches_sorted_values(label: str, values: torch.Tensor) -> None:
    ranks = [0, 1, values.numel() // 3, values.numel() // 2, values.numel() - 1]
    selector = _selector(values, ranks)
    ordered = torch.sort(values).values
    for rank in ranks:
        value, less = selector.value_at(rank)
        assert value == ordered[rank].item()
        assert less == int((values < ordered[rank]).sum())


@pytest.mark.parametrize(("label", "values"), _samples(), ids=[s[0] for s in _samples()])
@pytest.mark.parametrize("k", [0, 1, 7, 500, 1499, 1500])
def test_top_k_keeps_exactly_k_like_a_stable_descending_sort(
    label: str, values: torch.Tensor, k: int
) -> None:
    n = values.numel()
    selector = _selector(values, [n - k])
    got = _apply(top_k_rule(selector, k), values)
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.sort(values, descending=True, stable=True).indices[:k]] = True
    assert int(got.sum()) == k
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("label", "values"), _samples(), ids=[s[0] for s in _samples()])
@pytest.mark.parametrize(("lo", "hi"), [(0, 1500), (0, 10), (300, 1200), (1499, 1500), (700, 700)])
def test_rank_window_is_a_slice_of_the_stable_ascending_order(
    label: str, values: torch.Tensor, lo: int, hi: int
) -> None:
    selector = _selector(values, [lo, hi], with_sums=True)
    got = _apply(rank_window_rule(selector, lo, hi), values)
    expected = torch.zeros(values.numel(), dtype=torch.bool)
    expected[torch.sort(values, stable=True).indices[lo:hi]] = True
    assert torch.equal(got, expected)
    want = values[expected].double().sum().item()
    assert kept_sum(selector, lo, hi) == pytest.approx(want, rel=1e-6, abs=1e-30)


def test_rule_restart_replays_the_same_mask() -> None:
    values = torch.randint(0, 3, (1000,)).float()
    selector = _selector(values, [400])
    rule = top_k_rule(selector, 600)
    first = _apply(rule, values)
    rule.restart()
    assert torch.equal(_apply(rule, values), first)


def test_the_mode_fixture_reaches_the_selector(selection_mode: str) -> None:
    values = torch.rand(1500, generator=torch.Generator().manual_seed(3))
    selector = _selector(values, [750])
    sorted_mode = selection_mode == "sorted"
    assert (selector._sorted is not None) is sorted_mode
    assert (selector._counts.numel() == 0) is sorted_mode


def _bf16_task_vector(n: int, seed: int) -> torch.Tensor:
    """|x - base| of bf16 weights, as a bf16 fine-tune's task vector is made."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g) * 0.02).bfloat16()
    tuned = (base.float() + torch.randn(n, generator=g) * 0.0005).bfloat16()
    return (tuned.float() - base.float()).abs()


def test_bf16_task_vectors_are_ranked_without_a_second_pass() -> None:
    # Their values are small multiples of the weights' spacing: exact bf16 numbers, the lowest
    # of their buckets, so the first pass alone pins down the k-th largest.
    values = _bf16_task_vector(20000, seed=5)
    k = 10000
    chunks = [values[i : i + 997] for i in range(0, values.numel(), 997)]
    selector = RankSelector(values.device)
    for chunk in chunks:
        selector.add(chunk)
    selector.prepare([values.numel() - k])
    assert not selector.needs_second_pass
    rule = top_k_rule(selector, k)
    got = torch.cat([(rule.keep(chunk) == 1) for chunk in chunks])
    expected = torch.zeros(values.numel(), dtype=torch.bool)
    expected[torch.sort(values, descending=True, stable=True).indices[:k]] = True
    assert torch.equal(got, expected)


def test_a_rank_among_a_buckets_inexact_values_is_refined(selection_mode: str) -> None:
    # One bucket holds 0.5 (low bits 0) 600 times, then 400 values just above it, and 500
    # values elsewhere. Rank 300 lands among the 0.5s (answered by the first pass); rank 800
    # among the others (which need the second pass).
    exact = torch.full((600,), 0.5)
    above = 0.5 + torch.arange(1, 401, dtype=torch.float32) * 2.0**-20
    others = torch.linspace(2.0, 3.0, 500)
    values = torch.cat([others[:250], above, exact, others[250:]])
    values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(1))]
    ordered = torch.sort(values).values
    for rank, refined in ((300, False), (800, True)):
        selector = RankSelector(values.device)
        for chunk in _chunks(values):
            selector.add(chunk)
        selector.prepare([rank])
        if selection_mode != "sorted":
            assert selector.needs_second_pass is refined
        if selector.needs_second_pass:
            for chunk in _chunks(values):
                selector.refine(chunk)
        value, less = selector.value_at(rank)
        assert value == ordered[rank].item()
        assert less == int((values < ordered[rank]).sum())


@pytest.mark.parametrize(("label", "values"), _samples(), ids=[s[0] for s in _samples()])
@pytest.mark.parametrize("k", [1, 7, 500, 1499])
def test_shrink_bound_keeps_what_the_mask_keeps(label: str, values: torch.Tensor, k: int) -> None:
    """Where a rule offers a hardshrink bound, x > bound is exactly its keep mask."""
    selector = _selector(values, [values.numel() - k])
    rule = top_k_rule(selector, k)
    for chunk in _chunks(values):
        bound = rule.shrink_bound()
        mask = rule.keep(chunk)
        if bound is not None:
            assert torch.equal(chunk > bound, mask == 1)
            assert torch.equal(torch.hardshrink(chunk, bound), chunk * mask)


@pytest.mark.parametrize(("label", "values"), _samples(), ids=[s[0] for s in _samples()])
@pytest.mark.parametrize("k", [1, 7, 500, 1499])
def test_chunks_inside_the_tie_window_keep_by_a_counted_bound(
    label: str, values: torch.Tensor, k: int
) -> None:
    """The output pass's walk: a hardshrink bound where the rule offers one (counting the ties
    of chunks inside the window), the masks elsewhere; together exactly the stable top k."""
    n = values.numel()
    rule = top_k_rule(_selector(values, [n - k]), k)
    scratch = torch.empty(CHUNK)
    parts, counted = [], 0
    for chunk in _chunks(values):
        bound = rule.shrink_bound()
        if bound is None:
            bound = rule.counted_bound(chunk * -1.0, scratch[: chunk.numel()])  # signs are ignored
            counted += bound is not None
        parts.append(chunk > bound if bound is not None else rule.keep(chunk) == 1)
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.sort(values, descending=True, stable=True).indices[:k]] = True
    assert torch.equal(torch.cat(parts), expected)
    if label == "few distinct values" and k == 500:
        assert counted > 0  # 0.375-steps: the window of kept ties spans several chunks


def test_shrink_bound_of_an_inclusive_rule_is_the_float_below() -> None:
    rule = KeepRule(lower=0.375, lower_inclusive=True)
    bound = rule.shrink_bound()
    assert bound is not None and bound < 0.375
    assert torch.tensor(bound).nextafter(torch.tensor(1.0)).item() == 0.375
    assert KeepRule(lower=0.375).shrink_bound() == 0.375
    assert KeepRule(lower=0.0, lower_inclusive=True).shrink_bound() is None
    assert KeepRule(lower=0.1, upper=0.5).shrink_bound() is None
    counting = KeepRule(lower=0.25, ties=[_select.TieWindow(0.25, 0, 2)])
    assert counting.shrink_bound() is None
    counting.keep(torch.tensor([0.25, 0.25, 0.5]))
    assert counting.shrink_bound() == 0.25  # both ties kept: later ones are dropped

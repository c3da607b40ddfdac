"""The task-vector family (task_arithmetic, ties, dare_*, breadcrumbs*, della*) as one function.

Like mergekit's GeneralizedTaskArithmeticMerge, every member is one generalized method placed on
two axes, read from its MethodSpec (`task_vector`): how each task vector is sparsified (none,
magnitude, random, breadcrumbs, della) and whether a sign is elected per entry (sum consensus).
What it computes, for each non-base input i:
    tau_i = x_i - base, sparsified over the whole tensor with density_i (>= 1: untouched),
    optionally rescaled to its L1 norm before sparsifying, times weight_i;
then, with sign election, entries whose sign matches sign(sum_i tau_i) (>= 0 counts as +) are
summed and divided by the sum of their weights (0 -> 1); without it, all are summed and divided by
sum(weight) (|sum| < 1e-8 -> 1). normalize turns the division on; out = base + lambda * merged.

How it is done here, so that no full-size copy per input is ever made:
  1. a statistics pass over chunks gathers what the sparsifiers need for the whole tensor: a
     radix histogram of |tau| (magnitude, breadcrumbs), L1 norms before and after a random mask
     (DARE, regenerated later from its seed), or DELLA's rank-based masks (kept as bool);
  2. a second histogram pass, only when a selection needs it, pins down the exact threshold;
  3. one output pass recomputes tau chunk by chunk (or reads it from the statistics pass, for
     tensors up to TAU_CACHE_ELEMENTS), masks, weights, elects signs and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mergetui.errors import UserError
from mergetui.merge.chunked import is_chunked, raw_slice, whole
from mergetui.merge.methods import _random
from mergetui.merge.methods._common import CHUNK_ELEMENTS, OutputChunks, flat
from mergetui.merge.methods._select import (
    KeepRule,
    RankSelector,
    kept_sum,
    rank_window_rule,
    top_k_rule,
)

# Tensors up to this size keep each input's task vector from the statistics pass (TIES'
# histograms, DARE's L1 rescale), so the passes after it read it instead of subtracting again
# (and drawing DARE's mask again); its home is the spec table, which the engine's memory bound reads.
from mergetui.recipe.methods import TAU_CACHE_ELEMENTS, TaskVectorAxes, window_fits

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext

# mergekit's rescaled_masked_tensor leaves the mask unscaled below this norm.
_RESCALE_EPS = 1e-7


@dataclass
class _Input:
    """One non-base input and everything its sparsifier decided about it."""

    index: int  # position in `tensors`
    slot: int  # position among the non-base inputs (keys its random stream)
    tensor: torch.Tensor  # flat view
    weight: float
    kind: str | None  # None: keep all; "zero"; "magnitude"; "random"; "breadcrumbs"; "della"
    density: float = 1.0
    gamma: float = 0.0
    epsilon: float = 0.0
    selector: RankSelector | None = None
    rule: KeepRule | None = None
    window: tuple[int, int] = (0, 0)  # kept ascending ranks for the histogram selections
    stream: int = 0
    l1_before: Any = 0.0
    l1_after: Any = 0.0
    scale: float = 1.0
    della_keep: torch.Tensor | None = field(default=None, repr=False)  # int8 0/1, flat
    tau: torch.Tensor | None = field(default=None, repr=False)  # the task vector, flat, cached
    tau_masked: bool = False  # tau is already multiplied by its random keep mask


def generalized_task_arithmetic(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """base + lambda * (the weighted, sparsified task vectors, summed or sign-elected), the
    method's place on the two axes read from its spec (see the module docstring)."""
    axes = _axes(ctx)
    base, others = ctx.inputs(tensors)
    assert base is not None
    if not others or base.numel() == 0:
        return whole(base)
    normalize = bool(ctx.shared_param("normalize"))
    rescale = bool(ctx.shared_param("rescale"))
    lam = float(ctx.shared_param("lambda"))
    base_flat = flat(base)
    numel = base_flat.numel()
    inputs = [
        _plan_input(tensors, ctx, index, slot, axes.sparsification, numel)
        for slot, index in enumerate(others)
    ]
    _gather_statistics(inputs, base, base_flat, ctx, rescale)
    if rescale:
        _rescale(inputs)
    consensus = axes.consensus == "sum"
    return _OutputPass(ctx, base, inputs, consensus, normalize, lam).run(base_flat)


def _axes(ctx: MethodContext) -> TaskVectorAxes:
    from mergetui.recipe.methods import METHODS

    spec = METHODS.get(ctx.method)
    if spec is None or spec.task_vector is None:
        raise UserError(f"{ctx.method} is not a task-vector method", where=ctx.tensor_name)
    return spec.task_vector


def _rescale(inputs: list[_Input]) -> None:
    """Restore each sparsified task vector's L1 norm (mergekit's rescaled_masked_tensor)."""
    for item in inputs:
        if item.kind in ("magnitude", "breadcrumbs", "random", "della"):
            before, after = float(item.l1_before), float(item.l1_after)
            if before >= _RESCALE_EPS and after >= _RESCALE_EPS:
                item.scale = before / after


class _OutputPass:
    """Pass 3: per chunk, each input's row tau * keep * coefficient, then the rows combined
    (summed, or sign-elected) onto the base. Scratch for one chunk is reused by every chunk."""

    def __init__(
        self,
        ctx: MethodContext,
        base: torch.Tensor,
        inputs: list[_Input],
        consensus: bool,
        normalize: bool,
        lam: float,
    ) -> None:
        import torch

        self.ctx, self.base, self.inputs = ctx, base, inputs
        self.consensus, self.normalize, self.lam = consensus, normalize, lam
        weights = [item.weight for item in inputs]
        coefficients = [item.weight * item.scale for item in inputs]
        if not consensus:
            divisor = sum(weights) if normalize else 1.0
            if abs(divisor) < 1e-8:
                divisor = 1.0
            coefficients = [c * lam / divisor for c in coefficients]
        self.coefficients = coefficients
        self.out = OutputChunks(ctx, base)
        device, dtype = base.device, base.dtype
        base_flat = flat(base)
        width = min(base_flat.numel(), CHUNK_ELEMENTS)
        self.deltas = torch.empty((len(inputs), width), dtype=dtype, device=device)
        self.mask = torch.empty(width, dtype=torch.float32, device=device)
        self.base_buffer, self.magnitudes, self.signs, self.merged, self.divisors, self.results = (
            _scratch(base_flat, 6)
        )
        self.ones = torch.ones(width, dtype=dtype, device=device)
        self.weight_row = torch.tensor(weights, dtype=dtype, device=device)
        # With every weight positive, a divisor is 0 only where no entry agrees (and the merged
        # value is 0): raising those to the smallest weight divides 0 by it, as mergekit's 0 -> 1.
        self.smallest_weight = min(weights) if all(w > 0 for w in weights) else None

    def run(self, base_flat: torch.Tensor) -> torch.Tensor:
        import torch

        for chunk_index, (start, end) in enumerate(self.ctx.chunks(base_flat.numel())):
            length = end - start
            block = self.deltas[:, :length]
            base_chunk = _read_into(base_flat, start, end, self.base_buffer)
            for row, item, factor in zip(block, self.inputs, self.coefficients, strict=True):
                self._fill_row(row, item, factor, base_chunk, chunk_index, start, end)
            target = self.out.chunk(start, end)
            result = target if target.dtype == self.base.dtype else self.results[:length]
            if self.consensus:
                self._elect(block, base_chunk, result)
            else:
                torch.add(base_chunk, _sum_rows(block, self.merged[:length]), out=result)
            if result is not target:
                target.copy_(result)
        return self.out.result()

    def _fill_row(
        self,
        row: torch.Tensor,
        item: _Input,
        factor: float,
        base_chunk: torch.Tensor,
        chunk_index: int,
        start: int,
        end: int,
    ) -> None:
        """row = tau * keep * coefficient, in as few passes as the input allows."""
        import torch

        length = end - start
        cached = item.tau[start:end] if item.tau is not None else None
        if cached is not None and item.tau_masked:
            torch.mul(cached, factor, out=row)
            return
        if cached is not None:
            delta = cached
        else:  # a stored (bf16) slice meets the float32 base inside the subtraction
            delta = torch.sub(raw_slice(item.tensor, start, end), base_chunk, out=row)
        bound = None
        if item.rule is not None and delta.dtype == torch.float32:
            bound = item.rule.shrink_bound()
            if bound is None:
                bound = item.rule.counted_bound(delta, self.magnitudes[:length])
        if bound is not None:
            torch.hardshrink(delta, bound, out=row).mul_(factor)  # tau * [|tau| > bound] * c
            return
        mask = self.mask[:length]
        keep = _chunk_keep(item, delta, chunk_index, start, end, self.magnitudes[:length], mask)
        if keep is None:
            torch.mul(delta, factor, out=row)
        elif row.dtype == mask.dtype:  # 0/1 times the factor is exact
            torch.mul(delta, torch.mul(keep, factor, out=mask), out=row)
        else:
            torch.mul(delta, keep, out=row).mul_(factor)

    def _elect(self, block: torch.Tensor, base_chunk: torch.Tensor, result: torch.Tensor) -> None:
        """Sign consensus: elected sign s = +1 where the sum is >= 0, else -1 (copysign: a sum of
        -0.0 means every entry is zero, and zeros never agree). An entry agrees when s * tau > 0,
        so relu(s * tau) keeps exactly the agreeing magnitudes."""
        import torch

        length = block.shape[1]
        total = _sum_rows(block, self.signs[:length])
        sign = torch.copysign(self.ones[:length], total, out=total)
        block.mul_(sign).relu_()
        merged = _sum_rows(block, self.merged[:length])
        if not self.normalize:
            torch.addcmul(base_chunk, merged, sign, value=self.lam, out=result)
            return
        # merged * s / divisor, as merged / (divisor * s): s is +-1, so exactly equal.
        divisor = torch.mv(block.sign_().t(), self.weight_row, out=self.divisors[:length])
        if self.smallest_weight is not None:
            divisor.clamp_min_(self.smallest_weight)
        else:
            divisor.add_(torch.eq(divisor, 0, out=self.mask[:length]))  # 0 -> 1
        torch.addcdiv(base_chunk, merged, divisor.mul_(sign), value=self.lam, out=result)


def _sum_rows(block: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The rows of a (count, n) block summed into `out`: row additions, which on the CPU are
    about twice as fast as a sum over dim 0 for the few rows a merge has."""
    import torch

    if block.shape[0] == 1:
        return out.copy_(block[0])
    torch.add(block[0], block[1], out=out)
    for row in block[2:]:
        out.add_(row)
    return out


def _scratch(like: Any, count: int) -> list[torch.Tensor]:
    """`count` chunk-sized buffers in the compute dtype, on the device."""
    import torch

    width = min(like.numel(), CHUNK_ELEMENTS)
    return [torch.empty(width, dtype=like.dtype, device=like.device) for _ in range(count)]


def _read_into(source: Any, start: int, end: int, buffer: torch.Tensor) -> torch.Tensor:
    """Elements [start, end) of a flat input in the compute dtype: a view of a plain tensor,
    or copied (upcast) into `buffer` from a chunk source."""
    if not is_chunked(source):
        return source[start:end]
    target = buffer[: end - start]
    target.copy_(source.raw(start, end))
    return target


def _plan_input(
    tensors: list[torch.Tensor],
    ctx: MethodContext,
    index: int,
    slot: int,
    sparsification: str,
    numel: int,
) -> _Input:
    item = _Input(
        index=index,
        slot=slot,
        tensor=flat(tensors[index]),
        weight=float(ctx.model_param(index, "weight")),
        kind=None,
    )
    if sparsification == "none":
        return item
    item.density = float(ctx.model_param(index, "density"))
    if item.density >= 1:
        return item  # density >= 1: nothing is dropped and nothing rescaled
    if sparsification == "magnitude":
        item.kind = "zero" if item.density <= 0 else "magnitude"
        k = max(1, int(item.density * numel))
        item.window = (numel - k, numel)
    elif sparsification == "breadcrumbs":
        item.kind = "breadcrumbs"
        item.gamma = float(ctx.model_param(index, "gamma"))
        target = int(item.density * numel)
        top = int(item.gamma * numel)
        bottom = max(0, numel - target - top)
        item.window = (bottom, bottom + target)
    elif sparsification == "random":
        item.kind = "random"
        item.stream = _random.stream_key(ctx.seed, ctx.tensor_name, slot)
    elif sparsification == "della":
        if item.density <= 0:
            item.kind = "zero"
            return item
        item.kind = "della"
        item.epsilon = float(ctx.model_param(index, "epsilon"))
        if not window_fits(item.density, item.epsilon):
            raise UserError(
                f"epsilon must be chosen such that density +/- epsilon is in (0, 1); "
                f"{ctx.input_label(index)} has density {item.density:g} and epsilon "
                f"{item.epsilon:g}",
                where=ctx.tensor_name,
                fix=f"use an epsilon below {min(item.density, 1 - item.density):g} for that model",
            )
        item.stream = _random.stream_key(ctx.seed, ctx.tensor_name, slot)
    else:  # pragma: no cover - TaskVectorAxes names only the kinds above
        raise ValueError(sparsification)
    return item


def _gather_statistics(
    inputs: list[_Input],
    base: torch.Tensor,
    base_flat: torch.Tensor,
    ctx: MethodContext,
    rescale: bool,
) -> None:
    """Passes 1 and 2: histograms, L1 norms and DELLA masks, whole-tensor facts the output needs."""
    import torch

    for item in inputs:
        if item.kind in ("magnitude", "breadcrumbs"):
            item.selector = RankSelector(base.device, with_sums=rescale)
        if item.kind == "della":
            _della_mask(item, base, ctx, rescale)

    flat_stats = [
        item for item in inputs if item.selector is not None or (rescale and item.kind == "random")
    ]
    if flat_stats:
        zero = torch.zeros((), dtype=torch.float64, device=base.device)
        numel = base_flat.numel()
        for item in flat_stats:
            item.l1_before, item.l1_after = zero.clone(), zero.clone()
            if numel <= TAU_CACHE_ELEMENTS:
                item.tau = torch.empty(numel, dtype=base_flat.dtype, device=base.device)
        base_buffer, magnitude_buffer = _scratch(base_flat, 2)
        for chunk_index, (start, end) in enumerate(ctx.chunks(numel)):
            base_chunk = _read_into(base_flat, start, end, base_buffer)
            magnitudes = magnitude_buffer[: end - start]
            for item in flat_stats:
                raw = raw_slice(item.tensor, start, end)
                delta = None
                if item.tau is None:
                    torch.sub(raw, base_chunk, out=magnitudes).abs_()
                else:
                    delta = torch.sub(raw, base_chunk, out=item.tau[start:end])
                    torch.abs(delta, out=magnitudes)
                if item.selector is not None:
                    item.selector.add(magnitudes)
                    continue
                keep = _random.bernoulli_keep(
                    item.stream, chunk_index, end - start, item.density, base.device
                )
                item.l1_before += magnitudes.sum()
                item.l1_after += torch.dot(magnitudes, keep.to(magnitudes.dtype))
                if delta is not None:
                    delta.mul_(keep)
                    item.tau_masked = True

    selections = [item for item in inputs if item.selector is not None]
    for item in selections:
        lo, hi = item.window
        item.selector.prepare([lo, hi])
    refine = [item for item in selections if item.selector.needs_second_pass]
    if refine:
        base_buffer, magnitude_buffer = _scratch(base_flat, 2)
        for start, end in ctx.chunks(base_flat.numel()):
            base_chunk = _read_into(base_flat, start, end, base_buffer)
            magnitudes = magnitude_buffer[: end - start]
            for item in refine:
                if item.tau is None:
                    raw = raw_slice(item.tensor, start, end)
                    torch.sub(raw, base_chunk, out=magnitudes).abs_()
                else:
                    torch.abs(item.tau[start:end], out=magnitudes)
                item.selector.refine(magnitudes)
    for item in selections:
        lo, hi = item.window
        if item.kind == "magnitude":
            item.rule = top_k_rule(item.selector, hi - lo)
        else:
            item.rule = rank_window_rule(item.selector, lo, hi)
        if rescale:
            item.l1_before = item.selector.sum_below(item.selector.total)
            item.l1_after = kept_sum(item.selector, lo, hi)
        item.selector = None  # free the histograms


def _della_mask(item: _Input, base: torch.Tensor, ctx: MethodContext, rescale: bool) -> None:
    """DELLA's keep mask: per vector (the rows; 1-D tensors are one vector), rank entries by
    magnitude and keep each with probability (density - eps) + 2 eps * rank / (n - 1)."""
    import torch

    x = item.tensor.view(base.shape)
    if base.dim() < 2:
        x_rows, base_rows = x.reshape(1, -1), base.reshape(1, -1)
    elif base.dim() == 2:
        x_rows, base_rows = x, base
    else:  # vectors along dim 1, as mergekit's argsort(dim=1)
        x_rows = x.movedim(1, -1).reshape(-1, base.shape[1])
        base_rows = base.movedim(1, -1).reshape(-1, base.shape[1])
    rows, cols = x_rows.shape
    keep_rows = torch.empty((rows, cols), dtype=torch.int8, device=base.device)
    low = item.density - item.epsilon
    before = torch.zeros((), dtype=torch.float64, device=base.device)
    after = before.clone()
    steps = None
    if cols > 1:
        steps = torch.arange(cols, dtype=torch.float32, device=base.device)
        steps = steps.mul_(2 * item.epsilon / (cols - 1)).add_(low)
    for chunk_index, (r0, r1) in enumerate(ctx.row_chunks(rows, cols)):
        magnitudes = torch.sub(x_rows[r0:r1], base_rows[r0:r1]).abs_()
        draws = _random.uniform(item.stream, chunk_index, magnitudes.numel(), base.device)
        draws = draws.view(magnitudes.shape)
        if steps is None:  # one-entry vectors: mergekit's rank formula divides 0 by 0
            probabilities = torch.full_like(draws, item.density)
        else:
            order = torch.sort(magnitudes, dim=1, stable=True).indices
            probabilities = torch.empty_like(draws)
            probabilities.scatter_(1, order, steps.expand_as(draws))
        keep = torch.lt(draws, probabilities, out=probabilities)
        keep_rows[r0:r1] = keep
        if rescale:
            before += magnitudes.sum()
            after += magnitudes.mul_(keep).sum()
    if base.dim() > 2:
        moved = list(base.movedim(1, -1).shape)
        keep_rows = keep_rows.reshape(moved).movedim(-1, 1).contiguous()
    item.della_keep = keep_rows.reshape(-1)
    item.l1_before, item.l1_after = before, after


def _chunk_keep(
    item: _Input,
    delta: torch.Tensor,
    chunk_index: int,
    start: int,
    end: int,
    magnitudes: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The keep multiplier (0/1) of one chunk of an input's task vector (None: keep all).
    `magnitudes` and `mask` are optional scratch of the chunk's size (float32 for the mask)."""
    import torch

    if item.kind is None:
        return None
    if item.kind == "zero":
        return torch.zeros_like(delta)
    if item.kind == "random":
        return _random.bernoulli_keep(
            item.stream, chunk_index, end - start, item.density, delta.device
        )
    if item.kind == "della":
        assert item.della_keep is not None
        return item.della_keep[start:end]
    assert item.rule is not None
    if magnitudes is None or magnitudes.dtype != torch.float32:
        return item.rule.keep(delta.abs())
    return item.rule.keep(torch.abs(delta, out=magnitudes), out=mask)

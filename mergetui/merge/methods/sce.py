"""SCE: select high-variance entries, weight task vectors by their energy, elect signs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.merge.methods._common import CHUNK_ELEMENTS, flat
from mergetui.merge.methods._select import KeepRule, RankSelector, top_k_rule

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def sce(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """tau_i = x_i - base. With select_topk < 1, keep only the int(nonzero * select_topk) entries
    of largest variance across the tau_i (one mask for all models; ties: lower index first).
    w_i = mean(tau_i^2) / sum_j mean(tau_j^2) (uniform when that sum is below 1e-6). Entries
    whose sign matches sign(sum_i tau_i) (>= 0 counts as +) are merged:
    out = base + sum_i w_i m_i tau_i / max(sum_i w_i m_i, 1e-6).

    Passes: variance histogram (and zero count), its refinement, the masked energies, the output.
    """
    import torch

    base, others = ctx.inputs(tensors)
    assert base is not None
    if not others:
        return base
    select_topk = float(ctx.shared_param("select_topk"))
    base_flat = flat(base)
    xs = [flat(tensors[i]) for i in others]
    count, numel = len(xs), base_flat.numel()
    block = torch.empty((count, min(numel, CHUNK_ELEMENTS)), dtype=base.dtype, device=base.device)

    def load(start: int, end: int) -> torch.Tensor:
        deltas = block[:, : end - start]
        for row, x in zip(deltas, xs, strict=True):
            torch.sub(x[start:end], base_flat[start:end], out=row)
        return deltas

    rule: KeepRule | None = None
    if select_topk <= 0:
        rule = KeepRule(keep_nothing=True)
    elif select_topk < 1:
        selector = RankSelector(base.device)
        nonzero = 0
        for start, end in ctx.chunks(numel):
            variance = _variance(load(start, end))
            selector.add(variance)
            nonzero += int(torch.gt(variance, 0, out=torch.empty_like(variance)).sum())
        k = int(nonzero * select_topk)
        selector.prepare([numel - k])
        if selector.needs_second_pass:
            for start, end in ctx.chunks(numel):
                selector.refine(_variance(load(start, end)))
        rule = top_k_rule(selector, k)

    def masked(start: int, end: int) -> torch.Tensor:
        deltas = load(start, end)
        if rule is not None:
            keep = rule.keep(_variance(deltas))
            if keep is not None:
                deltas.mul_(keep)
        return deltas

    energy = torch.zeros(count, dtype=torch.float64, device=base.device)
    for start, end in ctx.chunks(numel):
        deltas = masked(start, end)
        energy += (deltas * deltas).sum(dim=1).double()
    energy /= max(numel, 1)
    total = float(energy.sum())
    if abs(total) < 1e-6:
        weights = torch.full((count,), 1.0 / count, dtype=base.dtype, device=base.device)
    else:
        weights = (energy / total).to(base.dtype)

    if rule is not None:
        rule.restart()  # the output pass walks the chunks again from the start
    out = ctx.output_buffer(base)
    out_flat = out.view(-1)
    for start, end in ctx.chunks(numel):
        deltas = masked(start, end)
        # Elected sign s; relu(s * tau) keeps the agreeing magnitudes (zeros never agree).
        sign = deltas.sum(dim=0)
        sign = torch.ge(sign, 0, out=sign).mul_(2).sub_(1)
        agreeing = deltas.mul_(sign).relu_()
        merged = (weights @ agreeing).mul_(sign)
        divisor = (weights @ agreeing.sign_()).clamp_(min=1e-6)
        torch.add(base_flat[start:end], merged.div_(divisor), out=out_flat[start:end])
    return out


def _variance(deltas: torch.Tensor) -> torch.Tensor:
    """Population variance across models, per entry (torch.var(dim=0) is ~50x slower on CPU for a
    reduction over so few rows; this differs from it by at most an ulp)."""
    mean = deltas.mean(dim=0)
    return (deltas - mean).square_().mean(dim=0)

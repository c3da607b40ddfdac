"""NearSwap: take the other model's value where it is close to the base's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.merge.methods._common import flat

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def nearswap(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """w = clamp(t / max(|a - b|, 1e-6), 0, 1) per entry; out = w b + (1 - w) a, a the base."""
    import torch

    base, others = ctx.inputs(tensors)
    assert base is not None
    a, b = flat(base), flat(tensors[others[0]])
    t = float(ctx.shared_param("t"))
    out = ctx.output_buffer(base)
    out_flat = out.view(-1)
    for start, end in ctx.chunks(a.numel()):
        x, y = a[start:end], b[start:end]
        diff = torch.sub(y, x)
        weight = diff.abs().clamp_(min=1e-6).reciprocal_().mul_(t).clamp_(0, 1)
        torch.addcmul(x, weight, diff, out=out_flat[start:end])
    return out

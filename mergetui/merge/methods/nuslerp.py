"""NuSLERP: SLERP of two models by their weights, of their task vectors when a base is given."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.merge.methods._common import vector_sums, vector_view

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext

_NORM_FLOOR = 1e-7  # mergekit's _normalize clamp
_COLINEAR_EPS = 1e-8  # colinear when 1 - cos^2 <= eps^2


def nuslerp(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """t = w_2 / (w_1 + w_2) (0.5 when the sum is ~0). The vectors are the whole tensor
    (nuslerp_flatten, the default), else each row along the last dim, or along the first dim
    with nuslerp_row_wise. Colinear vectors (1 - cos^2 <= 1e-16) are interpolated linearly.

    Pass 1 gathers per-vector |v0|^2, |v1|^2 and v0.v1 chunk by chunk; pass 2 writes
    c0 v0 + c1 v1 (+ base) with per-vector coefficients.
    """
    import torch

    base, others = ctx.inputs(tensors)
    weights = [float(ctx.model_param(i, "weight")) for i in others]
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    if bool(ctx.shared_param("nuslerp_flatten")):
        mode = "flat"
    else:
        mode = "first" if bool(ctx.shared_param("nuslerp_row_wise")) else "last"

    first = tensors[others[0]]
    v0, along = vector_view(first, mode)
    v1, _ = vector_view(tensors[others[1]], mode)
    vb = vector_view(base, mode)[0] if base is not None else None
    rows, cols = v0.shape

    def deltas(r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
        if vb is None:
            return v0[r0:r1], v1[r0:r1]
        return v0[r0:r1] - vb[r0:r1], v1[r0:r1] - vb[r0:r1]

    stats_shape = (rows, 1) if along == 1 else (1, cols)
    stats = torch.zeros((3, *stats_shape), dtype=first.dtype, device=first.device)
    for r0, r1 in ctx.row_chunks(rows, cols):
        x, y = deltas(r0, r1)
        parts = (vector_sums(x * x, along), vector_sums(y * y, along), vector_sums(x * y, along))
        if along == 1:
            for k, part in enumerate(parts):
                stats[k, r0:r1] = part
        else:
            for k, part in enumerate(parts):
                stats[k] += part

    norm0 = stats[0].sqrt().clamp_(min=_NORM_FLOOR)
    norm1 = stats[1].sqrt().clamp_(min=_NORM_FLOOR)
    cos = (stats[2] / (norm0 * norm1)).clamp_(-1, 1)
    colinear = (1 - cos.square()) <= _COLINEAR_EPS**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin_theta = torch.sin(theta)
    coef0 = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef1 = torch.where(colinear, t, torch.sin(t * theta) / sin_theta)

    out = ctx.output_buffer(first)
    out_view, _ = vector_view(out, mode)
    for r0, r1 in ctx.row_chunks(rows, cols):
        c0 = coef0[r0:r1] if along == 1 else coef0
        c1 = coef1[r0:r1] if along == 1 else coef1
        x, y = deltas(r0, r1)
        target = out_view[r0:r1]
        torch.mul(x, c0, out=target)
        target.addcmul_(y, c1)
        if vb is not None:
            target.add_(vb[r0:r1])
    return out

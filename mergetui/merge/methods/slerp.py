"""SLERP between the base and one other model: t = 0 gives the base, t = 1 the other."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mergetui.merge.methods._common import OutputChunks, flat

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext

DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8


def slerp_coefficients(t: float, dot: float) -> tuple[float, float]:
    """(c_a, c_b) with out = c_a a + c_b b: spherical unless the vectors are (anti)parallel."""
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """The angle comes from the normalised flattened tensors (norms <= 1e-8 count as 1); the
    interpolation is applied to the tensors themselves, as mergekit does.

    Pass 1 gathers |a|^2, |b|^2 and a.b chunk by chunk (float64 totals); pass 2 writes
    c_a a + c_b b. Two reads of each input, nothing allocated but the output (in the engine's
    output dtype when it says so; chunk by chunk to the engine's sink when it has one).
    """
    import torch

    base, others = ctx.inputs(tensors)
    assert base is not None
    a, b = flat(base), flat(tensors[others[0]])
    t = float(ctx.shared_param("t"))

    sums = torch.zeros(3, dtype=torch.float64, device=a.device)
    for start, end in ctx.chunks(a.numel()):
        x, y = a[start:end], b[start:end]
        sums += torch.stack((torch.dot(x, x), torch.dot(y, y), torch.dot(x, y))).double()
    aa, bb, ab = sums.tolist()
    norm_a = math.sqrt(aa) if math.sqrt(aa) > NORM_EPS else 1.0
    norm_b = math.sqrt(bb) if math.sqrt(bb) > NORM_EPS else 1.0
    coef_a, coef_b = slerp_coefficients(t, ab / (norm_a * norm_b))

    out = OutputChunks(ctx, base)
    for start, end in ctx.chunks(a.numel()):
        target = out.chunk(start, end)
        if target.dtype == a.dtype:
            torch.mul(a[start:end], coef_a, out=target)
            target.add_(b[start:end], alpha=coef_b)
        else:  # computed in the compute dtype, rounded once into the output dtype
            target.copy_(torch.mul(a[start:end], coef_a).add_(b[start:end], alpha=coef_b))
    return out.result()

"""Multi-SLERP: a spherical barycentre of any number of models (of task vectors with a base)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mergetui.errors import UserError
from mergetui.merge.methods._common import CHUNK_ELEMENTS, flat, normalized_weights

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def multislerp(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """mergekit's barycentric interpolation on the hypersphere, computed without stacking.

    With v_i the flattened inputs (minus the base, if any), w_i the weights (normalised to sum 1
    by default) and u_i = v_i / (|v_i| + eps): m = M / |M| with M = sum w_i u_i, and the result
    is m * sum(w_i |v_i|) (+ base). mergekit also projects the u_i onto the tangent space at m and
    maps their weighted sum T back with the exponential map, but T = M - (M.m) m = 0 exactly, so
    that step only adds rounding noise (of order 1e-7 relative); it is left out.

    Pass 1 gathers the Gram matrix v_i.v_j chunk by chunk (float64 totals), which gives every |v_i|
    and |M|; pass 2 writes sum_i k_i v_i (+ base).
    """
    import torch

    base, others = ctx.inputs(tensors)
    if len(others) == 1:
        return tensors[others[0]]
    weights = [float(ctx.model_param(i, "weight")) for i in others]
    eps = float(ctx.shared_param("eps"))
    if bool(ctx.shared_param("normalize_weights")):
        fix = "change the weights, or set normalize_weights = false"
        weights = normalized_weights(ctx, weights, 1e-12, "they cannot be normalised", fix)

    xs = [flat(tensors[i]) for i in others]
    base_flat = flat(base) if base is not None else None
    count, numel = len(xs), xs[0].numel()
    first = tensors[others[0]]
    block = torch.empty((count, min(numel, CHUNK_ELEMENTS)), dtype=first.dtype, device=first.device)

    def load(start: int, end: int) -> torch.Tensor:
        rows = block[:, : end - start]
        for row, x in zip(rows, xs, strict=True):
            if base_flat is None:
                row.copy_(x[start:end])
            else:
                torch.sub(x[start:end], base_flat[start:end], out=row)
        return rows

    gram = torch.zeros((count, count), dtype=torch.float64, device=first.device)
    for start, end in ctx.chunks(numel):
        rows = load(start, end)
        gram += (rows @ rows.T).double()
    gram_list = gram.tolist()
    norms = [math.sqrt(max(gram_list[i][i], 0.0)) for i in range(count)]
    unit = [w / (n + eps) for w, n in zip(weights, norms, strict=True)]  # M = sum unit_i v_i
    mean_sq = sum(unit[i] * unit[j] * gram_list[i][j] for i in range(count) for j in range(count))
    mean_norm = math.sqrt(max(mean_sq, 0.0))
    if mean_norm < eps:
        if count != 2:
            raise UserError(
                "the weighted sum of the multislerp inputs is zero (antipodal models whose "
                "weights balance out)",
                where=ctx.tensor_name,
                fix="use different weights for models that point in opposite directions",
            )
        coefficients = weights  # mergekit falls back to a linear interpolation of the two
    else:
        avg_norm = sum(w * n for w, n in zip(weights, norms, strict=True))
        coefficients = [c * avg_norm / mean_norm for c in unit]

    out = ctx.output_buffer(first)
    out_flat = out.view(-1)
    coef = torch.tensor(coefficients, dtype=first.dtype, device=first.device)
    for start, end in ctx.chunks(numel):
        rows = load(start, end)
        target = out_flat[start:end]
        torch.mv(rows.t(), coef, out=target)
        if base_flat is not None:
            target.add_(base_flat[start:end])
    return out

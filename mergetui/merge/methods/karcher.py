"""Karcher mean: the Riemannian centre of mass of the models on the unit sphere, equal weights."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mergetui.merge.methods._common import CHUNK_ELEMENTS, flat

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def karcher(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """mergekit's iteration, run on coefficients instead of full tensors.

    Every iterate of mergekit's loop (the mean, the tangent) is a linear combination of the unit
    inputs u_i = x_i / |x_i|, and each step needs only dot products between such combinations. So
    one pass gathers the Gram matrix x_i.x_j (float64), the whole iteration runs on N coefficients
    (same steps, same tolerances), and a last pass writes scale * sum_i b_i u_i. The base, if the
    engine names one, is just another input (mergekit ignores it too).
    """
    import torch

    count = len(tensors)
    if count == 1:
        return tensors[0]
    max_iter = int(ctx.shared_param("max_iter"))
    tol = float(ctx.shared_param("tol"))
    xs = [flat(t) for t in tensors]
    first = tensors[0]
    numel = xs[0].numel()

    gram = torch.zeros((count, count), dtype=torch.float64, device=first.device)
    block = torch.empty(
        (count, min(numel, CHUNK_ELEMENTS)), dtype=torch.float64, device=first.device
    )
    for start, end in ctx.chunks(numel):
        rows = block[:, : end - start]
        for row, x in zip(rows, xs, strict=True):
            row.copy_(x[start:end])
        gram += rows @ rows.T
    g = gram.tolist()
    norms = [math.sqrt(max(g[i][i], 0.0)) for i in range(count)]
    alphas = [1.0 / count] * count
    beta = _karcher_coefficients(g, norms, alphas, max_iter, tol)
    scale = sum(a * n for a, n in zip(alphas, norms, strict=True))
    # out = scale * sum_i beta_i u_i = sum_i (scale beta_i / |x_i|) x_i
    coefficients = [
        scale * b / n if n != 0.0 and b != 0.0 else 0.0 for b, n in zip(beta, norms, strict=True)
    ]

    out = ctx.output_buffer(first)
    out_flat = out.view(-1)
    for start, end in ctx.chunks(numel):
        target = out_flat[start:end]
        torch.mul(xs[0][start:end], coefficients[0], out=target)
        for x, c in zip(xs[1:], coefficients[1:], strict=True):
            target.add_(x[start:end], alpha=c)
    return out


def _karcher_coefficients(
    gram: list[list[float]], norms: list[float], alphas: list[float], max_iter: int, tol: float
) -> list[float]:
    """The Karcher mean as coefficients over the unit inputs, following mergekit step by step."""
    count = len(norms)
    # Gram matrix of the unit vectors (zero vectors stay zero).
    unit = [
        [
            gram[i][j] / (norms[i] * norms[j]) if norms[i] != 0.0 and norms[j] != 0.0 else 0.0
            for j in range(count)
        ]
        for i in range(count)
    ]

    def dot(a: list[float], b: list[float]) -> float:
        return sum(a[i] * unit[i][j] * b[j] for i in range(count) for j in range(count))

    valid = [i for i in range(count) if norms[i] > tol]
    if not valid:
        return [0.0] * count
    alpha_sum = sum(alphas[i] for i in valid)
    weight = {i: alphas[i] / alpha_sum for i in valid}

    mean = [weight.get(i, 0.0) for i in range(count)]
    mean_norm = math.sqrt(max(dot(mean, mean), 0.0))
    if mean_norm < tol:
        mean = [1.0 if i == valid[0] else 0.0 for i in range(count)]
    else:
        mean = [m / mean_norm for m in mean]

    for _ in range(max_iter):
        tangent = [0.0] * count
        projections = [sum(unit[i][j] * mean[j] for j in range(count)) for i in range(count)]
        for i in valid:
            cos = min(1.0, max(-1.0, projections[i]))
            theta = math.acos(cos)
            if theta < tol:
                continue
            factor = weight[i] * theta / math.sin(theta)
            tangent[i] += factor
            for j in range(count):
                tangent[j] -= factor * cos * mean[j]
        tangent_norm = math.sqrt(max(dot(tangent, tangent), 0.0))
        if tangent_norm < tol:
            break
        c, s = math.cos(tangent_norm), math.sin(tangent_norm) / tangent_norm
        mean = [c * m + s * t for m, t in zip(mean, tangent, strict=True)]
        unit_norm = math.sqrt(max(dot(mean, mean), 0.0))
        if unit_norm > tol:
            mean = [m / unit_norm for m in mean]
    return mean

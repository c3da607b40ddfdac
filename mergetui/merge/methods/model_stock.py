"""Model Stock: move the average of the fine-tunes toward the base by how aligned they are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.merge.methods._common import CHUNK_ELEMENTS, vector_view

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def model_stock(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """d_i = x_i - base; cos = mean pairwise cosine of the d_i (of the whole tensors, or per row
    along the last dim with filter_wise); t = N cos / (1 + (N - 1) cos), t = 0 where the
    denominator is below 1e-6 in magnitude; out = t * mean(x_i) + (1 - t) * base.

    Pass 1 gathers each vector's Gram matrix of the d_i; pass 2 writes base + (t / N) sum d_i.
    """
    import torch

    base, others = ctx.inputs(tensors)
    assert base is not None
    mode = "last" if bool(ctx.shared_param("filter_wise")) else "flat"
    b, along = vector_view(base, mode)
    xs = [vector_view(tensors[i], mode)[0] for i in others]
    count = len(xs)
    rows, cols = b.shape
    # Gram matrices of the d_i: one for the flat tensor, or one per row with filter_wise.
    gram_rows = rows if along == 1 else 1
    gram = torch.zeros((gram_rows, count, count), dtype=base.dtype, device=base.device)
    chunk_rows = max(1, CHUNK_ELEMENTS // max(1, cols))
    block = torch.empty((count, min(rows, chunk_rows), cols), dtype=base.dtype, device=base.device)

    def load(r0: int, r1: int) -> torch.Tensor:
        deltas = block[:, : r1 - r0]
        for row, x in zip(deltas, xs, strict=True):
            torch.sub(x[r0:r1], b[r0:r1], out=row)
        return deltas

    for r0, r1 in ctx.row_chunks(rows, cols):
        deltas = load(r0, r1)
        if along == 1:  # [r, N, C] @ [r, C, N]: each row's Gram matrix
            gram[r0:r1] = torch.matmul(deltas.transpose(0, 1), deltas.permute(1, 2, 0))
        else:
            flat_deltas = deltas.reshape(count, -1)
            gram[0] += flat_deltas @ flat_deltas.T

    pairs = [(i, j) for i in range(count) for j in range(i, count)]
    stats = torch.stack([gram[:, i, j] for i, j in pairs]).unsqueeze(-1)  # [pairs, rows, 1]
    norms = {i: stats[pairs.index((i, i))].sqrt() for i in range(count)}
    cosines = [
        (stats[k] / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
        for k, (i, j) in enumerate(pairs)
        if i != j
    ]
    cos = torch.stack(cosines).mean(dim=0)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos), (count * cos) / safe)
    step = t / count  # out = base + (t / N) sum_i d_i

    out = ctx.output_buffer(base)
    out_view, _ = vector_view(out, mode)
    for r0, r1 in ctx.row_chunks(rows, cols):
        deltas = load(r0, r1)
        target = out_view[r0:r1]
        torch.sum(deltas, dim=0, out=target)
        target.mul_(step[r0:r1] if along == 1 else step).add_(b[r0:r1])
    return out

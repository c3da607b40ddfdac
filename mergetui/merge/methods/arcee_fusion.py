"""Arcee Fusion: take the other model's changes only where they matter most."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.merge.methods import _random
from mergetui.merge.methods._common import flat, vector_view

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext

QUANTILE_SAMPLE_SIZE = 1_000_000
_KL_EPS = 1e-8


def arcee_fusion(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """importance = |b - a| * KL(softmax(b) || softmax(a)) of each row (softmax over the last
    dim, +1e-8); threshold = median + 1.5 IQR of the importance, with quantiles read at index
    floor(q (n - 1)) of the sorted values (of 1M entries drawn with replacement when the tensor
    is larger); out = a + (b - a) [importance >= threshold] (a is the base).

    The importance is computed row chunk by row chunk into the output buffer, the quantiles are
    found by selection (no full sort), then the buffer is overwritten with the result.
    """
    import torch

    base, others = ctx.inputs(tensors)
    assert base is not None
    other = tensors[others[0]]
    out = ctx.output_buffer(base)
    if out.numel() == 0:
        return out
    a_rows, _ = vector_view(base, "last")
    b_rows, _ = vector_view(other, "last")
    importance, _ = vector_view(out, "last")
    rows, cols = a_rows.shape
    for r0, r1 in ctx.row_chunks(rows, cols):
        a, b = a_rows[r0:r1], b_rows[r0:r1]
        p = torch.softmax(b, dim=-1).add_(_KL_EPS)
        q = torch.softmax(a, dim=-1).add_(_KL_EPS)
        kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
        torch.sub(b, a, out=importance[r0:r1]).abs_().mul_(kl)

    values = out.view(-1)
    if values.numel() > QUANTILE_SAMPLE_SIZE:
        generator = torch.Generator(device=values.device)
        generator.manual_seed(_random.stream_key(ctx.seed, ctx.tensor_name, 0) >> 1)
        picks = torch.randint(
            values.numel(),
            (QUANTILE_SAMPLE_SIZE,),
            generator=generator,
            device=values.device,
        )
        values = values[picks]
    last = values.numel() - 1
    q1, median, q3 = (
        torch.kthvalue(values, index + 1).values
        for index in (last // 4, last // 2, (3 * last) // 4)
    )
    # In the tensor's dtype, step by step as mergekit does, so ties at the threshold agree.
    threshold = median + 1.5 * (q3 - q1)

    out_flat, a_flat, b_flat = out.view(-1), flat(base), flat(other)
    for start, end in ctx.chunks(out_flat.numel()):
        chunk = out_flat[start:end]
        torch.ge(chunk, threshold, out=chunk)  # float 0/1, in place of the importance
        a_chunk = a_flat[start:end]
        chunk.mul_(b_flat[start:end] - a_chunk).add_(a_chunk)  # a + (b - a) mask, as mergekit
    return out

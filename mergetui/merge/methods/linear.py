"""Linear merge (model soup): a weighted average of all inputs, the base being just another input."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.merge.methods._common import CHUNK_ELEMENTS, flat, normalized_weights

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def linear(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """sum(w_i x_i) / sum(w_i) (or the plain weighted sum when normalize is false).

    One pass over each input, chunk by chunk, accumulating into the output: the inputs are read
    once and no scaled copies are made. Dividing by the weight sum is folded into the weights.
    Inputs may be chunk sources (stored bf16 pieces upcast chunk by chunk: a quarter of the
    memory traffic of converting whole pieces to float32 first).
    """
    import torch

    weights = [float(ctx.model_param(i, "weight")) for i in range(len(tensors))]
    if bool(ctx.shared_param("normalize")):
        fix = "change the weights so they do not cancel out, or set normalize = false"
        weights = normalized_weights(ctx, weights, 1e-8, "normalising divides by zero", fix)

    first = tensors[0]
    out = ctx.output_buffer(first)
    out_flat, inputs = out.view(-1), [flat(t) for t in tensors]
    numel = out_flat.numel()
    # In the output dtype (the engine's ctx.out_dtype) each chunk is summed in the compute dtype
    # in a scratch buffer and rounded once as it is copied out.
    scratch = None
    if out.dtype != first.dtype:
        scratch = torch.empty(min(numel, CHUNK_ELEMENTS), dtype=first.dtype, device=first.device)
    for start, end in ctx.chunks(numel):
        chunk = out_flat[start:end] if scratch is None else scratch[: end - start]
        torch.mul(inputs[0][start:end], weights[0], out=chunk)
        for x, w in zip(inputs[1:], weights[1:], strict=True):
            chunk.add_(x[start:end], alpha=w)
        if scratch is not None:
            out_flat[start:end].copy_(chunk)
    return out

"""Linear merge (model soup): a weighted average of all inputs, the base being just another input."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.errors import UserError
from mergetui.merge.methods._common import (
    check_cancel,
    flat,
    model_param,
    output_buffer,
    shared_param,
    spans,
)

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def linear(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """sum(w_i x_i) / sum(w_i) (or the plain weighted sum when normalize is false).

    One pass over each input, chunk by chunk, accumulating into the output: the inputs are read
    once and no scaled copies are made. Dividing by the weight sum is folded into the weights.
    """
    import torch

    weights = [float(model_param(ctx, i, "weight")) for i in range(len(tensors))]
    if bool(shared_param(ctx, "normalize")):
        total = sum(weights)
        if abs(total) < 1e-8:
            raise UserError(
                f"the linear weights sum to {total:g}, so normalising divides by zero",
                where=ctx.tensor_name,
                fix="change the weights so they do not cancel out, or set normalize = false",
            )
        weights = [w / total for w in weights]

    first = tensors[0]
    out = output_buffer(ctx, first)
    out_flat, inputs = out.view(-1), [flat(t) for t in tensors]
    for start, end in spans(out_flat.numel()):
        check_cancel(ctx)
        chunk = out_flat[start:end]
        torch.mul(inputs[0][start:end], weights[0], out=chunk)
        for x, w in zip(inputs[1:], weights[1:], strict=True):
            chunk.add_(x[start:end], alpha=w)
    return out

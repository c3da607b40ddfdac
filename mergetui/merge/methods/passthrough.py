"""Passthrough: the single input as it is, optionally scaled (layer stacks, frankenmerges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def passthrough(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """The input unchanged when scale is None (no copy: the result aliases it), else input * scale."""
    ctx.inputs(tensors)
    scale = ctx.model_param(0, "scale")
    if scale is None:
        return tensors[0]
    import torch

    return torch.mul(tensors[0], float(scale), out=ctx.output_buffer(tensors[0]))

"""Passthrough: the single input as it is, optionally scaled (layer stacks, frankenmerges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.merge.methods._common import model_param, output_buffer, require_count

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


def passthrough(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """The input unchanged when scale is None (no copy: the result aliases it), else input * scale."""
    require_count(ctx, len(tensors), minimum=1, maximum=1, what="input per tensor")
    scale = model_param(ctx, 0, "scale")
    if scale is None:
        return tensors[0]
    import torch

    return torch.mul(tensors[0], float(scale), out=output_buffer(ctx, tensors[0]))

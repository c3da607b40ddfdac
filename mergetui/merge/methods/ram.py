"""RAM and RAM+ (tensor-local): keep each model's unique changes whole, average the shared ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergetui.merge.methods._common import CHUNK_ELEMENTS, flat

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext


class _Deltas:
    """Chunks of the task vectors tau_i = x_i - base, with |tau_i| > epsilon marking a change."""

    def __init__(self, tensors: list[torch.Tensor], ctx: MethodContext) -> None:
        import torch

        base, others = ctx.inputs(tensors)
        assert base is not None
        self.base = base
        self.base_flat = flat(base)
        self.xs = [flat(tensors[i]) for i in others]
        self.numel = self.base_flat.numel()
        self.epsilon = float(ctx.shared_param("epsilon"))
        self._block = torch.empty(
            (len(self.xs), min(self.numel, CHUNK_ELEMENTS)), dtype=base.dtype, device=base.device
        )

    def load(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tau with non-changes zeroed, change mask, number of models changing each entry)."""
        import torch

        deltas = self._block[:, : end - start]
        for row, x in zip(deltas, self.xs, strict=True):
            torch.sub(x[start:end], self.base_flat[start:end], out=row)
        # Float 0/1 masks: comparisons writing bool are several times slower on the CPU.
        changed = deltas.abs()
        changed = torch.gt(changed, self.epsilon, out=changed)
        deltas.mul_(changed)
        return deltas, changed, changed.sum(dim=0)


def ram(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """base + sum_i tau_i [|tau_i| > eps] / max(1, number of models changing the entry).

    That is mergekit's unique-plus-averaged-overlap sum: where one model changes an entry the
    divisor is 1, where several do it is their count.
    """
    import torch

    if len(tensors) == 1:
        return tensors[0]
    data = _Deltas(tensors, ctx)
    out = ctx.output_buffer(data.base)
    out_flat = out.view(-1)
    for start, end in ctx.chunks(data.numel):
        deltas, _, counts = data.load(start, end)
        merged = deltas.sum(dim=0).div_(counts.clamp_(min=1))
        torch.add(data.base_flat[start:end], merged, out=out_flat[start:end])
    return out


def ramplus_tl(tensors: list[torch.Tensor], ctx: MethodContext) -> torch.Tensor:
    """RAM with each model's unique changes scaled by lambda_i = 1 + r clamp(rho_i, 0, alpha),
    rho_i = (entries model i shares with others) / max(entries only model i changes, eps).

    Pass 1 counts shared and unique entries per model; pass 2 writes the merge.
    """
    import torch

    if len(tensors) == 1:
        return tensors[0]
    data = _Deltas(tensors, ctx)
    r = float(ctx.shared_param("r"))
    alpha = float(ctx.shared_param("alpha"))
    count = len(data.xs)
    shared_counts = torch.zeros(count, dtype=torch.float64, device=data.base.device)
    unique_counts = torch.zeros(count, dtype=torch.float64, device=data.base.device)
    for start, end in ctx.chunks(data.numel):
        _, changed, counts = data.load(start, end)
        unique = torch.eq(counts, 1, out=torch.empty_like(counts))
        in_unique = changed @ unique
        unique_counts += in_unique
        shared_counts += changed.sum(dim=1) - in_unique
    rho = (shared_counts / unique_counts.clamp(min=data.epsilon)).float()
    lambdas = (1 + r * rho.clamp(min=0, max=alpha)).to(data.base.dtype).unsqueeze(1)

    out = ctx.output_buffer(data.base)
    out_flat = out.view(-1)
    for start, end in ctx.chunks(data.numel):
        deltas, _, counts = data.load(start, end)
        unique = torch.eq(counts, 1, out=torch.empty_like(counts))
        averaged = deltas.sum(dim=0).div_(counts.clamp_(min=1))
        boosted = (deltas * lambdas).sum(dim=0)
        merged = averaged.add_(boosted.sub_(averaged).mul_(unique))  # boosted where unique
        torch.add(data.base_flat[start:end], merged, out=out_flat[start:end])
    return out

"""One piece of an output tensor, computed: what a compute worker does between reader and writer.

The inputs arrive on the CPU (converted to float32 by the reader, or as stored); they go to the
device in the compute dtype (or as chunk sources, for a method that reads chunks), the method runs,
and the result comes back contiguous on the CPU in the output dtype, in a pooled buffer where one
can hold it. Input buffers go back to the pool as soon as the method is done with them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mergetui.errors import UserError
from mergetui.merge.budgets import BufferPool
from mergetui.merge.methods._common import STREAMED
from mergetui.merge.work import FROM_FILE, STORED, WHOLE, Piece

if TYPE_CHECKING:
    import torch

    from mergetui.merge.plan import Plan
    from mergetui.merge.plan_tensors import PlannedTensor

# A finished piece: the CPU tensor, with the pooled buffer it lives in (to recycle once written).
Result = tuple["torch.Tensor", "torch.Tensor | None"]


def compute_dtype(tensor: PlannedTensor) -> torch.dtype:
    """float32, or float64 when an input is stored in float64 (as mergekit computes)."""
    import torch

    wide = any(source.dtype == "F64" for source in tensor.inputs)
    return torch.float64 if wide else torch.float32


def compute_piece(
    plan: Plan,
    piece: Piece,
    data: list[tuple[torch.Tensor, torch.Tensor | None]],
    method: Callable[..., torch.Tensor],
    device: torch.device,
    cancel: threading.Event | None,
    mode: str = WHOLE,
    pool: BufferPool | None = None,
    sink: Callable[[int, torch.Tensor], None] | None = None,
) -> Result | None:
    """One piece of an output tensor, contiguous on the CPU in its output dtype, with the pooled
    buffer holding it (to recycle once written) or None; None when the method sent its output to
    `sink` chunk by chunk instead.

    Takes ownership of `data` (emptied here): the input buffers go back to the pool as soon as
    the method is done with them, except one the result still lives in.
    """
    from mergetui.dtypes import torch_dtype

    tensor = piece.tensor
    values = [value for value, _ in data]
    output = _Output(torch_dtype(tensor.dtype), [buffer for _, buffer in data], pool)
    data.clear()
    if tensor.copy_only:
        _check_buffers_agree(tensor, values)
        return output.finish(values[0].contiguous())
    if piece.fast_copy:
        return output.finish(values[0].contiguous())
    inputs = _method_inputs(values, tensor, mode, device)
    values.clear()
    ctx = _context(plan, tensor, cancel, device, None if mode == WHOLE else output.dtype, sink)
    expected = tensor.shape if piece.whole else (piece.numel,)
    return _run_method(plan.method, method, inputs, ctx, expected, output)


def method_output(
    plan: Plan,
    tensor: PlannedTensor,
    values: list[torch.Tensor],
    method: Callable[..., torch.Tensor],
    device: torch.device,
    *,
    mode: str = WHOLE,
    out: torch.Tensor | None = None,
    cancel: threading.Event | None = None,
) -> torch.Tensor:
    """One whole output tensor as `compute_piece` computes it, left on the device in the output
    dtype: for a search, which merges candidates in memory into a resident model.

    `values` are the inputs as stored, on the device (a method that reads chunks gets them as
    chunk sources with `mode=STORED`, as the engine does); `out`, the place the result should
    land (a resident parameter), is used when the method can write there directly. The result
    is the same tensor, bit for bit, that the merge writes to disk.
    """
    import torch

    from mergetui.dtypes import torch_dtype

    if tensor.copy_only:
        _check_buffers_agree(tensor, values)
        return values[0]
    dtype = torch_dtype(tensor.dtype)
    inputs = _method_inputs(list(values), tensor, mode, device)
    ctx = _context(plan, tensor, cancel, device, None if mode == WHOLE else dtype, None)
    ctx.out = out
    with torch.inference_mode():
        result = method(inputs, ctx)
    inputs.clear()
    if tuple(result.shape) != tuple(tensor.shape):
        raise RuntimeError(
            f"method {plan.method} returned shape {tuple(result.shape)} for {tensor.name}, "
            f"expected {tuple(tensor.shape)}"
        )
    return result if result.dtype == dtype else result.to(dtype)


class _Output:
    """The piece's input buffers, and how its result lands in the output dtype on the CPU."""

    def __init__(
        self, dtype: torch.dtype, buffers: list[torch.Tensor | None], pool: BufferPool | None
    ) -> None:
        self.dtype = dtype
        self._buffers = buffers
        self._pool = pool

    def recycle(self, result: torch.Tensor | None) -> torch.Tensor | None:
        """Give the input buffers back to the pool, but the one `result` lives in (returned)."""
        held = None
        result_storage = -1
        if result is not None and result.device.type == "cpu":
            result_storage = result.untyped_storage().data_ptr()
        for buffer in self._buffers:
            if buffer is not None and buffer.untyped_storage().data_ptr() == result_storage:
                held = buffer
            elif self._pool is not None:
                self._pool.give(buffer)
        self._buffers.clear()
        return held

    def finish(self, result: torch.Tensor) -> Result:
        """Recycle the input buffers the result does not live in; cast into a pooled buffer."""
        import torch

        held = self.recycle(result)
        if result.dtype == self.dtype and result.device.type == "cpu" and result.is_contiguous():
            return result, held
        nbytes = result.numel() * torch.empty((), dtype=self.dtype).element_size()
        pool = self._pool
        target = pool.take(nbytes) if pool is not None else torch.empty(nbytes, dtype=torch.uint8)
        cast = target.view(self.dtype).view(result.shape)
        cast.copy_(result)
        if held is not None and pool is not None:
            pool.give(held)
        return cast, target


def _check_buffers_agree(tensor: PlannedTensor, values: list[torch.Tensor]) -> None:
    """A non-floating buffer is copied, never averaged: every model must hold the same one."""
    import torch

    first = values[0]
    for other, source in zip(values[1:], tensor.inputs[1:], strict=True):
        if not torch.equal(first, other):
            raise UserError(
                f"the non-floating buffer {tensor.name} differs between "
                f"{tensor.inputs[0].model!r} and {source.model!r}; it cannot be averaged",
                where=tensor.name,
                fix="merge models whose integer buffers agree",
            )


def _method_inputs(
    values: list[torch.Tensor], tensor: PlannedTensor, mode: str, device: torch.device
) -> list[Any]:
    """The inputs as the method takes them: chunk sources, or whole tensors on the device."""
    dtype = compute_dtype(tensor)
    if mode == FROM_FILE:
        return list(values)
    if mode == STORED:
        from mergetui.merge.chunked import StoredSource

        return [StoredSource(v.to(device=device), dtype) for v in values]
    return [v.to(device=device, dtype=dtype, non_blocking=True) for v in values]


def _context(
    plan: Plan,
    tensor: PlannedTensor,
    cancel: threading.Event | None,
    device: torch.device,
    out_dtype: torch.dtype | None,
    sink: Callable[[int, torch.Tensor], None] | None,
) -> Any:
    from mergetui.merge.methods import MethodContext

    return MethodContext(
        method=plan.method,
        tensor_name=tensor.name,
        base_index=tensor.base_index,
        shared=dict(tensor.shared),
        per_model=[dict(p) for p in tensor.per_model],
        seed=plan.seed,
        cancel=cancel,
        device=device,
        input_names=[i.model for i in tensor.inputs],
        out_dtype=out_dtype,
        sink=sink,
    )


def _run_method(
    name: str,
    method: Callable[..., torch.Tensor],
    inputs: list[Any],
    ctx: Any,
    expected: tuple[int, ...],
    output: _Output,
) -> Result | None:
    """Run the method on the inputs (emptied once it is done) and land its result."""
    import torch

    with torch.inference_mode():
        result = method(inputs, ctx)
        inputs.clear()
        if result is STREAMED:
            output.recycle(None)
            return None
        if tuple(result.shape) != tuple(expected):
            raise RuntimeError(
                f"method {name} returned shape {tuple(result.shape)} for {ctx.tensor_name}, "
                f"expected {tuple(expected)}"
            )
        if result.device.type != "cpu":
            result = result.to(dtype=output.dtype).to("cpu")
        return output.finish(result.contiguous())

"""Small helpers every method family shares: parameters, base handling, chunking, cancellation.

Chunking is how the methods stay fast and small: element-wise work runs over slices of 128K
elements, so the temporaries of one step stay in cache and no method ever stacks N full-size
copies of a tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mergetui.errors import CancelledError, UserError

if TYPE_CHECKING:
    import torch

    from mergetui.merge.methods import MethodContext

# Elements per chunk of element-wise work (512 KiB of float32, one core's L2 on the development
# machine): small enough for a step's temporaries to stay in cache, big enough that Python's cost
# per chunk stays small. Measured on TIES of 245M parameters: 1<<17 beat 1<<16, 1<<18 and 1<<20.
CHUNK_ELEMENTS = 1 << 17


def check_cancel(ctx: MethodContext) -> None:
    """Stop long work promptly when the user cancels."""
    if ctx.cancel is not None and ctx.cancel.is_set():
        raise CancelledError(f"cancelled while merging {ctx.tensor_name}")


def input_label(ctx: MethodContext, index: int) -> str:
    """How an error names an input: its model name when the engine gave one."""
    if ctx.input_names is not None and index < len(ctx.input_names):
        return repr(ctx.input_names[index])
    return f"input #{index + 1}"


def _spec(ctx: MethodContext, name: str) -> Any:
    from mergetui.recipe.methods import METHODS

    spec = METHODS.get(ctx.method)
    return spec.param(name) if spec is not None else None


def _spec_default(ctx: MethodContext, name: str) -> Any:
    param = _spec(ctx, name)
    if param is None or param.required:
        raise UserError(
            f"the {ctx.method} method needs the parameter {name!r}",
            where=ctx.tensor_name,
            fix=f"set {name} in the recipe's parameters",
        )
    return param.default


def _given(ctx: MethodContext, values: dict[str, Any], name: str) -> bool:
    """Whether `values` sets `name`: None counts only for nullable parameters (passthrough's scale)."""
    if name not in values:
        return False
    if values[name] is not None:
        return True
    param = _spec(ctx, name)
    return bool(param is not None and param.nullable)


def shared_param(ctx: MethodContext, name: str) -> Any:
    """A shared parameter, falling back to the spec default when the caller left it out."""
    if _given(ctx, ctx.shared, name):
        return ctx.shared[name]
    return _spec_default(ctx, name)


def model_param(ctx: MethodContext, index: int, name: str) -> Any:
    """A per-model parameter of input `index`, falling back to the spec default."""
    values = ctx.per_model[index] if index < len(ctx.per_model) else {}
    if _given(ctx, values, name):
        return values[name]
    try:
        return _spec_default(ctx, name)
    except UserError:
        raise UserError(
            f"the {ctx.method} method needs the parameter {name!r} for {input_label(ctx, index)}",
            where=ctx.tensor_name,
            fix=f"set {name} for that model (or at the top level of the recipe)",
        ) from None


def split_base(
    tensors: list[torch.Tensor], ctx: MethodContext, *, required: bool
) -> tuple[torch.Tensor | None, list[int]]:
    """The base tensor (or None) and the indices of the other inputs, in input order."""
    base_index = ctx.base_index
    if base_index is None:
        if required:
            raise UserError(
                f"the {ctx.method} method needs a base model",
                where=ctx.tensor_name,
                fix="set merge.base to one of the models",
            )
        return None, list(range(len(tensors)))
    if not 0 <= base_index < len(tensors):
        raise UserError(
            f"base index {base_index} is out of range for {len(tensors)} inputs",
            where=ctx.tensor_name,
        )
    return tensors[base_index], [i for i in range(len(tensors)) if i != base_index]


def require_count(
    ctx: MethodContext, count: int, *, minimum: int, maximum: int | None, what: str
) -> None:
    """Input-count checks with a message a person can act on."""
    if count < minimum or (maximum is not None and count > maximum):
        if maximum == minimum:
            wanted = f"exactly {minimum}"
        elif maximum is None:
            wanted = f"at least {minimum}"
        else:
            wanted = f"{minimum} to {maximum}"
        raise UserError(
            f"the {ctx.method} method needs {wanted} {what}, got {count}",
            where=ctx.tensor_name,
            fix="change the models listed in the recipe",
        )


def flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view (a copy only for non-contiguous inputs)."""
    return tensor.reshape(-1)


def spans(total: int, step: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    """Consecutive [start, end) ranges covering `total` items."""
    for start in range(0, total, step):
        yield start, min(total, start + step)


def rows_view(tensor: torch.Tensor, rowwise_dim: int | None) -> torch.Tensor:
    """A 2-D [rows, n] view whose rows are the vectors a per-vector method works on.

    rowwise_dim None: the whole tensor is one vector; -1: vectors run along the last dim; 0:
    vectors run along the first dim (the rows of the view are then the transposed columns).
    """
    if rowwise_dim is None or tensor.dim() < 2:
        return tensor.reshape(1, -1)
    if rowwise_dim == -1:
        return tensor.reshape(-1, tensor.shape[-1])
    return tensor.movedim(0, -1).reshape(-1, tensor.shape[0])


def row_spans(rows: int, cols: int) -> Iterator[tuple[int, int]]:
    """Row ranges of about CHUNK_ELEMENTS elements each (at least one row)."""
    return spans(rows, max(1, CHUNK_ELEMENTS // max(1, cols)))


def vector_view(tensor: torch.Tensor, mode: str) -> tuple[torch.Tensor, int]:
    """A 2-D view of `tensor` and the dim its vectors run along (1: rows, 0: columns).

    mode "flat": the whole tensor is one vector (a column of a [numel, 1] view, so it can still be
    walked in row chunks); "last": vectors along the last dim (1-D tensors are one vector);
    "first": vectors along the first dim. Row chunks of the view are cache-friendly either way.
    """
    if mode == "flat":
        return tensor.reshape(-1, 1), 0
    if tensor.dim() < 2:
        return tensor.reshape(1, -1), 1
    if mode == "last":
        return tensor.reshape(-1, tensor.shape[-1]), 1
    if mode == "first":
        return tensor.reshape(tensor.shape[0], -1), 0
    raise ValueError(mode)


def vector_sums(rows: torch.Tensor, along: int) -> torch.Tensor:
    """Sum of a chunk along the vector dim, keeping the dim (partial sums when along == 0)."""
    return rows.sum(dim=along, keepdim=True)


def output_buffer(ctx: MethodContext, like: torch.Tensor) -> torch.Tensor:
    """Where a method writes its result: the engine's reusable `ctx.out` when it fits, else new.

    Writing into fresh memory costs a page fault per 4 KiB page (about 0.1 s per 128 MiB on the
    development machine: a third of a SLERP), which an engine that reuses one buffer avoids.
    """
    import torch

    dtype = ctx.out_dtype or like.dtype
    out = ctx.out
    if (
        out is not None
        and tuple(out.shape) == tuple(like.shape)
        and out.dtype == dtype
        and out.device == like.device
        and out.is_contiguous()
    ):
        return out
    return torch.empty(tuple(like.shape), dtype=dtype, device=like.device)


class _Streamed:
    """What a method returns when its whole output went to `ctx.sink`."""

    def __repr__(self) -> str:
        return "STREAMED"


STREAMED = _Streamed()


class OutputChunks:
    """A method's output written chunk by chunk, in flat order.

    Without `ctx.sink`: the chunks are views of one output tensor (`output_buffer`), and `result`
    returns it. With a sink: each chunk is a fresh tensor handed to the sink once the method asks
    for the next one (or for the result), and `result` returns STREAMED. Either way the method
    fills `chunk(start, end)` completely before asking for another.
    """

    def __init__(self, ctx: MethodContext, like: torch.Tensor) -> None:
        self._sink = ctx.sink
        self._device = like.device
        self.dtype = ctx.out_dtype or like.dtype
        self._pending: tuple[int, torch.Tensor] | None = None
        self._whole = None if self._sink is not None else output_buffer(ctx, like)

    def chunk(self, start: int, end: int) -> torch.Tensor:
        """The flat elements [start, end) of the output, to be written in place."""
        import torch

        self._flush()
        if self._whole is not None:
            return self._whole.view(-1)[start:end]
        chunk = torch.empty(end - start, dtype=self.dtype, device=self._device)
        self._pending = (start, chunk)
        return chunk

    def _flush(self) -> None:
        if self._pending is not None:
            start, chunk = self._pending
            self._pending = None
            assert self._sink is not None
            self._sink(start, chunk)

    def result(self) -> Any:
        """The output tensor, or STREAMED once every chunk went to the sink."""
        self._flush()
        return self._whole if self._whole is not None else STREAMED

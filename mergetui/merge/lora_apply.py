"""A LoRA adapter applied to an input tensor as it is read, so no merged copy of the model is made.

The planner attaches to a `PlannedInput` the adapter's piece for that tensor (`PlannedInput.lora`):
a `LoraModule` (add scale * B @ A) or a `TensorInfo` (a modules_to_save tensor that replaces it).
Every read of an input's elements (a whole tensor, a piece of an element-wise merge, a chunk a
method asks the file for) passes through `apply_lora` with the first element's index, so the
update is computed only for the rows those elements cover.

The arithmetic is PEFT's `merge_and_unload`, which mergekit 0.1.5 runs on a `base+adapter`
reference: the update in float32 (A and B upcast), added to the weight upcast to float32, the sum
rounded once to the weight's dtype. A replacement tensor is cast to the weight's dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mergetui.checkpoints.lora import LoraModule
    from mergetui.checkpoints.safetensors_io import TensorInfo
    from mergetui.merge.reader import TensorReader


def apply_lora(
    reader: TensorReader, source: Any, value: torch.Tensor, start: int, *, in_place: bool
) -> torch.Tensor:
    """`value` (elements [start, start + numel) of `source`'s tensor, as stored) with the
    adapter's change; unchanged when `source.lora` is None. `in_place`: write the result into
    `value` (a buffer the caller owns) rather than into a new tensor."""
    from mergetui.checkpoints.safetensors_io import TensorInfo

    patch = getattr(source, "lora", None)
    if patch is None:
        return value
    flat = value.reshape(-1)
    stop = start + flat.numel()
    if isinstance(patch, TensorInfo):
        new = _read_range(reader, patch, start, stop).to(value.dtype)
    else:
        new = _updated(reader, patch, flat, start, stop, tuple(source.shape))
    if in_place and value.is_contiguous():
        flat.copy_(new)
        return value
    return new.reshape(value.shape)


def _updated(
    reader: TensorReader,
    module: LoraModule,
    flat: torch.Tensor,
    start: int,
    stop: int,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """W + scale * B @ A over the elements [start, stop) of W, rounded once to W's dtype."""
    import torch

    if module.base is not None:  # the adapter's own copy of the weight (saved embeddings)
        flat = _read_range(reader, module.base, start, stop).to(flat.dtype)
    cols = shape[1]
    first, last = start // cols, -(-stop // cols)
    a = _read_whole(reader, module.a).to(torch.float32)
    b = _read_whole(reader, module.b).to(torch.float32)
    if module.transposed:  # stored rows are columns of B @ A
        delta = (b @ a[:, first:last]).T * module.scale
    else:
        delta = (b[first:last] @ a) * module.scale
    offset = start - first * cols
    delta = delta.reshape(-1)[offset : offset + (stop - start)]
    return (flat.to(torch.float32) + delta).to(flat.dtype)


def _read_whole(reader: TensorReader, info: TensorInfo) -> torch.Tensor:
    return reader.read(info.file, info.offset, info.nbytes, info.dtype, info.shape, info.name)


def _read_range(reader: TensorReader, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
    """Elements [start, stop) of a stored tensor, flat."""
    if info.offset < 0:  # a pickled adapter: the whole tensor, then the range
        return _read_whole(reader, info).reshape(-1)[start:stop]
    itemsize = info.nbytes // info.numel if info.numel else 0
    return reader.read(
        info.file,
        info.offset + start * itemsize,
        (stop - start) * itemsize,
        info.dtype,
        (stop - start,),
        info.name,
    )

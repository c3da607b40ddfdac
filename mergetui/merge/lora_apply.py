"""A LoRA adapter applied to an input tensor as it is read, so no merged copy of the model is made.

The planner attaches to a `PlannedInput` the adapter's piece for that tensor (`PlannedInput.lora`):
a `LoraModule` (add scale * B @ A; a tied embedding may take a second one, its head's, after the
first is rounded), a `LoraBias` (add scale * lora_B.bias to the layer's bias) or a `TensorInfo` (a
modules_to_save tensor that replaces it).
Every read of an input's elements (a whole tensor, a piece of an element-wise merge, a chunk a
method asks the file for) passes through `apply_lora` with the first element's index, so the
update is computed only for the rows those elements cover.

The arithmetic is PEFT's `merge_and_unload`, which mergekit 0.1.5 runs on a `base+adapter`
reference: the update in float32 (A and B upcast), added to the weight upcast to float32, the sum
rounded once to the weight's dtype (a bias alike; an embedding's update is rounded to that dtype
before it is added, as PEFT's Embedding.merge does); PEFT merges two updates of one tied weight
one after the other, so the second is added to the first's rounded sum. A replacement tensor is
cast to the weight's dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mergetui.checkpoints.lora import LoraModule
    from mergetui.checkpoints.safetensors_io import TensorInfo
    from mergetui.merge.reader import TensorReader


# Elements updated at a time: the float32 update and sum of one block are all the extra memory
# an adapter costs, whatever the size of the piece or tensor being read (4 MB each in float32).
BLOCK_ELEMENTS = 1 << 20


def apply_lora(
    reader: TensorReader, source: Any, value: torch.Tensor, start: int, *, in_place: bool
) -> torch.Tensor:
    """`value` (elements [start, start + numel) of `source`'s tensor, as stored) with the
    adapter's change; unchanged when `source.lora` is None. `in_place`: write the result into
    `value` (a buffer the caller owns) rather than into a new tensor of its dtype."""
    import torch

    from mergetui.checkpoints.lora import LoraBias
    from mergetui.checkpoints.safetensors_io import TensorInfo

    patch = getattr(source, "lora", None)
    if patch is None:
        return value
    flat = value.reshape(-1)
    if in_place and value.is_contiguous():
        out = flat
    else:
        out = torch.empty_like(flat)
    steps: list[tuple[LoraModule, tuple[torch.Tensor, torch.Tensor]]] = []
    if not isinstance(patch, TensorInfo):
        module: LoraModule | None = patch
        while module is not None:
            a = _read_whole(reader, module.a).to(torch.float32)
            b = _read_whole(reader, module.b).to(torch.float32)
            steps.append((module, (a, b)))
            module = module.then
    for first in range(0, flat.numel(), BLOCK_ELEMENTS):
        last = min(flat.numel(), first + BLOCK_ELEMENTS)
        begin, end = start + first, start + last
        if isinstance(patch, LoraBias):  # lora_bias: the layer's bias + scale * lora_B.bias
            update = _read_range(reader, patch, begin, end).to(torch.float32) * patch.scale
            out[first:last] = (flat[first:last].to(torch.float32) + update).to(flat.dtype)
            continue
        if isinstance(patch, TensorInfo):  # modules_to_save: the adapter's, in the weight's dtype
            out[first:last] = _read_range(reader, patch, begin, end).to(flat.dtype)
            continue
        weight = flat[first:last]
        if patch.base is not None:  # the adapter's own copy of the weight (saved embeddings)
            weight = _read_range(reader, patch.base, begin, end).to(flat.dtype)
        for module, factors in steps:  # one rounding per update, as PEFT merges them
            delta = _delta(module, factors, begin, end, tuple(source.shape))
            if module.embedding:  # Embedding.merge adds the update cast to the weight's dtype
                delta = delta.to(flat.dtype).to(torch.float32)
            weight = (weight.to(torch.float32) + delta).to(flat.dtype)
        out[first:last] = weight
    return value if out is flat else out.reshape(value.shape)


def _delta(
    module: LoraModule,
    factors: tuple[torch.Tensor, torch.Tensor],
    start: int,
    stop: int,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """scale * B @ A (transposed where the module says so) over the elements [start, stop) of the
    weight, flat, in float32: only the rows those elements cover are multiplied."""
    a, b = factors
    cols = shape[1]
    first, last = start // cols, -(-stop // cols)
    if module.transposed:  # stored rows are columns of B @ A
        delta = (b @ a[:, first:last]).T * module.scale
    else:
        delta = (b[first:last] @ a) * module.scale
    offset = start - first * cols
    return delta.reshape(-1)[offset : offset + (stop - start)]


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

"""Inputs a method reads chunk by chunk, so no whole input ever exists in float32.

A method that declares `reads_chunks = True` (slerp, the task-vector family but DELLA) touches its
inputs only through `numel()`, `shape`, `dtype`, `device`, `reshape(-1)` and slices of the flat
tensor `x[start:end]`, which come back in the compute dtype (float32; float64 for F64 inputs) on
the device. The engine then hands it one of two sources per input:

- `StoredSource`: the tensor read whole but kept as stored (bf16: half of float32), each slice
  upcast on demand;
- `FileSource`: nothing held at all; each slice is read from the checkpoint file when asked for
  (through the page cache, which the reader thread warms with `posix_fadvise(WILLNEED)`). Used for
  the largest tensors (embeddings, lm_head), where even the stored copies would dominate the peak.

Plain tensors work too (the formula tests call methods with them), as they have the same surface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mergetui.merge.reader import TensorReader


class _Source(ABC):
    """What `StoredSource` and `FileSource` share: the tensor-like surface methods rely on."""

    def __init__(
        self, shape: tuple[int, ...], compute_dtype: torch.dtype, device: torch.device
    ) -> None:
        self.shape = tuple(shape)
        self.dtype = compute_dtype
        self.device = device
        self._numel = 1
        for dim in self.shape:
            self._numel *= int(dim)

    def numel(self) -> int:
        return self._numel

    def dim(self) -> int:
        return len(self.shape)

    def reshape(self, *shape: Any) -> _Source:
        wanted = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if tuple(wanted) not in ((-1,), (self._numel,)):
            raise TypeError("chunked inputs only offer their flat view")
        return self

    def __getitem__(self, key: slice) -> torch.Tensor:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("chunked inputs only offer contiguous slices of the flat view")
        start, stop, _ = key.indices(self._numel)
        return self._chunk(start, max(start, stop))

    @abstractmethod
    def _chunk(self, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flat input, in the compute dtype, on the device."""

    @abstractmethod
    def raw(self, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) as stored (bf16 stays bf16), on the device: for an operation
        with a compute-dtype operand, which upcasts them exactly as `_chunk` would, in one pass."""

    def materialize(self) -> torch.Tensor:
        """The whole input in the compute dtype (for the rare path that needs all of it)."""
        return self._chunk(0, self._numel).reshape(self.shape)


class StoredSource(_Source):
    """An input held as stored; slices are upcast when asked for."""

    def __init__(self, stored: torch.Tensor, compute_dtype: torch.dtype) -> None:
        super().__init__(tuple(stored.shape), compute_dtype, stored.device)
        self._flat = stored.reshape(-1)

    def _chunk(self, start: int, stop: int) -> torch.Tensor:
        return self._flat[start:stop].to(self.dtype)

    def raw(self, start: int, stop: int) -> torch.Tensor:
        return self._flat[start:stop]


class FileSource(_Source):
    """An input left in its file; each slice is read (pread) and upcast when asked for."""

    def __init__(
        self,
        reader: TensorReader,
        source: Any,  # mergetui.merge.plan_tensors.PlannedInput
        compute_dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(tuple(source.shape), compute_dtype, device)
        self._reader = reader
        self._source = source
        self._itemsize = source.nbytes // source.numel if source.numel else 0

    def _chunk(self, start: int, stop: int) -> torch.Tensor:
        # A fresh buffer per read, so the chunk never aliases one handed out before.
        return self.raw(start, stop).to(dtype=self.dtype)

    def raw(self, start: int, stop: int) -> torch.Tensor:
        source = self._source
        count = stop - start
        stored = self._reader.read(
            source.file,
            source.offset + start * self._itemsize,
            count * self._itemsize,
            source.dtype,
            (count,),
            source.tensor,
        )
        if source.lora is not None:  # a LoRA adapter's change, as the elements are read
            from mergetui.merge.lora_apply import apply_lora

            stored = apply_lora(self._reader, source, stored, start, in_place=True)
        return stored.to(device=self.device)


def is_chunked(value: Any) -> bool:
    return isinstance(value, _Source)


def raw_slice(value: Any, start: int, stop: int) -> torch.Tensor:
    """Elements [start, stop) of a flat input as stored (a plain tensor: a view of it)."""
    return value.raw(start, stop) if is_chunked(value) else value[start:stop]


def whole(value: Any) -> torch.Tensor:
    """A full copy of an input in the compute dtype, whichever form it came in."""
    return value.materialize() if is_chunked(value) else value.clone()

"""The streaming writer: every shard's header first, then each tensor straight to its offset.

Because the plan knows every output tensor's name, dtype and shape before anything is computed, each
shard's safetensors header (and so every tensor's byte range) is fixed up front. A finished tensor is
written with `pwrite` at its place and dropped: no whole-model or whole-shard buffer ever exists.

The layout half of this module is plain Python (the plan uses it without torch); only
`ShardSetWriter.write` touches tensors.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mergetui.dtypes import DTYPE_SIZES
from mergetui.errors import UserError
from mergetui.formatting import human_bytes
from mergetui.merge.reader import close_fds

if TYPE_CHECKING:
    import torch

SINGLE_FILE_NAME = "model.safetensors"
INDEX_FILE_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = 5_000_000_000  # mergekit's and transformers' 5GB (decimal)


@dataclass(frozen=True)
class TensorSlot:
    """One output tensor's place: which shard, where its bytes begin and end in that file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    shard: int = -1
    begin: int = 0  # absolute file offsets
    end: int = 0


@dataclass
class ShardLayout:
    """One output file: its tensors in file order and the exact header that precedes them."""

    index: int
    filename: str
    slots: list[TensorSlot]
    header: bytes
    data_bytes: int

    @property
    def file_size(self) -> int:
        return 8 + len(self.header) + self.data_bytes


@dataclass
class OutputLayout:
    """All shards of one output, and where each tensor goes."""

    shards: list[ShardLayout]
    slots: dict[str, TensorSlot] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(s.data_bytes for s in self.shards)

    @property
    def filenames(self) -> list[str]:
        return [s.filename for s in self.shards]

    def weight_map(self) -> dict[str, str]:
        return {name: self.shards[slot.shard].filename for name, slot in self.slots.items()}


def tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * DTYPE_SIZES[dtype]


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB', '1e9' or a plain number of bytes -> bytes (decimal units, like HF)."""
    if isinstance(text, int):
        value = text
    else:
        raw = str(text).strip().upper().replace(" ", "")
        units = {
            "KIB": 1024,
            "MIB": 1024**2,
            "GIB": 1024**3,
            "TIB": 1024**4,
            "KB": 1000,
            "MB": 1000**2,
            "GB": 1000**3,
            "TB": 1000**4,
            "K": 1000,
            "M": 1000**2,
            "G": 1000**3,
            "T": 1000**4,
            "B": 1,
        }
        factor = 1
        for suffix, mult in units.items():
            if raw.endswith(suffix):
                raw = raw[: -len(suffix)]
                factor = mult
                break
        try:
            value = int(float(raw) * factor)
        except ValueError:
            raise UserError(
                f"cannot read the size {text!r}",
                where="--shard-size",
                fix="write it like 5GB, 500MB or 2GiB",
            ) from None
    if value <= 0:
        raise UserError(f"the shard size must be positive, got {text!r}", where="--shard-size")
    return value


def layout_output(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]],
    max_shard_size: int = DEFAULT_SHARD_SIZE,
    metadata: dict[str, str] | None = None,
) -> OutputLayout:
    """Split (name, dtype, shape) in plan order into shards of at most max_shard_size data bytes.

    Like mergekit and transformers, a shard is closed when the next tensor would overflow it (a
    single tensor larger than the limit gets a shard of its own). Inside a shard, tensors are laid
    out by alignment (widest dtype first), keeping plan order otherwise, so every tensor starts at a
    multiple of its element size, as safetensors' own writer does.
    """
    groups: list[list[TensorSlot]] = []
    current: list[TensorSlot] = []
    current_size = 0
    seen: set[str] = set()
    for name, dtype, shape in tensors:
        if name in seen:
            raise ValueError(f"duplicate output tensor {name}")
        seen.add(name)
        if dtype not in DTYPE_SIZES:
            raise UserError(f"unsupported tensor dtype {dtype}", where=name)
        nbytes = tensor_nbytes(dtype, shape)
        if current and current_size + nbytes > max_shard_size:
            groups.append(current)
            current, current_size = [], 0
        current.append(TensorSlot(name, dtype, tuple(int(d) for d in shape), nbytes))
        current_size += nbytes
    if current:
        groups.append(current)

    count = len(groups)
    layout = OutputLayout(shards=[])
    for index, group in enumerate(groups):
        filename = (
            SINGLE_FILE_NAME if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"
        )
        # Stable sort: plan order kept within a dtype width. Empty tensors go last, so none shares
        # its (empty) offset with the start of another tensor; strict parsers call that overlap.
        ordered = sorted(group, key=lambda s: (s.nbytes == 0, -DTYPE_SIZES[s.dtype]))
        relative: list[tuple[TensorSlot, int, int]] = []
        cursor = 0
        for slot in ordered:
            relative.append((slot, cursor, cursor + slot.nbytes))
            cursor += slot.nbytes
        header_obj: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        for slot, begin, end in relative:
            header_obj[slot.name] = {
                "dtype": slot.dtype,
                "shape": list(slot.shape),
                "data_offsets": [begin, end],
            }
        header = json.dumps(header_obj, separators=(",", ":")).encode("utf-8")
        header += b" " * ((-(8 + len(header))) % 8)
        data_start = 8 + len(header)
        placed = [
            TensorSlot(s.name, s.dtype, s.shape, s.nbytes, index, data_start + b, data_start + e)
            for s, b, e in relative
        ]
        for slot in placed:
            layout.slots[slot.name] = slot
        layout.shards.append(ShardLayout(index, filename, placed, header, cursor))
    return layout


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """Write all of `data` at `offset` (pwrite may write less than asked; loop until done).

    A module-level function on purpose: tests replace it to simulate a full disk part-way.
    """
    view = data.cast("B") if data.format != "B" else data
    done = 0
    total = len(view)
    while done < total:
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        done += written


_COPY_CHUNK = 1 << 30  # as the reader: stay well under Linux's ~2 GiB cap on one call
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}


def copy_between(source: int, offset: int, target: int, dest: int, nbytes: int) -> int:
    """Copy `nbytes` from `offset` of `source` to `dest` of `target`; returns the bytes copied,
    fewer only where the source file ends. copy_file_range where the kernel and file systems
    allow it, else through a bounded buffer."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < nbytes:
        size = min(nbytes - done, _COPY_CHUNK)
        if kernel:
            try:
                got = os.copy_file_range(source, target, size, offset + done, dest + done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            data = os.pread(source, min(size, 16 << 20), offset + done)
            got = len(data)
            if got:
                write_at(target, memoryview(data), dest + done)
        if got == 0:
            break
        done += got
    return done


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (keep the tensor alive while using it)."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(b"")
    buffer = (ctypes.c_char * nbytes).from_address(tensor.data_ptr())
    return memoryview(buffer).cast("B")


class ShardSetWriter:
    """Writes one output's shards into a folder, tensor by tensor, in any order.

    Not thread-safe by itself: the runner calls it from a single writer thread.
    """

    def __init__(self, folder: Path, layout: OutputLayout) -> None:
        self.folder = Path(folder)
        self.layout = layout
        self._fds: dict[int, int] = {}
        self._remaining = [len(s.slots) for s in layout.shards]
        self._written: set[str] = set()
        self._bytes: dict[str, int] = {}

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            spec = self.layout.shards[shard]
            path = self.folder / spec.filename
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds[shard] = fd
            try:
                prefix = len(spec.header).to_bytes(8, "little") + spec.header
                write_at(fd, memoryview(prefix), 0)
            except OSError as exc:
                raise self._os_error(exc, spec.filename) from exc
        return fd

    def write(self, name: str, tensor: torch.Tensor, start: int = 0) -> ShardLayout | None:
        """Write a finished tensor, or the piece of it that begins `start` bytes into it.

        Returns the tensor's shard when that shard just became complete. Pieces of one tensor may
        arrive in any order; the tensor counts as written once all its bytes are.
        """
        slot = self.layout.slots[name]
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise RuntimeError(f"tensor {name} must be a contiguous CPU tensor to be written")
        nbytes = tensor.numel() * tensor.element_size()
        self._check_fits(name, nbytes, start)
        spec = self.layout.shards[slot.shard]
        fd = self._fd(slot.shard)
        try:
            write_at(fd, tensor_bytes(tensor), slot.begin + start)
        except OSError as exc:
            raise self._os_error(exc, spec.filename) from exc
        return self._count(name, nbytes)

    def copy_range(
        self, name: str, source: int, offset: int, nbytes: int, start: int = 0, *, where: str = ""
    ) -> ShardLayout | None:
        """Write `nbytes` read at `offset` of the open file `source` (`where`, for messages) as
        the piece of tensor `name` that begins `start` bytes into it: a tensor copied unchanged
        goes file to file in the kernel (copy_file_range), never through a buffer here. Returns
        what `write` returns."""
        slot = self.layout.slots[name]
        self._check_fits(name, nbytes, start)
        spec = self.layout.shards[slot.shard]
        fd = self._fd(slot.shard)
        try:
            copied = copy_between(source, offset, fd, slot.begin + start, nbytes)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._os_error(exc, spec.filename) from exc
            raise UserError(
                f"cannot copy tensor {name} into {spec.filename}: {exc.strerror or exc}",
                where=where or str(self.folder),
            ) from exc
        if copied < nbytes:
            raise UserError(
                f"the input ends before all the bytes copied into tensor {name}: it is "
                "truncated or corrupt",
                where=where,
                fix="download or copy the checkpoint again",
            )
        return self._count(name, nbytes)

    def _check_fits(self, name: str, nbytes: int, start: int) -> None:
        slot = self.layout.slots[name]
        done = self._bytes.get(name, 0)
        if start < 0 or start + nbytes > slot.nbytes or done + nbytes > slot.nbytes:
            raise RuntimeError(
                f"{nbytes} bytes at {start} do not fit tensor {name} ({slot.nbytes} bytes, "
                f"{done} already written)"
            )

    def _count(self, name: str, nbytes: int) -> ShardLayout | None:
        """Record `nbytes` more of tensor `name`; its shard when that shard just became complete."""
        slot = self.layout.slots[name]
        spec = self.layout.shards[slot.shard]
        done = self._bytes.get(name, 0) + nbytes
        self._bytes[name] = done
        if done < slot.nbytes or name in self._written:
            return None
        self._written.add(name)
        self._remaining[slot.shard] -= 1
        if self._remaining[slot.shard] == 0:
            self._close_shard(slot.shard)
            return spec
        return None

    def is_written(self, name: str) -> bool:
        return name in self._written

    def _close_shard(self, shard: int) -> None:
        fd = self._fds.pop(shard)
        spec = self.layout.shards[shard]
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size != spec.file_size:
            raise RuntimeError(
                f"{spec.filename} is {size} bytes, expected {spec.file_size}: writer bug"
            )

    def finish(self) -> None:
        """Check every tensor arrived and write the index (sharded outputs only)."""
        missing = [name for name in self.layout.slots if name not in self._written]
        if missing:
            raise RuntimeError(f"{len(missing)} tensors were never written, first {missing[0]}")
        if len(self.layout.shards) > 1:
            index = {
                "metadata": {"total_size": self.layout.total_bytes},
                "weight_map": self.layout.weight_map(),
            }
            path = self.folder / INDEX_FILE_NAME
            try:
                path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            except OSError as exc:
                raise self._os_error(exc, INDEX_FILE_NAME) from exc

    def close(self) -> None:
        """Release any open file (after an error); finished shards are already closed."""
        close_fds(self._fds)

    def _os_error(self, exc: OSError, filename: str) -> UserError:
        where = str(self.folder / filename)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return UserError(
                "the disk is full: no space left to write the merged model",
                where=where,
                fix=f"free at least {human_bytes(self.layout.total_bytes)} there or pick another --out",
            )
        return UserError(f"cannot write the output: {exc.strerror or exc}", where=where)

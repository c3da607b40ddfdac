"""Reads one input tensor at a time, straight from its byte range in a safetensors file.

`pread` into a fresh buffer rather than a memory map: the bytes pass through the page cache once,
the process never maps whole files (so its resident size stays a few tensors, not a few models),
and a short read is caught here and named (file and tensor) instead of crashing later.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.files import open_regular
from mergetui.dtypes import torch_dtype
from mergetui.errors import UserError

if TYPE_CHECKING:
    import torch

_MAX_READ = 1 << 30  # Linux caps one read near 2 GiB; stay well under


def close_fds(fds: dict[Any, int]) -> None:
    """Close every descriptor (one that fails to close is gone all the same) and forget them."""
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class TensorReader:
    """Keeps one descriptor per input file and reads byte ranges into tensors. Thread-safe."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._bin_files: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _fd(self, path: str) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                # A regular file only: the folder may have changed since it was planned, and a
                # FIFO put in a weight file's place would block the merge forever.
                fd = open_regular(path)
                self._fds[path] = fd
            return fd

    def descriptor(self, path: str | Path) -> int:
        """The open descriptor of `path` (a safetensors file), for a copy that bypasses `read`."""
        return self._fd(str(path))

    def read(
        self,
        path: str | Path,
        offset: int,
        nbytes: int,
        dtype: str,
        shape: tuple[int, ...],
        tensor_name: str,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The tensor stored at [offset, offset + nbytes) of `path`, on the CPU, in its own dtype.

        `out`, a uint8 buffer of exactly `nbytes`, is filled instead of a fresh one (buffer reuse).
        """
        import torch

        from mergetui.merge.writer import tensor_bytes

        path = str(path)
        if offset < 0:
            return self._read_bin(path, tensor_name)
        fd = self._fd(path)
        buffer = out if out is not None else torch.empty(nbytes, dtype=torch.uint8)
        if buffer.dtype != torch.uint8 or buffer.numel() != nbytes:
            raise ValueError(f"buffer for {tensor_name} must be {nbytes} uint8 bytes")
        view = tensor_bytes(buffer)
        done = 0
        while done < nbytes:
            chunk = view[done : done + _MAX_READ]
            try:
                got = _read_into(fd, chunk, offset + done)
            except OSError as exc:
                raise UserError(
                    f"cannot read tensor {tensor_name}: {exc.strerror or exc}", where=path
                ) from exc
            if got == 0:
                raise UserError(
                    f"the file ends before tensor {tensor_name} does: it is truncated or corrupt "
                    f"(needs bytes up to {offset + nbytes}, file has {os.fstat(fd).st_size})",
                    where=path,
                    fix="download or copy the checkpoint again",
                )
            done += got
        return buffer.view(torch_dtype(dtype)).reshape(shape)

    def will_need(self, path: str | Path, offset: int, nbytes: int) -> None:
        """Ask the kernel to start reading a byte range now (a hint: errors surface on read)."""
        if offset < 0 or not hasattr(os, "posix_fadvise"):
            return
        try:
            os.posix_fadvise(self._fd(str(path)), offset, nbytes, os.POSIX_FADV_WILLNEED)
        except (OSError, UserError):
            pass

    def _read_bin(self, path: str, tensor_name: str) -> torch.Tensor:
        """A tensor from a pytorch_model*.bin (only with --allow-bin): memory-mapped torch.load."""
        import torch

        with self._lock:
            state = self._bin_files.get(path)
            if state is None:
                try:
                    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
                    raise UserError(
                        f"cannot load the pickled checkpoint: {exc}",
                        where=path,
                        fix="convert it to safetensors, or fetch it again",
                    ) from exc
                self._bin_files[path] = state
        if tensor_name not in state:
            raise UserError(f"tensor {tensor_name} is not in this file", where=path)
        return state[tensor_name]

    def close(self) -> None:
        with self._lock:
            self._bin_files.clear()
            close_fds(self._fds)

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # pragma: no cover - platforms without preadv
    view[: len(data)] = data
    return len(data)

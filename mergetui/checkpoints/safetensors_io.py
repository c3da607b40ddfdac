"""safetensors headers, parsed by hand: names, shapes, dtypes and byte ranges without loading a tensor.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the raw data.
Reading only the header lets inspection and planning know every tensor of a 70B checkpoint in
milliseconds, and the same parser works on the first bytes of a remote file (`read_header_bytes`).
Problems a user can fix (a truncated download, a file that is not safetensors) raise `UserError`
naming the file and, where it applies, the tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.checkpoints.files import open_regular, os_error
from mergetui.dtypes import DTYPE_BITS, dtype_nbytes
from mergetui.errors import UserError

# safetensors refuses headers above 100 MB; a larger length means the file is not safetensors.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives. `offset` is the absolute byte offset of its data in `file`; -1 marks a
    tensor that has no byte range (a pytorch_model.bin entry, which must be loaded through torch)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def in_safetensors(self) -> bool:
        return self.offset >= 0


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensors (in file order) and the `__metadata__` strings of a local safetensors file."""
    file = Path(path)
    # Only a regular file is opened (a FIFO would block); a looping link or a missing or
    # unreadable file is a one-line UserError.
    fd = open_regular(file)
    try:
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _not_safetensors(file, f"only {len(prefix)} bytes long")
            (header_len,) = struct.unpack("<Q", prefix)
            _check_header_length(file, header_len, size)
            header = handle.read(header_len)
    except OSError as exc:
        raise os_error(exc, file, "read this file") from None
    return read_header_bytes(prefix + header, file, file_size=size)


def read_header_bytes(
    data: bytes, file: str | Path, *, file_size: int | None = None
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a header from the first bytes of a safetensors file (at least 8 + N of them).

    `file` names the file in errors and in each TensorInfo. With `file_size`, tensors whose data
    would run past the end of the file are reported as truncated.
    """
    file = Path(file)
    if len(data) < 8:
        raise _not_safetensors(file, f"only {len(data)} bytes long")
    (header_len,) = struct.unpack("<Q", data[:8])
    _check_header_length(file, header_len, file_size)
    if len(data) < 8 + header_len:
        raise UserError(
            f"header is {header_len} bytes but only {len(data) - 8} were given",
            where=str(file),
            fix="pass the first 8 + header-length bytes of the file",
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_safetensors(file, f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _not_safetensors(file, "its header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _corrupt(file, "__metadata__ is not an object")
    data_start = 8 + header_len
    tensors = [_tensor_info(file, name, entry, data_start) for name, entry in header.items()]
    tensors.sort(key=lambda info: (info.offset, info.name))

    previous: TensorInfo | None = None
    for info in tensors:
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            raise _corrupt(file, f"data of {info.name} overlaps {previous.name}")
        if file_size is not None and info.offset + info.nbytes > file_size:
            raise UserError(
                f"file is truncated: tensor {info.name} needs bytes up to "
                f"{info.offset + info.nbytes} but the file has {file_size}",
                where=str(file),
                fix="the download or copy was cut short; fetch the file again",
            )
        previous = info
    return {info.name: info for info in tensors}, {str(k): str(v) for k, v in metadata.items()}


def _check_header_length(file: Path, header_len: int, file_size: int | None) -> None:
    if header_len > MAX_HEADER_BYTES:
        raise _not_safetensors(file, f"its header length ({header_len} bytes) is implausible")
    if file_size is not None and 8 + header_len > file_size:
        raise UserError(
            f"header length {header_len} runs past the end of the file ({file_size} bytes)",
            where=str(file),
            fix="the file is truncated or not safetensors; fetch it again",
        )


def _tensor_info(file: Path, name: str, entry: Any, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _corrupt(file, f"entry for tensor {name} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise _corrupt(file, f"tensor {name} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _corrupt(file, f"tensor {name} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _corrupt(file, f"tensor {name} has invalid data_offsets {offsets!r}")
    nbytes = offsets[1] - offsets[0]
    expected = dtype_nbytes(dtype, math.prod(shape))
    if nbytes != expected:
        raise _corrupt(
            file,
            f"tensor {name} spans {nbytes} bytes but shape {tuple(shape)} of {dtype} needs {expected}",
        )
    return TensorInfo(name, tuple(shape), dtype, file, data_start + offsets[0], nbytes)


def _not_safetensors(file: Path, why: str) -> UserError:
    return UserError(
        f"not a safetensors file: {why}",
        where=str(file),
        fix="check that this is a .safetensors file and that it downloaded completely",
    )


def _corrupt(file: Path, why: str) -> UserError:
    return UserError(
        f"corrupt safetensors header: {why}",
        where=str(file),
        fix="fetch or convert the file again",
    )

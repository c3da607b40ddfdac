"""Will a checkpoint fit? Its weights' size (from the headers) against the memory a device has free.

`choose_device("auto", need)` picks the fastest device with room (cuda, then mps, then the CPU) and
says why when it falls back; an explicit device that is too small is refused with the numbers, so a
load never ends in an out-of-memory crash half-way. torch is imported only to ask about GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mergetui.device import check_device_name
from mergetui.dtypes import COMPUTE_CODES, DTYPE_SIZES
from mergetui.errors import UserError
from mergetui.formatting import human_bytes

if TYPE_CHECKING:
    from mergetui.checkpoints.safetensors_io import TensorInfo

# Weights are most of it; activations, the KV cache and the framework take some more.
HEADROOM = 1.2
HEADROOM_BYTES = 256 * 1000**2


@dataclass(frozen=True)
class DeviceChoice:
    """Where a model goes, and what the user should be told about the choice (may be empty)."""

    device: str
    need_bytes: int
    free_bytes: int | None
    message: str = ""


def weights_bytes(path: str | Path, dtype: str | None = None, *, allow_bin: bool = False) -> int:
    """Bytes the checkpoint's weights take in memory, as stored or cast to `dtype` (F32, BF16...).

    A pytorch_model.bin checkpoint is a pickle: read only with `allow_bin` (--allow-bin)."""
    from mergetui.checkpoints.inspect import open_checkpoint

    checkpoint = open_checkpoint(Path(path), allow_bin=allow_bin)
    return tensors_bytes(checkpoint.tensors.values(), dtype)


def tensors_bytes(tensors: Iterable[TensorInfo], dtype: str | None = None) -> int:
    """Bytes these tensors take, as stored or with their floating ones cast to `dtype` (F32...)."""
    total = 0
    for info in tensors:
        code = dtype if dtype and info.dtype in COMPUTE_CODES else info.dtype
        total += info.numel * DTYPE_SIZES.get(code, 4)
    return total


def needed_bytes(weights: int) -> int:
    """What loading and chatting need beyond the weights: a margin for activations and cache."""
    return int(weights * HEADROOM) + HEADROOM_BYTES


def available_ram() -> int | None:
    """Memory the OS can give a new allocation now (MemAvailable), or None when it cannot say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil is optional
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_memory(device: str) -> int | None:
    """Free bytes on a device ("cpu", "cuda", "cuda:1", "mps"), or None when unknown."""
    if device == "cpu":
        return available_ram()
    import torch

    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        free, _total = torch.cuda.mem_get_info(index)
        return int(free)
    if device == "mps":
        return available_ram()  # unified memory
    return None


def choose_device(
    name: str, need_bytes: int, *, free: dict[str, int | None] | None = None
) -> DeviceChoice:
    """The device to load on. `free` overrides what the devices report (for tests and the CLI).

    Raises UserError, with both numbers and what to do, when nothing has room.
    """
    from mergetui.device import resolve_device

    normalised = check_device_name(name)
    report = dict(free or {})

    def room(device: str) -> int | None:
        if device not in report:
            report[device] = free_memory(device)
        return report[device]

    if normalised != "auto":
        device = str(resolve_device(normalised)) if normalised not in report else normalised
        have = room(device)
        if have is not None and need_bytes > have:
            raise UserError(
                f"the model needs about {human_bytes(need_bytes)} but {device} has "
                f"{human_bytes(have)} free",
                where="--device",
                fix="free some memory, use another device, or try --device auto",
            )
        return DeviceChoice(device, need_bytes, have)

    candidates = [d for d in report if d != "cpu"] if free is not None else _accelerators()
    skipped = []
    for device in candidates:
        have = room(device)
        if have is None or need_bytes <= have:
            return DeviceChoice(device, need_bytes, have)
        skipped.append(f"{device} has {human_bytes(have)} free")
    have = room("cpu")
    if have is not None and need_bytes > have:
        where = "; ".join([*skipped, f"the CPU has {human_bytes(have)} free"])
        raise UserError(
            f"the model will not fit: it needs about {human_bytes(need_bytes)} and {where}",
            fix="close other programs or models, or use a machine with more memory",
        )
    message = ""
    if skipped:
        message = (
            f"loading on the CPU: the model needs about {human_bytes(need_bytes)} and "
            + "; ".join(skipped)
        )
    return DeviceChoice("cpu", need_bytes, have, message)


def _accelerators() -> list[str]:
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    backend = getattr(torch.backends, "mps", None)
    if backend is not None and backend.is_available():
        found.append("mps")
    return found

"""Where the tensor arithmetic runs: `auto` picks the fastest device this machine has.

Parsing is plain string work so the CLI and the plan can check a device name without torch; only
`resolve_device` imports torch, and it fails with a `UserError` naming the device when it is absent.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from mergetui.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES_HELP = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """Normalise and check a device name without touching torch."""
    normalised = (name or "auto").strip().lower()
    if not _DEVICE_RE.match(normalised):
        raise UserError(
            f"unknown device {name!r}",
            where="--device",
            fix=f"use one of {DEVICE_CHOICES_HELP}",
        )
    return normalised


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a name: auto prefers cuda, then mps, then cpu."""
    import torch

    normalised = check_device_name(name)
    if normalised == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if normalised == "cpu":
        return torch.device("cpu")
    if normalised == "mps":
        if not _mps_available():
            raise UserError(
                "the mps device (Apple GPU) is not available on this machine",
                where="--device",
                fix="use --device cpu or --device auto",
            )
        return torch.device("mps")
    # cuda or cuda:N
    if not torch.cuda.is_available():
        raise UserError(
            f"{normalised} was asked for but torch sees no CUDA GPU",
            where="--device",
            fix="use --device cpu or --device auto (or install a CUDA build of torch)",
        )
    if ":" in normalised:
        index = int(normalised.split(":", 1)[1])
        count = torch.cuda.device_count()
        if index >= count:
            raise UserError(
                f"{normalised} does not exist: this machine has {count} CUDA device(s)",
                where="--device",
                fix=f"use cuda:0 to cuda:{count - 1}",
            )
    return torch.device(normalised)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def core_count() -> int:
    """The cores this process may run on (its CPU affinity, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows
        return os.cpu_count() or 1


def use_cores(cores: int) -> None:
    """Let torch use `cores` threads here and in the threads started from now on."""
    import torch

    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)

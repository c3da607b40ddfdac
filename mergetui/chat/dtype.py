"""The dtype a model is loaded in for chat and eval: `auto`, or one the user names.

Most checkpoints are stored in bfloat16. On a GPU that is the dtype to run in, and `auto` keeps the
checkpoint's own dtype there. On a CPU it is not: without bf16 matrix instructions torch computes
bf16 matmuls several times slower than float32 (scoring 913 tokens with a 135M Llama took 13.8 s in
bf16 and 2.3 s in float32 on an AVX2 machine). So `auto` on the CPU loads a 16-bit checkpoint in
float32, unless the CPU has fast kernels for its dtype (its flags in /proc/cpuinfo: AMX or AVX-512
BF16 on x86, the BF16 extension on Arm) or float32 would not fit in the memory that is free.
Plain string work: torch is not imported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from mergetui.dtypes import ALIASES, COMPUTE_CODES, dtype_name
from mergetui.errors import UserError
from mergetui.formatting import human_bytes

DTYPES = ("auto", "float32", "bfloat16", "float16")
# CPU flags that mean torch (oneDNN) runs matmuls of that dtype at least as fast as float32.
FAST_CPU_FLAGS = {
    "bfloat16": frozenset({"amx_bf16", "avx512_bf16", "bf16"}),  # "bf16": Arm's Features line
    "float16": frozenset({"amx_fp16", "avx512_fp16"}),
}


@dataclass(frozen=True)
class DtypeChoice:
    """What to pass transformers (None: the checkpoint's own dtype) and why, for the status line."""

    name: str | None
    reason: str


def check_dtype_name(name: str) -> str:
    """Normalise and check a --dtype value (float32, bfloat16, float16 or auto)."""
    normalised = (name or "auto").strip().lower()
    normalised = ALIASES.get(normalised, normalised)
    if normalised not in DTYPES:
        raise UserError(
            f"unknown dtype {name!r}",
            where="--dtype",
            fix="use one of " + ", ".join(DTYPES),
        )
    return normalised


@cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's feature flags (x86 `flags`, Arm `Features`); empty where /proc/cpuinfo is not."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def stored_dtype(codes: Iterable[tuple[str, int]]) -> str | None:
    """The floating dtype holding most of a checkpoint's entries, from (safetensors code, numel)."""
    totals: dict[str, int] = {}
    for code, numel in codes:
        name = dtype_name(code) if code in COMPUTE_CODES else None
        if name is not None:
            totals[name] = totals.get(name, 0) + numel
    return max(totals, key=lambda name: totals[name]) if totals else None


def choose_dtype(
    requested: str,
    device: str,
    stored: str | None,
    *,
    float32_need: int,
    free: int | None,
    flags: frozenset[str] | None = None,
) -> DtypeChoice:
    """The dtype to load in on `device`; `float32_need` is what loading in float32 takes."""
    requested = check_dtype_name(requested)
    if requested != "auto":
        return DtypeChoice(requested, "asked for")
    if device != "cpu":
        return DtypeChoice(None, "auto: the checkpoint's own dtype")
    if stored not in FAST_CPU_FLAGS:  # float32 (or float64) already: nothing to gain
        return DtypeChoice(None, "auto: the checkpoint's own dtype")
    have = (cpu_flags() if flags is None else flags) & FAST_CPU_FLAGS[stored]
    if have:
        return DtypeChoice(stored, f"auto: this CPU has fast {stored} ({', '.join(sorted(have))})")
    if free is not None and float32_need > free:
        return DtypeChoice(
            stored,
            f"auto: float32 would need about {human_bytes(float32_need)} and the CPU has "
            f"{human_bytes(free)} free",
        )
    return DtypeChoice("float32", f"auto: this CPU has no fast {stored} kernels")

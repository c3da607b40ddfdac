"""The one dtype table: safetensors codes, their names, sizes and float-ness, and torch's dtypes.

Every module that needs a fact about a dtype reads it here (the safetensors reader, the planner,
the writer, the analysis, the validator, chat's memory estimate, the screens), so they cannot
disagree. Codes are safetensors' ("BF16"); names are torch's and mergekit's ("bfloat16"). torch is
imported only inside the functions that return torch dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mergetui.errors import UserError


@dataclass(frozen=True)
class Dtype:
    """One safetensors dtype: its code, bits per element, torch name and whether merges blend it."""

    code: str
    bits: int
    torch_name: str | None  # None: this torch has no such dtype (F4, F6)
    floating: bool = False  # a float the engine merges and the analysis compares


_TABLE = (
    Dtype("BOOL", 8, "bool"),
    Dtype("U8", 8, "uint8"),
    Dtype("I8", 8, "int8"),
    Dtype("F8_E5M2", 8, "float8_e5m2", floating=True),
    Dtype("F8_E4M3", 8, "float8_e4m3fn", floating=True),
    Dtype("F8_E8M0", 8, "float8_e8m0fnu"),  # a scale format (exponent only): never blended
    Dtype("I16", 16, "int16"),
    Dtype("U16", 16, "uint16"),
    Dtype("F16", 16, "float16", floating=True),
    Dtype("BF16", 16, "bfloat16", floating=True),
    Dtype("I32", 32, "int32"),
    Dtype("U32", 32, "uint32"),
    Dtype("F32", 32, "float32", floating=True),
    Dtype("F64", 64, "float64", floating=True),
    Dtype("I64", 64, "int64"),
    Dtype("U64", 64, "uint64"),
    Dtype("F4", 4, None),
    Dtype("F6_E2M3", 6, None),
    Dtype("F6_E3M2", 6, None),
)
# Every dtype safetensors writes, by code.
DTYPES: dict[str, Dtype] = {dtype.code: dtype for dtype in _TABLE}
# Bits per element (sub-byte dtypes included).
DTYPE_BITS: dict[str, int] = {dtype.code: dtype.bits for dtype in _TABLE}
# Bytes per element, whole-byte dtypes only (the engine never writes F4/F6).
DTYPE_SIZES: dict[str, int] = {d.code: d.bits // 8 for d in _TABLE if d.bits % 8 == 0}
# The float codes a merge blends (and promotes between).
FLOAT_CODES = frozenset(dtype.code for dtype in _TABLE if dtype.floating)
# The floats a model computes in: what a recipe's dtype, chat's --dtype and the demo may name.
COMPUTE_CODES = ("F32", "F16", "BF16", "F64")
_NAME_CODES = {d.torch_name: d.code for d in _TABLE if d.torch_name}

# mergekit's `dtype_from_name`: the names a recipe's dtype may take (a "torch." prefix is allowed).
MERGEKIT_NAMES = ("bfloat16", "float16", "float32", "float64", "int64")
# The dtypes a merged model is written in, as the Recipe screen and the demo offer them.
OUTPUT_NAMES = ("float32", "float16", "bfloat16")
# Other spellings people write, and the name each means.
ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "fp64": "float64",
    "double": "float64",
}


def dtype_name(code: str) -> str | None:
    """The name ("bfloat16") of a safetensors code ("BF16"), None where torch has none."""
    dtype = DTYPES.get(code)
    return dtype.torch_name if dtype else None


def dtype_code(name: str) -> str | None:
    """The safetensors code of a dtype name or alias ("bf16", "torch.bfloat16" -> "BF16")."""
    key = str(name).removeprefix("torch.").lower()
    return _NAME_CODES.get(ALIASES.get(key, key))


def compute_code(name: str) -> str | None:
    """The code of a float a model computes in ("half" -> "F16"); None for any other name."""
    code = dtype_code(name)
    return code if code in COMPUTE_CODES else None


def dtype_nbytes(dtype: str, numel: int) -> int:
    """Bytes taken by `numel` elements of a safetensors dtype (sub-byte dtypes round up)."""
    return (DTYPE_BITS[dtype] * numel + 7) // 8


def torch_dtype(dtype: str) -> Any:
    """The torch dtype for a safetensors dtype code such as "BF16"."""
    import torch

    name = dtype_name(dtype)
    try:
        return getattr(torch, name or "")
    except AttributeError:
        raise UserError(
            f"dtype {dtype} has no torch equivalent in this torch version",
            fix="upgrade torch, or convert the checkpoint to F32/F16/BF16",
        ) from None


def dtype_from_torch(dtype: Any) -> str:
    """The safetensors code ("BF16") of a torch dtype."""
    code = _NAME_CODES.get(str(dtype).removeprefix("torch."))
    if code is None:
        raise ValueError(f"torch dtype {dtype} cannot be stored in safetensors")
    return code

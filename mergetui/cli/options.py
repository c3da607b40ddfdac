"""Options several commands share, defined once so their flags and help read the same everywhere."""

from __future__ import annotations

import argparse


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """--json: the command prints only machine-readable JSON (for scripts)."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")


def add_allow_bin_option(parser: argparse.ArgumentParser, verb: str = "read") -> None:
    """--allow-bin: pickle checkpoints are refused unless asked for (`verb`: read or load)."""
    parser.add_argument(
        "--allow-bin",
        action="store_true",
        help=f"also {verb} pytorch_model.bin (pickle) checkpoints; only for files you trust",
    )


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """--dtype and --allow-bin, shared by `chat` and `eval` (the commands that load a model)."""
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (on a CPU: float32 unless it has fast bf16 kernels; on a GPU: the "
        "checkpoint's own), float32, bfloat16 or float16",
    )
    add_allow_bin_option(parser, "load")


def add_trust_remote_code_option(parser: argparse.ArgumentParser, shipped_with: str) -> None:
    """--trust-remote-code for a command that loads models (`shipped_with`: "the model(s)")."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help=f"allow Python code shipped with {shipped_with} (only for models you trust)",
    )


def checked_device_and_dtype(args: argparse.Namespace) -> tuple[str, str]:
    """The --device and --dtype of a command that loads a model, checked before anything is
    loaded (a `UserError` names a bad one)."""
    from mergetui.chat.dtype import check_dtype_name
    from mergetui.device import check_device_name

    return check_device_name(args.device), check_dtype_name(args.dtype)

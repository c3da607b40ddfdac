"""A checkpoint's own Python code: never run by a merge, and left out of its output unless trusted.

A checkpoint may ship `.py` files and name them in an `auto_map` (config.json for the model,
tokenizer_config.json for the tokenizer). transformers imports those files when it loads the
checkpoint, and, when `trust_remote_code` is left unset, asks "Do you wish to run the custom code?
[y/N]" on stdin. A merge passes the flag explicitly (so it never asks), runs with a guard that makes
any such question fail instead of reading stdin, and only with `--trust-remote-code` copies the
`auto_map` and the `.py` files into the output; otherwise both are left out and a notice says so.
"""

from __future__ import annotations

import builtins
import json
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mergetui.errors import UserError

# Config keys that name Python code shipped with the checkpoint.
CODE_KEYS = ("auto_map", "custom_pipelines")
TOKENIZER_CONFIG = "tokenizer_config.json"
OPT_IN = "--trust-remote-code"

_PROMPT_LOCK = threading.Lock()


def strip_code_keys(config: dict[str, Any]) -> list[str]:
    """Remove the keys that point at shipped code from `config` (in place); return their names."""
    return [key for key in CODE_KEYS if config.pop(key, None) is not None]


def code_files(folder: Path) -> list[Path]:
    """The checkpoint's own Python files: every regular `.py` file at the top of its folder."""
    try:
        return sorted(p for p in folder.glob("*.py") if p.is_file() and not p.is_symlink())
    except OSError:
        return []


def tokenizer_code_keys(folder: Path) -> list[str]:
    """The code keys that the folder's tokenizer_config.json holds."""
    config = read_json_object(folder / TOKENIZER_CONFIG)
    return [key for key in CODE_KEYS if config is not None and key in config]


def left_out_notice(
    config_keys: Sequence[str], donors: Mapping[str, Path], tokenizer_donor: str
) -> str | None:
    """What an untrusted merge leaves out of the output (and how to opt in), or None.

    `donors` maps the config donor and the tokenizer donor to their folders; `config_keys` are
    the keys already taken out of the output config."""
    parts, owners = [], []
    if config_keys:
        parts.append(f"the {' and '.join(config_keys)} of config.json")
        owners.append(next(iter(donors)))
    tokenizer_keys = tokenizer_code_keys(donors[tokenizer_donor])
    if tokenizer_keys:
        parts.append(f"the {' and '.join(tokenizer_keys)} of {TOKENIZER_CONFIG}")
        owners.append(tokenizer_donor)
    files: list[str] = []
    for name, folder in donors.items():
        found = [p.name for p in code_files(folder) if p.name not in files]
        files += found
        if found:
            owners.append(name)
    if files:
        shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
        parts.append(f"the Python file(s) {shown}")
    if not parts:
        return None
    owners = list(dict.fromkeys(owners))
    if len(owners) == 1:
        who = f"model {owners[0]!r} comes with Python code of its own"
    else:
        who = f"models {owners[0]!r} and {owners[1]!r} come with Python code of their own"
    return (
        f"{who}, which a merge never runs; the output leaves out "
        + "; ".join(parts)
        + f" (a model that needs that code will not load without it): merge with {OPT_IN} "
        "to copy them, only if you trust that code"
    )


def clean_tokenizer_config(folder: Path) -> None:
    """Rewrite the output's tokenizer_config.json without the keys that point at code."""
    path = folder / TOKENIZER_CONFIG
    config = read_json_object(path)
    if config is not None and strip_code_keys(config):
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def copy_code_files(donors: Sequence[Path], folder: Path) -> None:
    """Copy the donors' Python files into the output (trusted merges only); the first donor wins
    a name both have, and nothing already in the output is overwritten."""
    for donor in dict.fromkeys(donors):
        for source in code_files(donor):
            target = folder / source.name
            if not target.exists():
                shutil.copyfile(source, target)


@contextmanager
def no_stdin_prompts() -> Iterator[None]:
    """While loading a checkpoint's files, make any question on stdin fail instead of being read
    (defence in depth: transformers prompts with input() when trust_remote_code is unset)."""

    def refuse(prompt: object = "") -> str:
        raise UserError(
            "a library asked a question on stdin while loading a checkpoint; a merge never "
            "answers one",
            fix=f"pass {OPT_IN} if you trust the checkpoint's own code",
        )

    with _PROMPT_LOCK:
        previous = builtins.input
        builtins.input = refuse
        try:
            yield
        finally:
            builtins.input = previous


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file's object, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

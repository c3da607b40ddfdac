"""The `mergetui` command line: every capability without the TUI, as thin commands over the core.

Each subcommand lives in `mergetui/cli/cmd_<name>.py` (a `-` in its name is `_` there): its `HELP`
line and `DESCRIPTION`, its `add_arguments(parser)` and `run(args) -> int` (a command with actions
of its own, `hub`, sets each action's `func` instead); `build_parser` makes every command's parser
from them. Options several commands share are in `options.py`. Modules stay light at import time:
heavy imports (torch, transformers, huggingface_hub, textual) happen inside `run`.

Exit codes: 0 success, 1 a user error (one-line reason, no traceback), 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from mergetui import __version__

COMMAND_MODULES = (
    "validate",
    "convert",
    "inspect",
    "demo",
    "merge",
    "open",
    "diff",
    "hub",
    "pull",
    "push",
    "chat",
    "eval",
    "evolve",
    "extract-lora",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergetui",
        description="A terminal workbench for merging language-model checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"mergetui {__version__}")
    parser.add_argument(
        "--models-dir",
        action="append",
        metavar="DIR",
        help="remember a folder of local checkpoints for the Checkpoints screen (repeatable); "
        "alone, it then opens the app there",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"mergetui.cli.cmd_{name.replace('-', '_')}")
        command = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(command)
        if hasattr(module, "run"):
            command.set_defaults(func=module.run)
    return parser


RECIPE_SUFFIXES = (".toml", ".yaml", ".yml")


def route_to_app(argv: list[str]) -> list[str]:
    """Bare `mergetui` and `mergetui RECIPE` mean `mergetui open [RECIPE]`.

    Top-level options stay where they are; `--models-dir DIR` alone is left to `main`, which opens
    the Checkpoints screen. Anything else that is not a command, nor a recipe-looking path, is
    left to argparse (so a mistyped command is still a usage error).
    """
    index = 0
    models_dir = False
    while index < len(argv):
        word = argv[index]
        if word == "--models-dir":
            models_dir, index = True, index + 2
        elif word.startswith("--models-dir="):
            models_dir, index = True, index + 1
        elif word.startswith("-"):
            return argv  # --help, --version, or an option argparse will refuse
        else:
            break
    if index >= len(argv):
        return argv if models_dir else [*argv, "open"]
    word = argv[index]
    if word in COMMAND_MODULES:
        return argv
    path = Path(word)
    if path.suffix.lower() in RECIPE_SUFFIXES or path.is_file():
        return [*argv[:index], "open", *argv[index:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    from mergetui.cli.output import console_err, report_error
    from mergetui.errors import UserError

    parser = build_parser()
    args = parser.parse_args(route_to_app(list(sys.argv[1:] if argv is None else argv)))
    if getattr(args, "models_dir", None):
        try:
            _remember_models_dirs(args.models_dir)
        except UserError as exc:
            report_error(exc)
            return 1
        if not getattr(args, "func", None):
            from mergetui.cli import cmd_open

            args = parser.parse_args(["open", "--screen", "checkpoints"])
            args.func = cmd_open.run
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        report_error(exc)
        return 1
    except KeyboardInterrupt:
        console_err().print("[yellow]Interrupted.[/]")
        return 130


def run() -> NoReturn:
    """The `mergetui` command: `main`, then exit without the interpreter's teardown once torch
    is loaded.

    Tearing down a process that imported torch (its modules, its thread pool) took 0.6-0.9 s on
    the development machine: a third of a linear merge's wall time. By then every file is
    closed and the output is in place, so only the standard streams need flushing.
    """
    code = main()
    if "torch" in sys.modules:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


def _remember_models_dirs(folders: list[str]) -> None:
    """`--models-dir DIR`: add the folders to the remembered list in the user's config."""
    from mergetui.cli.output import console_err
    from mergetui.settings import remember_models_dirs

    for added in remember_models_dirs(folders):
        console_err().print(f"remembered models folder {added}", markup=False)


if __name__ == "__main__":  # pragma: no cover
    run()

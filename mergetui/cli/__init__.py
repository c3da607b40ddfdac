"""The `mergetui` command line: every capability without the TUI, as thin commands over the core.

Each subcommand lives in `mergetui/cli/cmd_<name>.py` with `register(subparsers)` adding its parser
(and `set_defaults(func=run)`) and `run(args) -> int`. Modules stay light at import time: heavy
imports (torch, transformers, huggingface_hub, textual) happen inside `run`.

Exit codes: 0 success, 1 a user error (one-line reason, no traceback), 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
        module = importlib.import_module(f"mergetui.cli.cmd_{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mergetui.cli.output import console_err, report_error
    from mergetui.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
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


def _remember_models_dirs(folders: list[str]) -> None:
    """`--models-dir DIR`: add the folders to the remembered list in the user's config."""
    from mergetui.cli.output import console_err
    from mergetui.tui.config import remember_models_dirs

    for added in remember_models_dirs(folders):
        console_err().print(f"remembered models folder {added}", markup=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

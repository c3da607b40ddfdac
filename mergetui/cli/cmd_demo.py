"""`mergetui demo`: a small trained model family, texts and recipes to try everything offline.

Writes `base` (a small Llama trained on English prose and Python code) and its two fine-tunes
`prose` and `code` (shipped with mergetui, nothing downloaded), calibration and held-out texts for
each domain, and recipes that merge them (one of them a search, `evolve.toml`), then opens the app on
one of them (or, with `--no-tui` or before the app exists, prints what to try next). An existing demo
in the folder is reused unless `--force`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_DIR = "mergetui-demo"
# The recipe the app opens on: its per-layer gradients make the grid worth looking at.
APP_RECIPE = "slerp-gradient"


HELP = "write a small trained model family, texts and recipes, then open them"
DESCRIPTION = (
    "Write (offline, in a moment) a small base model trained on prose and code, its prose and "
    "code fine-tunes, held-out texts to judge merges on, and recipes that merge them, to try "
    "mergetui without downloading anything."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(DEFAULT_DIR),
        help=f"where to write the demo (default: ./{DEFAULT_DIR})",
    )
    parser.add_argument(
        "--no-tui", action="store_true", help="only write the demo and print the next steps"
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild the demo even if one is already there"
    )


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from mergetui.cli.output import console
    from mergetui.demo import make_demo

    out = console()
    info = make_demo(
        args.dir,
        force=args.force,
        on_progress=lambda message: out.print(f"[dim]{escape(message)}[/]"),
    )
    _print_demo(info)

    # ---- Where the app opens. The Textual app is optional here: until `mergetui.tui.app` exposes
    # `run_app(recipe_path)`, or with --no-tui, the demo ends with the next steps printed below.
    if not args.no_tui:
        run_app = _app_runner()
        if run_app is not None:
            # From the demo folder, paths typed in the app (added models) read as in the demo;
            # the recipes' outputs are relative to their files (../merges/NAME) anyway.
            os.chdir(info.directory)
            # The demo folder is a models folder from the start: its three checkpoints and the
            # merges made from its recipes are on the Checkpoints screen (for this session).
            return int(run_app(info.recipes[APP_RECIPE], models_dirs=[info.directory]) or 0)
    _print_next_steps(info)
    return 0


def _app_runner() -> Any:
    import importlib

    try:
        app = importlib.import_module("mergetui.tui.app")
    except ModuleNotFoundError as exc:
        if exc.name in ("mergetui.tui.app", "textual"):
            return None
        raise
    return getattr(app, "run_app", None)


def _print_demo(info: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.cli.output import console
    from mergetui.formatting import human_bytes, human_count

    verb = "Wrote" if info.created else "Reusing"
    table = Table(title=f"{verb} the demo in {escape(str(info.directory))}", title_justify="left")
    table.add_column("model")
    table.add_column("folder")
    table.add_column("layers", justify="right")
    table.add_column("params", justify="right")
    table.add_column("size", justify="right")
    for name, folder in info.models.items():
        checkpoint = open_checkpoint(folder)
        table.add_row(
            name,
            escape(_relative(folder)),
            str(checkpoint.num_layers),
            human_count(checkpoint.parameter_count),
            human_bytes(checkpoint.size_on_disk),
        )
    out = console()
    out.print(table)
    out.print("[bold]Recipes[/] (model paths are relative to the recipe file):")
    for path in info.recipes.values():
        out.print(f"  {escape(_relative(path))}")
    purposes = {
        "calib": "what a search scores on",
        "heldout": "to judge merges on, never trained on",
    }
    out.print("[bold]Texts[/] (English prose and Python code):")
    for folder, texts in info.texts.items():
        names = "  ".join(escape(_relative(path)) for path in texts.values())
        out.print(f"  {names}   [dim]# {purposes.get(folder, folder)}[/]")


def _print_next_steps(info: Any) -> None:
    from rich.markup import escape

    from mergetui.cli.output import console

    out = console()
    out.print("\n[bold]Next, try[/] (paths in a recipe are relative to its file):")
    where = _relative(info.directory)
    if where != ".":
        out.print(f"  cd {escape(where)}")
    out.print("  mergetui inspect base --layers")
    out.print("  mergetui validate recipes/task-arithmetic.toml")
    out.print("  mergetui merge recipes/task-arithmetic.toml --dry-run")
    out.print("  mergetui merge recipes/task-arithmetic.toml")
    out.print(
        "  mergetui eval merges/task-arithmetic prose code --text heldout/code.txt"
        "   [dim]# the merge against its parents[/]"
    )
    out.print('  mergetui chat merges/task-arithmetic --prompt "def parse(line):" --seed 0')
    out.print("  mergetui evolve recipes/evolve.toml   [dim]# search per-layer weights[/]")
    out.print("  mergetui --models-dir .   [dim]# the app, the demo's checkpoints remembered[/]")


def _relative(path: Path) -> str:
    """A path as short as it can be from the current folder (absolute when outside it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)

"""`mergetui open [RECIPE]`: the app, on a recipe if one is given (TOML, or a mergekit YAML config).

Bare `mergetui` and `mergetui RECIPE` mean the same (the dispatcher routes them here). textual is
imported only when the app actually starts, so `mergetui --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SCREENS = ("checkpoints", "recipe", "run", "chat", "search")


HELP = "open the app (on a recipe if given)"
DESCRIPTION = (
    "Open the mergetui app: build a recipe, shape per-layer weights, save TOML or "
    "export mergekit YAML. A .yaml/.yml recipe is read as a mergekit config."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "recipe", nargs="?", type=Path, help="a recipe to open (.toml, or mergekit .yaml/.yml)"
    )
    parser.add_argument(
        "--screen",
        choices=SCREENS,
        default="recipe",
        help="the screen to start on (default: recipe)",
    )


def run(args: argparse.Namespace) -> int:
    from mergetui.tui.app import run_app

    return run_app(args.recipe, screen=args.screen)

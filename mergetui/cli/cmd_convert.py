"""`mergetui convert IN OUT`: mergekit YAML <-> mergetui TOML, chosen by the file extensions.

Model names, seed, output and description survive a trip through YAML (kept in a `# mergetui:`
comment that mergekit ignores). Relative model folders and a relative output (paths in a recipe are
relative to its file) are rewritten so they still point at the same place from OUT's folder. OUT is
never overwritten without `--force`, and is written atomically. A `[search]` table (`mergetui evolve`)
is left out: OUT is the merge recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "convert a recipe between mergetui TOML and mergekit YAML"
DESCRIPTION = (
    "Read IN and write OUT, each as mergetui TOML (.toml) or mergekit YAML "
    "(.yaml/.yml) by extension."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="recipe to read (.toml, .yaml, .yml)")
    parser.add_argument("output", metavar="OUT", help="recipe to write (.toml, .yaml, .yml)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from mergetui.errors import UserError
    from mergetui.recipe.io import dumps_recipe, load_recipe, recipe_format, write_text_atomic
    from mergetui.recipe.moe import dumps_moe, load_moe, rebase_moe_paths
    from mergetui.recipe.paths import rebase_paths

    target = Path(args.output)
    out_format = recipe_format(target)
    if target.exists() and not args.force:
        raise UserError(
            "output file already exists", where=str(target), fix="pass --force to overwrite it"
        )
    moe = load_moe(args.input)
    if moe is not None:  # a mergekit-moe config or a [moe] table: its own two forms
        moved = rebase_moe_paths(moe, Path(args.input).parent, target.parent)
        write_text_atomic(target, dumps_moe(moe, out_format))
        _report(target, moved)
        return 0
    recipe = load_recipe(args.input)
    searched, recipe.search = recipe.search is not None, None
    moved = rebase_paths(recipe, Path(args.input).parent, target.parent)
    text = dumps_recipe(recipe, out_format)
    write_text_atomic(target, text)
    out = _report(target, moved)
    if searched:
        out.print(f"  the [search] table is not converted (it stays in {args.input})", markup=False)
    return 0


def _report(target: Path, moved: list[tuple[str, str, str]]) -> Any:
    """Say what was written and which paths were rewritten; the console, for more lines."""
    from mergetui.cli.output import console

    out = console()
    out.print(f"wrote {target}", soft_wrap=True, markup=False)
    for what, old, new in moved:
        out.print(f"  {what}: {old} -> {new} (relative to {target.parent or '.'})", markup=False)
    return out

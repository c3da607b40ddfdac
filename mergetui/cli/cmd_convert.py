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
    from mergetui.cli.output import console
    from mergetui.errors import UserError
    from mergetui.recipe.io import dumps_recipe, load_recipe, recipe_format, write_text_atomic
    from mergetui.recipe.paths import rebase_paths

    target = Path(args.output)
    out_format = recipe_format(target)
    if target.exists() and not args.force:
        raise UserError(
            "output file already exists", where=str(target), fix="pass --force to overwrite it"
        )
    recipe = load_recipe(args.input)
    searched, recipe.search = recipe.search is not None, None
    moved = rebase_paths(recipe, Path(args.input).parent, target.parent)
    text = dumps_recipe(recipe, out_format)
    write_text_atomic(target, text)
    out = console()
    out.print(f"wrote {target}", soft_wrap=True, markup=False)
    if searched:
        out.print(f"  the [search] table is not converted (it stays in {args.input})", markup=False)
    for what, old, new in moved:
        out.print(f"  {what}: {old} -> {new} (relative to {target.parent or '.'})", markup=False)
    return 0

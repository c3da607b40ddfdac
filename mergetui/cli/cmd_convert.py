"""`mergetui convert IN OUT`: mergekit YAML <-> mergetui TOML, chosen by the file extensions.

Model names, seed, output and description survive a trip through YAML (kept in a `# mergetui:`
comment that mergekit ignores). Relative model folders and a relative output (paths in a recipe are
relative to its file) are rewritten so they still point at the same place from OUT's folder. OUT is
never overwritten without `--force`, and is written atomically.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a recipe between mergetui TOML and mergekit YAML",
        description="Read IN and write OUT, each as mergetui TOML (.toml) or mergekit YAML "
        "(.yaml/.yml) by extension.",
    )
    parser.add_argument("input", metavar="IN", help="recipe to read (.toml, .yaml, .yml)")
    parser.add_argument("output", metavar="OUT", help="recipe to write (.toml, .yaml, .yml)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergetui.cli.output import console
    from mergetui.errors import UserError
    from mergetui.recipe.io import dumps_recipe, load_recipe, recipe_format, write_text_atomic

    target = Path(args.output)
    out_format = recipe_format(target)
    if target.exists() and not args.force:
        raise UserError(
            "output file already exists", where=str(target), fix="pass --force to overwrite it"
        )
    recipe = load_recipe(args.input)
    moved = rebase_model_paths(recipe, Path(args.input).parent, target.parent)
    moved_output = rebase_output(recipe, Path(args.input).parent, target.parent)
    text = dumps_recipe(recipe, out_format)
    write_text_atomic(target, text)
    out = console()
    out.print(f"wrote {target}", soft_wrap=True, markup=False)
    for name, old, new in moved:
        out.print(
            f"  model {name}: {old} -> {new} (relative to {target.parent or '.'})", markup=False
        )
    if moved_output is not None:
        old, new = moved_output
        out.print(f"  output: {old} -> {new} (relative to {target.parent or '.'})", markup=False)
    return 0


def rebase_output(recipe, source_dir: Path, target_dir: Path) -> tuple[str, str] | None:
    """Rewrite a relative `output` so it names the same folder from `target_dir`; (old, new) when
    it changed."""
    from mergetui.recipe.paths import recipe_path

    output = recipe.output
    if not output or Path(output).expanduser().is_absolute():
        return None
    if source_dir.resolve() == target_dir.resolve():
        return None
    new = Path(os.path.relpath(recipe_path(output, source_dir.resolve()), target_dir.resolve()))
    if new.as_posix() == output:
        return None
    recipe.output = new.as_posix()
    return output, recipe.output


def rebase_model_paths(recipe, source_dir: Path, target_dir: Path) -> list[tuple[str, str, str]]:
    """Rewrite relative local model folders so they resolve the same from `target_dir`.

    A relative source counts as a local folder when it exists under `source_dir` or cannot be a
    Hub id; Hub ids are left alone. Returns (model, old, new) for each rewritten path.
    """
    from mergetui.checkpoints.locate import looks_like_hub_id

    moved = []
    if source_dir.resolve() == target_dir.resolve():
        return moved
    for name, entry in recipe.models.items():
        source = entry.source
        if not source or Path(source).expanduser().is_absolute() or source.startswith("~"):
            continue
        if looks_like_hub_id(source) and not (source_dir / source).exists():
            continue
        new = os.path.relpath(source_dir.resolve() / source, target_dir.resolve())
        new = Path(new).as_posix()
        if new != source:
            entry.source = new
            moved.append((name, source, new))
    return moved

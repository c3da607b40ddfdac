"""`mergetui validate RECIPE...`: every problem in each recipe, with where it is and how to fix it.

Recipes are mergetui TOML or mergekit YAML (by extension). Without `--offline` the model
checkpoints found on disk or in the Hugging Face cache are opened (headers only) to check they can
be merged as written. With `--offline` the recipe alone is checked (and that its local model
folders exist): Hub ids are not looked up, so nothing is said about the cache.
A multi-stage file (mergekit-multi's YAML, or [[stages]] in TOML) is checked stage by stage.
Exit status: 0 when no recipe has an error (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mergetui.cli.options import add_json_option

HELP = "check recipes (TOML or mergekit YAML) and say how to fix them"
DESCRIPTION = (
    "Check merge recipes: method, models, base, slices, parameters and, unless "
    "--offline, that the checkpoints can be merged. Exits 1 if any recipe has an error."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipes", nargs="+", metavar="RECIPE", help=".toml, .yaml or .yml file")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="check the recipe alone: do not open checkpoints or look Hub ids up in the cache",
    )
    add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    from mergetui.cli.output import print_problems
    from mergetui.errors import UserError
    from mergetui.recipe.io import load_recipe
    from mergetui.recipe.moe import load_moe
    from mergetui.recipe.stages import load_stages
    from mergetui.recipe.validate import Problem, validate_recipe

    results: dict[str, list[Problem]] = {}
    for path in args.recipes:
        try:
            stages = load_stages(path)
            if stages is not None:  # a multi-stage file: each stage under its own heading
                results.update(_stage_problems(path, stages, args.offline))
                continue
            moe = load_moe(path)
            if moe is not None:  # an MoE recipe: its models checked as `merge` checks them
                results[path] = _moe_problems(moe, path, args.offline)
                continue
            recipe = load_recipe(path)
        except UserError as exc:
            results[path] = [_problem(exc, path)]
            continue
        results[path] = validate_recipe(recipe, offline=args.offline, hub_cache=not args.offline)
        if recipe.search is not None:
            results[path] += _search_problems(recipe, path)

    if args.json:
        payload = {
            path: [problem.__dict__ for problem in problems] for path, problems in results.items()
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        for path, problems in results.items():
            print_problems(path, problems)
    failed = any(problem.is_error for problems in results.values() for problem in problems)
    return 1 if failed else 0


def _stage_problems(path: str, stages: list[Any], offline: bool) -> dict[str, list[Any]]:
    """Every stage's problems, keyed `FILE (stage 'NAME')`: the stages wired as `merge` wires them
    (an unnamed final stage needs no --out to be checked)."""
    from mergetui.recipe.stage_order import place_stages, validate_stages

    placed = place_stages(stages, path, need_output=False)
    found = validate_stages(placed, offline=offline, hub_cache=not offline)
    return {f"{path} ({s.label})": found[s.number] for s in sorted(placed, key=lambda s: s.number)}


def _moe_problems(recipe: Any, path: str, offline: bool) -> list[Any]:
    """An MoE recipe's models (unless `offline`): found, one architecture an output takes, each
    expert of the base's shape; the first problem, located (docs/moe.md)."""
    from pathlib import Path

    from mergetui.errors import UserError
    from mergetui.merge.moe_plan import check_moe_models

    if offline:
        return []
    try:
        check_moe_models(recipe, Path(path).parent)
    except UserError as exc:
        return [_problem(exc, path)]
    return []


def _problem(exc: Any, path: str) -> Any:
    """A UserError as the Problem `print_problems` shows, at its file and line when it has one."""
    from mergetui.recipe.validate import Problem

    file, _, line = (exc.where or path).rpartition(":")
    location = (file, int(line)) if file and line.isdigit() else (path, None)
    return Problem("error", None, exc.message, exc.fix, *location)


def _search_problems(recipe: Any, path: str) -> list[Any]:
    """A `[search]` table checked as `mergetui evolve` checks it before loading weights: its
    parameters, bounds, groups, objectives, text files and budget (the first problem found)."""
    from mergetui.errors import UserError
    from mergetui.search.spec import check_sizes, search_spec_from_recipe

    try:
        check_sizes(search_spec_from_recipe(recipe, recipe.search))
    except UserError as exc:
        return [_problem(exc, path)]
    return []

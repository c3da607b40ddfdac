"""`mergetui validate RECIPE...`: every problem in each recipe, with where it is and how to fix it.

Recipes are mergetui TOML or mergekit YAML (by extension). Without `--offline` the model
checkpoints found on disk or in the Hugging Face cache are opened (headers only) to check they can
be merged as written. With `--offline` the recipe alone is checked (and that its local model
folders exist): Hub ids are not looked up, so nothing is said about the cache.
Exit status: 0 when no recipe has an error (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check recipes (TOML or mergekit YAML) and say how to fix them",
        description="Check merge recipes: method, models, base, slices, parameters and, unless "
        "--offline, that the checkpoints can be merged. Exits 1 if any recipe has an error.",
    )
    parser.add_argument("recipes", nargs="+", metavar="RECIPE", help=".toml, .yaml or .yml file")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="check the recipe alone: do not open checkpoints or look Hub ids up in the cache",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergetui.errors import UserError
    from mergetui.recipe.io import load_recipe
    from mergetui.recipe.validate import Problem, validate_recipe

    results: dict[str, list[Problem]] = {}
    for path in args.recipes:
        try:
            recipe = load_recipe(path)
        except UserError as exc:
            file, _, line = (exc.where or path).rpartition(":")
            location = (file, int(line)) if file and line.isdigit() else (path, None)
            results[path] = [Problem("error", None, exc.message, exc.fix, *location)]
            continue
        results[path] = validate_recipe(recipe, offline=args.offline, hub_cache=not args.offline)

    if args.json:
        payload = {
            path: [problem.__dict__ for problem in problems] for path, problems in results.items()
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        for path, problems in results.items():
            _print_problems(path, problems)
    failed = any(problem.is_error for problems in results.values() for problem in problems)
    return 1 if failed else 0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _print_problems(path: str, problems: list) -> None:
    from rich.markup import escape

    from mergetui.cli.output import console

    out = console()
    errors = sum(1 for p in problems if p.is_error)
    warnings = len(problems) - errors
    if not problems:
        out.print(f"[bold]{escape(path)}[/]: [green]ok[/]", soft_wrap=True)
        return
    summary = [_plural(errors, "error")] if errors else []
    summary += [_plural(warnings, "warning")] if warnings else []
    colour = "red" if errors else "yellow"
    out.print(f"[bold]{escape(path)}[/]: [{colour}]{', '.join(summary)}[/]", soft_wrap=True)
    for problem in problems:
        label = "[bold red]error[/]  " if problem.is_error else "[yellow]warning[/]"
        out.print(
            f"  {label} [cyan]{escape(problem.location)}[/]: {escape(problem.message)}",
            soft_wrap=True,
        )
        if problem.fix:
            out.print(f"           [dim]fix:[/] {escape(problem.fix)}", soft_wrap=True)

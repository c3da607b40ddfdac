"""`mergetui merge FILE` for a multi-stage file (mergekit-multi's YAML, or `[[stages]]` in TOML).

Every stage is placed, wired and validated before anything runs (`recipe.stage_order`), and every
output folder is judged (`merge.stages`): a stage already merged from the same recipe is skipped, a
folder another recipe made needs `--force`. Then the stages run in order, each with the progress bar
of a single merge under a `stage 2/3: NAME` line; Ctrl-C cancels the stage that runs and keeps the
stages already finished (a rerun skips them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def run_stages(args: argparse.Namespace, stages: list[Any], *, shard_size: int, device: str) -> int:
    """Place, check, then dry-run or run the stages of `args.recipe`; the command's exit status."""
    import dataclasses

    from mergetui.cli.output import console_err
    from mergetui.errors import CancelledError
    from mergetui.recipe.stage_order import place_stages

    placed = place_stages(stages, args.recipe, out=args.out, intermediate=args.intermediate_dir)
    if args.seed is not None:
        placed = [dataclasses.replace(s, recipe=_with_seed(s.recipe, args.seed)) for s in placed]
    if not _validate(placed, args.recipe):
        return 1
    states = _judge(placed, args)
    if args.dry_run:
        _dry_run(placed, states, args, shard_size=shard_size, device=device)
        return 0
    from mergetui.cli.cmd_merge import download_missing_models

    try:
        for stage in placed:
            download_missing_models(stage.recipe, Path(args.recipe).parent, err=console_err())
    except CancelledError:
        console_err().print("[yellow]Cancelled:[/] download stopped; nothing was merged.")
        return 130
    return _run(placed, states, args, shard_size=shard_size, device=device)


def _with_seed(recipe: Any, seed: int) -> Any:
    import dataclasses

    copy = dataclasses.replace(recipe, seed=seed)
    copy.locations, copy.source_path = recipe.locations, recipe.source_path
    return copy


def _validate(stages: list[Any], path: Path) -> bool:
    """Each stage's problems as `mergetui validate` prints them; False when any is an error."""
    from mergetui.cli.output import print_problems
    from mergetui.recipe.stage_order import validate_stages

    results = validate_stages(stages, offline=True, hub_cache=True)
    failed = False
    for stage in sorted(stages, key=lambda s: s.number):
        problems = results[stage.number]
        if problems:
            print_problems(f"{path} ({stage.label})", problems)
        failed = failed or any(p.is_error for p in problems)
    return not failed


def _judge(stages: list[Any], args: argparse.Namespace) -> list[Any]:
    """Each stage's output state; a folder another recipe made is an error now, before anything
    runs, unless `--force` (and then only one a merge wrote, as for single merges)."""
    from mergetui.errors import UserError
    from mergetui.merge.stages import stage_outputs
    from mergetui.merge.target import replace_refusal

    states = stage_outputs(stages, args.seed)
    for stage, state in zip(stages, states, strict=True):
        if state.state != "other" or args.dry_run:
            continue  # a dry run says what a run would need
        if not args.force:
            raise UserError(
                f"{stage.label}'s output folder already exists and {state.why}",
                where=str(stage.output),
                fix="pass --force to replace it (once the stage's new merge is complete), "
                "or choose another --out / --intermediate-dir",
            )
        why = replace_refusal(stage.output, inputs=_inputs(stage), recipe_dir=args.recipe.parent)
        if why is not None:
            raise UserError(
                f"--force only replaces a folder that a previous merge wrote, and {stage.label}'s "
                f"{why}",
                where=str(stage.output),
                fix="choose another --out / --intermediate-dir (or move that folder yourself)",
            )
    return states


def _inputs(stage: Any) -> list[Path]:
    """The stage's local model folders that exist now (what `--force` must never replace)."""
    from mergetui.recipe.paths import locate_model, recipe_folder

    folder = recipe_folder(stage.recipe.source_path)
    found = [locate_model(e.source, e.revision, folder) for e in stage.recipe.models.values()]
    return [f[0] for f in found if f is not None and f[1]]


def _heading(stage: Any, index: int, count: int) -> str:
    from rich.markup import escape

    name = stage.name or "final"
    return f"[bold]stage {index}/{count}: {escape(name)}[/] -> {escape(str(stage.output))}"


def _plan(stage: Any, args: argparse.Namespace, *, shard_size: int, device: str) -> Any:
    from mergetui.merge.plan import make_plan

    return make_plan(
        stage.recipe,
        recipe_dir=Path(args.recipe).parent,
        out=stage.output,
        shard_size=shard_size,
        device=device,
        seed=args.seed,
        allow_bin=args.allow_bin,
        trust_remote_code=args.trust_remote_code,
        allow_mixed_architectures=args.allow_mixed_architectures,
    )


def _dry_run(
    stages: list[Any], states: list[Any], args: argparse.Namespace, *, shard_size: int, device: str
) -> None:
    """Every stage's heading and verdict, and its plan where its inputs exist already."""
    from rich.markup import escape

    from mergetui.cli.cmd_merge import print_plan
    from mergetui.cli.output import console

    out = console()
    by_name = {stage.name: stage for stage in stages if stage.name is not None}
    for index, (stage, state) in enumerate(zip(stages, states, strict=True), start=1):
        out.print(_heading(stage, index, len(stages)), soft_wrap=True)
        verdict = {
            "missing": "will run",
            "current": "up to date (merged from this recipe): skipped",
            "stale": f"will run again ({state.why})",
            "other": f"exists and {state.why}: "
            + ("--force replaces it" if args.force else "a run needs --force"),
        }[state.state]
        out.print(f"  {escape(verdict)}", soft_wrap=True)
        waiting = [n for n in stage.uses if not Path(by_name[n].output).is_dir()]
        if waiting:
            out.print(
                f"  its plan needs the output of {escape(', '.join(waiting))}, which this run "
                "merges first",
                soft_wrap=True,
            )
            continue
        plan = _plan(stage, args, shard_size=shard_size, device=device)
        print_plan(plan, force=args.force, show_output=False)


def _run(
    stages: list[Any], states: list[Any], args: argparse.Namespace, *, shard_size: int, device: str
) -> int:
    """The stages in order: skipped when up to date, else planned (now that their inputs exist)
    and merged under the progress bar; the first that fails or is cancelled ends the run."""
    from rich.markup import escape

    from mergetui.cli.cmd_merge import run_with_progress
    from mergetui.cli.output import console, console_err
    from mergetui.errors import UserError
    from mergetui.merge.target import check_output, output_guard

    out, err = console(), console_err()
    merged, code = 0, 0
    for index, (stage, state) in enumerate(zip(stages, states, strict=True), start=1):
        out.print(_heading(stage, index, len(stages)), soft_wrap=True)
        if not state.runs:
            out.print("  up to date (merged from this recipe): skipped", soft_wrap=True)
            continue
        force = args.force or state.state == "stale"
        try:
            plan = _plan(stage, args, shard_size=shard_size, device=device)
            check_output(plan.output_dir, force, **output_guard(plan))
            label = f"stage {index}/{len(stages)} "
            code = run_with_progress(plan, force=force, out=out, err=err, label=label)
        except UserError:  # what only its plan can see (its input is an earlier stage's output)
            code = 1
            raise
        finally:
            if code != 0 and merged:
                err.print("  the stages merged before it are kept: running again skips them")
        if code != 0:
            return code
        merged += 1
    final = next((s for s in stages if s.name is None), stages[-1])
    out.print(
        f"[green]Done:[/] {len(stages)} stages, {merged} merged, {len(stages) - merged} up to "
        f"date; the final model is in {escape(str(final.output))}",
        soft_wrap=True,
    )
    return 0

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
    from mergetui.merge.stages import with_seed
    from mergetui.recipe.stage_order import place_stages

    placed = place_stages(stages, args.recipe, out=args.out, intermediate=args.intermediate_dir)
    if args.seed is not None:
        placed = [dataclasses.replace(s, recipe=with_seed(s.recipe, args.seed)) for s in placed]
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
    runs, unless `--force` (`merge.stages.check_outputs`). A dry run says what a run would need."""
    from mergetui.merge.stages import check_outputs, stage_outputs

    states = stage_outputs(stages, args.seed)
    if not args.dry_run:
        check_outputs(stages, states, force=args.force, recipe_dir=args.recipe.parent)
    return states


def _heading(stage: Any, index: int, count: int) -> str:
    from rich.markup import escape

    name = stage.name or "final"
    return f"[bold]stage {index}/{count}: {escape(name)}[/] -> {escape(str(stage.output))}"


def _plan(stage: Any, args: argparse.Namespace, *, shard_size: int, device: str) -> Any:
    from mergetui.cli.cmd_merge import plan_from_args

    return plan_from_args(
        stage.recipe,
        args,
        recipe_dir=Path(args.recipe).parent,
        out=stage.output,
        shard_size=shard_size,
        device=device,
    )


def _dry_run(
    stages: list[Any], states: list[Any], args: argparse.Namespace, *, shard_size: int, device: str
) -> None:
    """Every stage's heading and verdict, and its plan where its inputs exist already."""
    from rich.markup import escape

    from mergetui.cli.cmd_merge import print_plan
    from mergetui.cli.output import console
    from mergetui.merge.stages import SKIPPED

    out = console()
    by_name = {stage.name: stage for stage in stages if stage.name is not None}
    for index, (stage, state) in enumerate(zip(stages, states, strict=True), start=1):
        out.print(_heading(stage, index, len(stages)), soft_wrap=True)
        verdict = {
            "missing": "will run",
            "current": SKIPPED,
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
    """The stages in order (`merge.stages.run_steps`: skipped when up to date, else planned now
    that their inputs exist, and merged under the progress bar); the first that fails or is
    cancelled ends the run."""
    from rich.markup import escape

    from mergetui.cli.cmd_merge import run_with_progress
    from mergetui.cli.output import console, console_err
    from mergetui.merge.stages import KEPT, SKIPPED, final_stage, run_steps, stage_steps

    out, err = console(), console_err()
    run = run_steps(
        stage_steps(stages, states, force=args.force),
        plan=lambda step: _plan(step.stage, args, shard_size=shard_size, device=device),
        merge=lambda step, plan: run_with_progress(
            plan, force=step.force, out=out, err=err, label=f"stage {step.index}/{step.count} "
        ),
        started=lambda step: out.print(
            _heading(step.stage, step.index, step.count), soft_wrap=True
        ),
        skipped=lambda step: out.print(f"  {SKIPPED}", soft_wrap=True),
        kept=lambda merged: err.print(f"  {KEPT}"),
    )
    if run.code != 0:
        return run.code
    merged = run.merged
    final = final_stage(stages)
    out.print(
        f"[green]Done:[/] {len(stages)} stages, {merged} merged, {len(stages) - merged} up to "
        f"date; the final model is in {escape(str(final.output))}",
        soft_wrap=True,
    )
    return 0

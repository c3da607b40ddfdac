"""`mergetui merge RECIPE`: run a recipe (ours, or a mergekit YAML as it is) without the app.

The recipe is validated first (problems printed as `mergetui validate` prints them), then planned
from headers alone; `--dry-run` stops there and prints the plan. A run shows a Rich progress bar
(bytes, tensors, throughput, ETA). Ctrl-C, SIGTERM and SIGHUP cancel cleanly: no output, no
temporary folder, exit 128 + the signal's number (130 for Ctrl-C).
Hub models the recipe names that are not on this machine are downloaded first (with a progress bar),
or, offline, the merge stops at once with a message naming them.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path
from typing import Any

from mergetui.cli.options import add_allow_bin_option

DEFAULT_SHARD_SIZE_TEXT = "5GB"


HELP = "run a merge recipe (mergetui TOML or mergekit YAML)"
DESCRIPTION = "Merge the checkpoints a recipe names into a new model folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, help="recipe file (.toml, or mergekit .yaml/.yml)")
    parser.add_argument("--out", type=Path, help="output folder (overrides the recipe's output)")
    parser.add_argument(
        "--intermediate-dir",
        "-I",
        type=Path,
        help="multi-stage files: where the named stages' outputs go, one folder each "
        "(default: OUT-stages beside --out)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where to compute: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
    )
    parser.add_argument(
        "--shard-size",
        default=DEFAULT_SHARD_SIZE_TEXT,
        help="largest output file, e.g. 5GB (default), 2GiB, 500MB",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing output (once the new one is done)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    parser.add_argument("--seed", type=int, help="seed for the random methods (dare, della)")
    add_allow_bin_option(parser)
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the Python code a checkpoint ships (auto_map): load its tokenizer with it and "
        "copy it into the output; only for code you trust (default: never run, left out)",
    )
    parser.add_argument(
        "--allow-mixed-architectures",
        "--allow-crimes",
        dest="allow_mixed_architectures",
        action="store_true",
        help="merge models of different architectures (mergekit's --allow-crimes); the output "
        "takes the base's (or first model's) config",
    )


def run(args: argparse.Namespace) -> int:
    """A merge is one batch job whose objects are freed by reference counting; the cyclic
    collector only rescans the hundreds of thousands of objects torch's import leaves behind.
    Paused from before that import to the end, it saved ~0.4 s of a ~4 s merge here."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args)
    finally:
        if was_enabled:
            gc.enable()


def _run(args: argparse.Namespace) -> int:
    from mergetui.cli.output import console, console_err
    from mergetui.device import check_device_name
    from mergetui.errors import UserError
    from mergetui.merge.target import check_output, output_guard
    from mergetui.merge.writer import parse_size
    from mergetui.recipe.io import load_recipe
    from mergetui.recipe.moe import load_moe
    from mergetui.recipe.stages import load_stages

    recipe_path: Path = args.recipe
    shard_size = parse_size(args.shard_size)
    device = check_device_name(args.device)
    stages = load_stages(recipe_path)
    if stages is not None:
        from mergetui.cli.merge_stages import run_stages

        return run_stages(args, stages, shard_size=shard_size, device=device)
    moe = load_moe(recipe_path)  # a mergekit-moe config or a [moe] table: docs/moe.md
    if moe is not None:
        from mergetui.cli.merge_moe import run_moe_recipe

        return run_moe_recipe(args, moe, shard_size=shard_size, device=device)
    if args.intermediate_dir is not None:
        raise UserError(
            "--intermediate-dir is for multi-stage files, and this one holds one recipe",
            where=str(recipe_path),
            fix="drop --intermediate-dir (or name the stages: see docs/multi-stage.md)",
        )
    recipe = load_recipe(recipe_path)  # a missing file: the same line, fix included, as validate
    if args.seed is not None:
        recipe.seed = args.seed
    if not _validate(recipe, recipe_path):
        return 1
    if not args.dry_run:
        from mergetui.errors import CancelledError

        try:
            download_missing_models(recipe, recipe_path.parent, err=console_err())
        except CancelledError:
            console_err().print("[yellow]Cancelled:[/] download stopped; nothing was merged.")
            return 130

    plan = plan_from_args(
        recipe,
        args,
        recipe_dir=recipe_path.parent,
        out=args.out,
        shard_size=shard_size,
        device=device,
    )
    if args.dry_run:
        print_plan(plan, force=args.force)
        return 0
    check_output(plan.output_dir, args.force, **output_guard(plan))  # the engine checks again
    # The plan's notices reach the user as the engine's Notice events, printed by on_event.
    return run_with_progress(plan, force=args.force, out=console(), err=console_err())


def plan_from_args(
    recipe: Any,
    args: argparse.Namespace,
    *,
    recipe_dir: Path,
    out: Path | str | None,
    shard_size: int,
    device: str,
) -> Any:
    """The engine's plan for `recipe` with `mergetui merge`'s options (a single recipe's or a
    stage's): the one place the command's flags reach `make_plan`."""
    from mergetui.merge.plan import make_plan

    return make_plan(
        recipe,
        recipe_dir=recipe_dir,
        out=out,
        shard_size=shard_size,
        device=device,
        seed=args.seed,
        allow_bin=args.allow_bin,
        trust_remote_code=args.trust_remote_code,
        allow_mixed_architectures=args.allow_mixed_architectures,
    )


def missing_hub_models(recipe: Any, recipe_dir: Path) -> dict[str, Any]:
    """The recipe's models that are Hub ids with no folder or cached snapshot on this machine."""
    from mergetui.checkpoints.locate import looks_like_hub_id
    from mergetui.recipe.paths import locate_model

    return {
        name: entry
        for name, entry in recipe.models.items()
        if looks_like_hub_id(entry.source)
        and locate_model(entry.source, entry.revision, recipe_dir) is None
    }


def missing_hub_adapters(recipe: Any, recipe_dir: Path) -> dict[str, tuple[str, str | None]]:
    """The recipe's LoRA adapters (by model name) that are Hub ids not on this machine, as
    (repo id, revision)."""
    from mergetui.checkpoints.locate import looks_like_hub_id
    from mergetui.recipe.paths import locate_adapter

    missing = {}
    for name, entry in recipe.models.items():
        if entry.lora is None:
            continue
        repo, _, revision = entry.lora.partition("@")
        if looks_like_hub_id(repo) and locate_adapter(entry.lora, recipe_dir) is None:
            missing[name] = (repo, revision or None)
    return missing


def download_missing_models(recipe: Any, recipe_dir: Path, *, err: Any) -> None:
    """Pull each missing Hub model and adapter (progress on `err`); offline, stop with a clear
    message."""
    from mergetui.checkpoints.hub import HubOffline, is_offline
    from mergetui.cli.transfers import pull_with_progress
    from mergetui.errors import UserError

    pulls = [
        (f"model {name}", entry.source, entry.revision, f"models.{name}.source")
        for name, entry in missing_hub_models(recipe, recipe_dir).items()
    ] + [
        (f"the adapter of model {name}", repo, revision, f"models.{name}.lora")
        for name, (repo, revision) in missing_hub_adapters(recipe, recipe_dir).items()
    ]
    if not pulls:
        return
    listed = ", ".join(f"{what} ({repo})" for what, repo, _, _ in pulls)
    if is_offline():
        raise UserError(
            f"offline mode (HF_HUB_OFFLINE=1) is on and these are not on this machine: {listed}",
            fix="unset HF_HUB_OFFLINE to download them, or pull them first when online "
            "(mergetui pull REPO_ID)",
        )
    for what, repo, revision, where in pulls:
        err.print(f"{what}: {repo} is not on this machine; downloading it first")
        try:
            pull_with_progress(repo, revision=revision, err=err)
        except HubOffline as exc:
            raise UserError(
                f"{what} ({repo}) is not on this machine and {exc.message}",
                where=where,
                fix=exc.fix,
            ) from None


def _validate(recipe: Any, recipe_path: Path) -> bool:
    """Print the validator's problems as `mergetui validate` does; False when any is an error."""
    from mergetui.cli.output import print_problems
    from mergetui.recipe.validate import validate_recipe

    problems = validate_recipe(recipe, offline=True, base_dir=recipe_path.parent)
    if not problems:
        return True
    print_problems(str(recipe_path), problems)
    return not any(p.is_error for p in problems)


def print_plan(plan: Any, *, force: bool, show_output: bool = True) -> None:
    """The plan as a run would execute it: `auto` resolved to its device (this imports torch),
    and the peak estimate for that device; with `show_output`, whether its folder exists and
    what a run would do about it (a multi-stage dry run says that per stage itself)."""
    import dataclasses

    from rich.markup import escape
    from rich.table import Table

    from mergetui.cli.output import console
    from mergetui.device import resolve_device
    from mergetui.merge.plan import estimate_peak_bytes
    from mergetui.merge.target import output_guard, replace_refusal

    device = str(resolve_device(plan.device))
    shown = f"{device} (auto)" if plan.device == "auto" else device
    peak = estimate_peak_bytes(plan.tensors, method=plan.method, device=device)
    plan = dataclasses.replace(plan, device=device, estimated_peak_bytes=peak)
    table = Table(title="merge plan (dry run: nothing written)", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for line in plan.summary_lines():
        key, _, value = line.partition(": ")
        table.add_row(key, shown if key == "device" else value)
    console().print(table)
    if show_output and plan.output_dir.exists():
        why = replace_refusal(plan.output_dir, **output_guard(plan)) if force else None
        if not force:
            verdict = " (a run needs --force)"
        elif why is None:
            verdict = " (--force will replace it)"
        else:
            verdict = f" (--force cannot replace it: {escape(why)})"
        console().print(
            f"[yellow]the output folder exists[/]: {escape(str(plan.output_dir))}{verdict}",
            soft_wrap=True,
        )
    for notice in plan.notices:
        console().print(f"[yellow]note:[/] {notice}", soft_wrap=True)


def run_with_progress(plan: Any, *, force: bool, out: Any, err: Any, label: str = "") -> int:
    """Run the plan under a progress bar (`label` before its description, e.g. a stage's); Ctrl-C,
    SIGTERM and SIGHUP cancel it cleanly: the exit status 128 + the signal."""

    from rich.markup import escape

    from mergetui.cli.interrupts import run_with_tensor_bar
    from mergetui.formatting import human_bytes
    from mergetui.merge.runner import run_merge

    result, status = run_with_tensor_bar(
        lambda on_event, cancel: run_merge(plan, on_event=on_event, cancel=cancel, force=force),
        err=err,
        total_bytes=plan.total_bytes,
        tensor_count=plan.tensor_count,
        verb=f"{label}merging",
    )
    if status:
        return status
    out.print(
        f"[green]Merged[/] {result.tensor_count} tensors ({human_bytes(result.total_bytes)}) "
        f"into {escape(str(result.output_dir))} in {result.seconds:.1f} s",
        soft_wrap=True,
    )
    return 0

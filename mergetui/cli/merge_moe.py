"""`mergetui merge MOE_RECIPE`: a mergekit-moe config (or mergetui's `[moe]` TOML) assembled into a
Mixtral or Qwen2-MoE folder, with the merge's progress bar, dry run and clean cancel. Reached from
`cmd_merge` when the recipe file is an MoE recipe; the work is `merge.moe_plan` and `merge.moe_run`.
"""

from __future__ import annotations

import argparse
from typing import Any

from mergetui.recipe.moe import MoeRecipe


def run_moe_recipe(
    args: argparse.Namespace, recipe: MoeRecipe, *, shard_size: int, device: str
) -> int:
    """Plan (every check before a weight is read), then `--dry-run` prints the plan or a run
    assembles the model under a progress bar."""
    from mergetui.cli.output import console, console_err
    from mergetui.errors import UserError
    from mergetui.merge.moe_plan import make_moe_plan
    from mergetui.merge.moe_run import moe_guard
    from mergetui.merge.target import check_output, replace_refusal

    if args.intermediate_dir is not None:
        raise UserError(
            "--intermediate-dir is for multi-stage files, and this one is an MoE recipe",
            where=str(args.recipe),
            fix="drop --intermediate-dir",
        )
    if args.allow_mixed_architectures:
        raise UserError(
            "--allow-mixed-architectures does not apply to an MoE: its experts' MLPs go into "
            "the base's layers, so they must share its architecture and shapes",
            where=str(args.recipe),
            fix="drop --allow-mixed-architectures",
        )
    if not args.dry_run:
        from mergetui.errors import CancelledError

        try:
            _download_missing(recipe, args.recipe.parent, err=console_err())
        except CancelledError:
            console_err().print("[yellow]Cancelled:[/] download stopped; nothing was assembled.")
            return 130
    plan = make_moe_plan(
        recipe,
        recipe_dir=args.recipe.parent,
        out=args.out,
        shard_size=shard_size,
        device=device,
        seed=args.seed,
        allow_bin=args.allow_bin,
    )
    if args.dry_run:
        out = console()
        out.print("[bold]MoE plan (dry run: nothing written)[/]")
        for line in plan.summary_lines():
            out.print(f"  {line}", markup=False, soft_wrap=True)
        for notice in plan.notices:
            out.print(f"  note: {notice}", markup=False, soft_wrap=True)
        if plan.output_dir.exists():
            why = replace_refusal(plan.output_dir, **moe_guard(plan)) if args.force else None
            verdict = (
                "a run needs --force"
                if not args.force
                else "--force will replace it"
                if why is None
                else f"--force cannot replace it: {why}"
            )
            out.print(f"  the output folder exists ({verdict})", markup=False, soft_wrap=True)
        return 0
    check_output(plan.output_dir, args.force, **moe_guard(plan))
    return _run_with_progress(plan, force=args.force, out=console(), err=console_err())


def _download_missing(recipe: MoeRecipe, recipe_dir: Any, *, err: Any) -> None:
    """Pull each Hub model the recipe names that is not on this machine, as `merge` does for a
    recipe's models; offline, one message naming them all."""
    from mergetui.checkpoints.hub import HubOffline, is_offline
    from mergetui.checkpoints.locate import looks_like_hub_id
    from mergetui.cli.transfers import pull_with_progress
    from mergetui.errors import UserError
    from mergetui.recipe.paths import locate_model
    from mergetui.recipe.yaml_import import split_reference

    sources = [recipe.base] + [e.source for _, e in recipe.all_experts()]
    missing = [
        s
        for s in dict.fromkeys(sources)
        if looks_like_hub_id(split_reference(s)[0])
        and locate_model(*split_reference(s), recipe_dir) is None
    ]
    if not missing:
        return
    if is_offline():
        raise UserError(
            "offline mode (HF_HUB_OFFLINE=1) is on and these models are not on this machine: "
            + ", ".join(missing),
            where=recipe.source_path,
            fix="unset HF_HUB_OFFLINE to download them, or pull them first when online "
            "(mergetui pull REPO_ID)",
        )
    for source in missing:
        err.print(f"{source} is not on this machine; downloading it first")
        try:
            path, revision = split_reference(source)
            pull_with_progress(path, revision=revision, err=err)
        except HubOffline as exc:
            raise UserError(
                f"{source} is not on this machine and {exc.message}",
                where=recipe.source_path,
                fix=exc.fix,
            ) from None


def _run_with_progress(plan: Any, *, force: bool, out: Any, err: Any) -> int:
    """The merge's progress bar over `run_moe`; Ctrl-C, SIGTERM, SIGHUP: 128 + the signal."""
    from rich.markup import escape

    from mergetui.cli.interrupts import run_with_tensor_bar
    from mergetui.formatting import human_bytes
    from mergetui.merge.moe_run import run_moe

    result, status = run_with_tensor_bar(
        lambda on_event, cancel: run_moe(plan, on_event=on_event, cancel=cancel, force=force),
        err=err,
        total_bytes=plan.total_bytes,
        tensor_count=len(plan.tensors),
        verb="assembling",
        verb_on_device=f"assembling {plan.architecture}",
    )
    if status:
        return status
    out.print(
        f"[green]Assembled[/] a {plan.architecture} of {len(plan.recipe.experts)} experts: "
        f"{result.tensor_count} tensors ({human_bytes(result.total_bytes)}) into "
        f"{escape(str(result.output_dir))} in {result.seconds:.1f} s",
        soft_wrap=True,
    )
    return 0

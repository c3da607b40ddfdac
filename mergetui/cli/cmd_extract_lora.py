"""`mergetui extract-lora FINETUNED BASE --out DIR`: a PEFT LoRA adapter from two checkpoints.

mergekit-extract-lora's command, with its defaults (rank 128, scale split over A and B,
embeddings in modules_to_save unless --embed-lora), plus `--energy` (each module's rank from the
share of its delta's energy to keep) and a table of each module's rank and relative
reconstruction error. Models are folders, or Hub ids found in the HF cache (pulled first when
not there, as merge inputs are). The work is `merge.extract_plan` and `merge.extract_run`; Ctrl-C,
SIGTERM or SIGHUP stop it after the module at work, leaving nothing behind.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from mergetui.cli.options import add_allow_bin_option

HELP = "extract a PEFT LoRA adapter from a fine-tune and its base (truncated SVD)"
DESCRIPTION = (
    "Write a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors, README.md) whose "
    "update B @ A approximates FINETUNED - BASE, module by module, as mergekit-extract-lora does. "
    "Base + adapter then stands in for the fine-tune, to the relative error the table reports."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mergetui.device import DEVICE_CHOICES_HELP
    from mergetui.merge.extract_plan import DEFAULT_RANK

    parser.add_argument("finetuned", metavar="FINETUNED", help="the fine-tune: folder or Hub id")
    parser.add_argument("base", metavar="BASE", help="its base model: folder or Hub id")
    parser.add_argument("--out", required=True, metavar="DIR", help="the adapter folder to write")
    parser.add_argument(
        "--rank",
        type=int,
        default=DEFAULT_RANK,
        metavar="N",
        help=f"the largest rank of a module (default {DEFAULT_RANK}, capped by its shape)",
    )
    parser.add_argument(
        "--energy",
        type=float,
        metavar="F",
        help="per module, the smallest rank keeping this share (0 < F <= 1) of the delta's "
        "squared singular values, capped by --rank",
    )
    parser.add_argument(
        "--embed-lora",
        action="store_true",
        help="decompose the embeddings too, instead of saving them whole in modules_to_save",
    )
    parser.add_argument(
        "--save-module",
        action="append",
        default=[],
        metavar="NAME",
        help="save this module whole (a name like lm_head, or a full module path); repeatable",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="REGEX",
        help="decompose only modules whose name matches one of these; repeatable",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="REGEX",
        help="do not decompose modules whose name matches; repeatable",
    )
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_CHOICES_HELP}")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace --out, only if it is an adapter extract-lora wrote (once the new one is "
        "done)",
    )
    add_allow_bin_option(parser)


def run(args: argparse.Namespace) -> int:
    from mergetui.cli.interrupts import install_stop_signals, restore_signals
    from mergetui.cli.output import console_err
    from mergetui.device import check_device_name
    from mergetui.errors import CancelledError
    from mergetui.merge.extract_plan import ExtractOptions, check_options, plan_extraction
    from mergetui.merge.extract_run import run_extraction

    options = ExtractOptions(
        rank=args.rank,
        energy=args.energy,
        embed_lora=args.embed_lora,
        save_modules=tuple(args.save_module),
        include=tuple(args.include),
        exclude=tuple(args.exclude),
    )
    check_options(options)
    device = check_device_name(args.device)
    _unmap_freed_blocks()
    out = Path(args.out).expanduser()
    err = console_err()
    finetuned = _locate(args.finetuned, err)
    base = _locate(args.base, err)
    plan = plan_extraction(
        finetuned,
        base,
        options,
        finetuned_source=args.finetuned,
        base_source=args.base,
        allow_bin=args.allow_bin,
    )
    for notice in plan.notices:
        err.print(f"[yellow]note:[/] {notice}", highlight=False)
    cancel = threading.Event()
    received: list[int] = []
    previous = install_stop_signals(cancel, received)
    try:
        result = _run_with_progress(plan, out, args.force, device, cancel, run_extraction)
    except (KeyboardInterrupt, CancelledError):
        err.print("[yellow]Cancelled: nothing was written.[/]")
        return 128 + (received[0] if received else signal.SIGINT)
    finally:
        restore_signals(previous)
    _print_table(result, plan)
    return 0


# glibc's malloc gives blocks over 128 KiB their own mmap but raises that threshold to the size
# of any such block freed, so each module's deltas (tens of MiB) soon come from the heap, which
# keeps them when freed: the peak grows by the heap's holes. A fixed threshold returns every
# large block to the system when freed (this command's process does nothing else).
_MMAP_THRESHOLD = 1 << 18


def _unmap_freed_blocks() -> None:
    from mergetui.malloc import set_malloc_thresholds

    set_malloc_thresholds(_MMAP_THRESHOLD)


def _locate(source: str, err: Any) -> Path:
    """A folder, a Hub id in the HF cache, or a Hub id pulled now (as merge does its inputs)."""
    from mergetui.checkpoints.files import local_file
    from mergetui.checkpoints.hub import is_offline
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id
    from mergetui.errors import UserError

    if local_file(source) is not None:
        raise UserError(
            "this is a file; extract-lora reads checkpoint folders",
            where=source,
            fix=f"pass the folder that holds it: {Path(source).parent}",
        )
    folder = find_local(source)
    if folder is not None:
        return Path(folder)
    if not looks_like_hub_id(source) or Path(source).expanduser().exists():
        raise UserError("checkpoint folder not found", where=source, fix="check the path")
    if is_offline():
        raise UserError(
            "not a local folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)",
            where=source,
            fix="unset HF_HUB_OFFLINE to download it, or pull it first (mergetui pull REPO_ID)",
        )
    from mergetui.cli.transfers import pull_with_progress

    return Path(pull_with_progress(source, err=err))


def _run_with_progress(
    plan: Any, out: Path, force: bool, device: str, cancel: threading.Event, run: Any
) -> Any:
    """The run under a Rich progress bar (bytes read, the module at work)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from mergetui.cli.output import console_err

    with Progress(
        TextColumn("[bold]extracting[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[module]}", style="dim"),
        console=console_err(),
        transient=True,
    ) as progress:
        task = progress.add_task("extract", total=max(plan.total_bytes, 1), module="")

        def on_event(event: Any) -> None:
            progress.update(task, completed=event.done, module=event.module[-48:])

        return run(plan, out, force=force, device=device, on_event=on_event, cancel=cancel)


def _print_table(result: Any, plan: Any) -> None:
    """Each module's rank and relative reconstruction error, then where the adapter is."""
    from rich.markup import escape
    from rich.table import Table

    from mergetui.cli.output import console

    out = console()
    table = Table(expand=False)
    table.add_column("module")
    table.add_column("rank", justify="right")
    table.add_column("of", justify="right")
    table.add_column("energy kept", justify="right")
    table.add_column("rel. error", justify="right")
    for module in result.modules:
        table.add_row(
            escape(module.module),
            str(module.rank),
            str(module.max_rank),
            f"{module.energy:.4f}",
            f"{module.error:.4g}",
        )
    out.print(table)
    config = result.config
    out.print(
        f"r {config['r']} (lora_alpha {config['lora_alpha']}, "
        f"{len(config['rank_pattern'])} modules with another rank); "
        f"largest relative error {result.max_error:.4g}",
        highlight=False,
    )
    if plan.modules_to_save:
        out.print(f"saved whole: {escape(', '.join(plan.modules_to_save))}", highlight=False)
    out.print(
        f"[green]wrote[/] {escape(str(result.out))} in {result.seconds:.1f} s", highlight=False
    )

"""`mergetui diff MODEL_A MODEL_B [--base BASE]`: where two checkpoints differ, layer by layer.

Cosine similarity and relative distance of each model to the reference (the base, or MODEL_A when
there is none) and, with a base, the sign agreement of the task vectors: a table with one row per
layer and a sparkline per metric, so the layers where the parents part ways stand out. `--json`
prints everything (per block kind too; with `--kind`, the top-level numbers are that kind's, as in
the table) for scripts. Results are cached (see docs/insight.md).
After a merge, `mergetui diff PARENT_A PARENT_B --base MERGED` compares each parent with the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mergetui.cli.options import add_allow_bin_option, add_json_option

SPARK = "▁▂▃▄▅▆▇█"
KIND_CHOICES = ("embedding", "attention", "mlp", "norm", "head", "other")


HELP = "compare checkpoints layer by layer (cosine, distance, sign agreement)"
DESCRIPTION = (
    "Compare checkpoints tensor by tensor and show, per layer, how far each model "
    "is from the reference (the base, or the first model): cosine similarity, relative "
    "distance |x - ref| / |ref| and, for two or more task vectors, their sign agreement."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mergetui.device import DEVICE_CHOICES_HELP

    parser.add_argument("model_a", metavar="MODEL_A", help="checkpoint folder or cached Hub id")
    parser.add_argument("model_b", metavar="MODEL_B", help="checkpoint folder or cached Hub id")
    parser.add_argument("more", metavar="MODEL", nargs="*", help="more models to compare")
    parser.add_argument(
        "--base", metavar="BASE", help="the reference the models moved from (task vectors x - base)"
    )
    parser.add_argument(
        "--kind",
        choices=KIND_CHOICES,
        help="only tensors of this block kind, in the table and the JSON (default: whole layers)",
    )
    add_json_option(parser)
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_CHOICES_HELP}")
    parser.add_argument("--no-cache", action="store_true", help="recompute even if cached")
    add_allow_bin_option(parser)


def _locate(source: str) -> Path:
    from mergetui.checkpoints.files import local_file
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id
    from mergetui.errors import UserError

    file = local_file(source)
    if file is not None:
        raise UserError(
            "this is a file; diff compares checkpoint folders",
            where=source,
            fix=f"pass the folder that holds it: {file.parent}",
        )
    folder = find_local(source)
    if folder is None:
        if looks_like_hub_id(source):
            raise UserError(
                "not a local folder, and not in the Hugging Face cache",
                where=source,
                fix=f"download it first (huggingface-cli download {source}) or give a folder",
            )
        raise UserError("checkpoint folder not found", where=source, fix="check the path")
    return Path(folder)


def model_names(sources: list[str]) -> list[str]:
    """Short unique names for the models: their folder names, numbered when they clash."""
    names: list[str] = []
    for source in sources:
        stem = Path(source.rstrip("/")).name or source
        name = stem
        number = 2
        while name in names:
            name = f"{stem}-{number}"
            number += 1
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    from mergetui.device import check_device_name
    from mergetui.errors import UserError
    from mergetui.merge.analysis_plan import plan_analysis
    from mergetui.merge.analysis_run import run_analysis

    device = check_device_name(args.device)
    sources = [args.model_a, args.model_b, *args.more]
    if args.base is not None:
        sources.append(args.base)
    names = model_names(sources)
    paths = [_locate(source) for source in sources]
    resolved = [p.resolve() for p in paths]
    if args.base is not None and resolved[-1] in resolved[:-1]:
        raise UserError(
            "the base is also one of the compared models", where=args.base, fix="drop it from them"
        )
    models = dict(zip(names, paths, strict=True))
    base = names[-1] if args.base is not None else None
    plan = plan_analysis(models, base, allow_bin=args.allow_bin)
    analysis = _run_with_progress(plan, run_analysis, device, not args.no_cache, quiet=args.json)
    if args.json:
        data = json_for_kind(analysis.to_dict(), args.kind)
        data["paths"] = {name: str(path) for name, path in models.items()}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return 0
    _print_table(analysis, args.kind)
    return 0


def json_for_kind(data: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """`--json` says what the table says: with `--kind`, `overall` and each row's numbers are that
    block kind's (a row with no such tensors has none), so `.rows[1].agreement` is layer 0's MLP
    agreement, not the whole layer's. `kinds` keeps every kind's numbers either way."""
    data["kind"] = kind
    if kind is None:
        return data
    empty = {"numel": 0, "cosine": {}, "distance": {}, "agreement": None}
    data["overall"] = data["kinds"].get(kind)
    for row in data["rows"]:
        row.update(row["kinds"].get(kind) or empty)
    return data


def _run_with_progress(plan: Any, run_analysis: Any, device: str, use_cache: bool, quiet: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from mergetui.cli.output import console_err

    if quiet:
        return run_analysis(plan, device=device, use_cache=use_cache)
    with Progress(
        TextColumn("[bold]comparing[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[tensor]}", style="dim"),
        console=console_err(),
        transient=True,
    ) as progress:
        task = progress.add_task("compare", total=max(plan.total_bytes, 1), tensor="")

        def on_progress(event: Any) -> None:
            progress.update(task, completed=event.bytes_done, tensor=event.tensor[-48:])

        return run_analysis(plan, device=device, use_cache=use_cache, on_progress=on_progress)


def sparkline(values: list[float | None]) -> str:
    """One character per value, low to high over the values' own range (blank where missing)."""
    numbers = [v for v in values if v is not None]
    if not numbers:
        return ""
    low, high = min(numbers), max(numbers)
    out = []
    for value in values:
        if value is None:
            out.append(" ")
        elif high <= low:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int((value - low) / (high - low) * len(SPARK)))])
    return "".join(out)


def _print_table(analysis: Any, kind: str | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mergetui.cli.output import console
    from mergetui.merge.analysis import format_metric

    out = console()
    columns: list[tuple[str, str | None]] = []
    for model in analysis.others:
        columns.append(("cosine", model))
        columns.append(("distance", model))
    if analysis.has_agreement:
        columns.append(("agreement", None))
    how = "the base" if analysis.has_base else "the first model"
    title = f"each model against {analysis.reference} ({how})" + (
        f" · {kind} tensors only" if kind else ""
    )
    out.print(f"[bold]{escape(title)}[/]", soft_wrap=True)
    table = Table(expand=False)
    table.add_column("layer", justify="right")
    titles = {"cosine": "cos", "distance": "dist", "agreement": "agree"}
    for metric, model in columns:
        label = titles[metric] if model is None else f"{titles[metric]} {model}"
        table.add_column(escape(label), justify="right")
    series: dict[tuple[str, str | None], list[float | None]] = {c: [] for c in columns}
    kinds = [kind] if kind else None
    for row in analysis.rows():
        metrics = analysis.group(row, kinds)
        cells = []
        for metric, model in columns:
            value = metrics.get(metric, model) if metrics is not None else None
            cells.append(format_metric(metric, value))
            if isinstance(row, int):
                series[(metric, model)].append(value)
        table.add_row(str(row), *cells)
    overall = analysis.group(None, kinds)
    if overall is not None:
        table.add_section()
        table.add_row(
            "all", *(format_metric(m, overall.get(m, model)) for m, model in columns), style="bold"
        )
    out.print(table)
    width = max(len(f"{titles[m]} {model or ''}") for m, model in columns)
    out.print("[dim]per layer, low ▁ … █ high over each metric's own range:[/]")
    for metric, model in columns:
        label = f"{titles[metric]} {model or ''}".strip().ljust(width)
        values = series[(metric, model)]
        numbers = [v for v in values if v is not None]
        span = (
            f"  {format_metric(metric, min(numbers))} … {format_metric(metric, max(numbers))}"
            if numbers
            else ""
        )
        out.print(f"  {escape(label)}  {sparkline(values)}{span}")
    if not analysis.has_base:
        out.print("[dim]no --base: sign agreement needs task vectors (x - base).[/]")
    for note in analysis.skipped[:5]:
        out.print(f"[yellow]skipped:[/] {escape(note)}")
    if len(analysis.skipped) > 5:
        out.print(f"[yellow]… and {len(analysis.skipped) - 5} more skipped[/]")
    source = (
        "from the cache" if analysis.cached else f"in {analysis.seconds:.1f} s on {analysis.device}"
    )
    out.print(f"[dim]{len(analysis.tensors)} tensors compared {source}[/]")

"""`mergetui hub search QUERY` and `mergetui hub info REPO_ID`: the Hub from the shell.

Search lists ids with downloads, likes, task and date (sort by downloads, likes, trending or
created; `--filter` narrows by tag, e.g. `merge` or `text-generation`). Info shows what a merge
needs to know before downloading: architecture, parameters by dtype, licence, gating, files and
sizes. HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured, and HF_HUB_ETAG_TIMEOUT bounds each
wait for the Hub's answer (a silent Hub ends in one line, exit 1); `--json` prints JSON only.
"""

from __future__ import annotations

import argparse
import json
import sys

from mergetui.cli.options import add_json_option

HELP = "search the Hugging Face Hub, or show one model's details"
DESCRIPTION = "Search the Hugging Face Hub for models, or show one model's details."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    search = sub.add_parser(
        "search", help="find models by name", description="Find models whose id contains QUERY."
    )
    search.add_argument(
        "query", metavar="QUERY", nargs="?", default="", help="text in the model id"
    )
    search.add_argument("--limit", type=int, default=20, help="how many results (default 20)")
    search.add_argument(
        "--sort",
        choices=("downloads", "likes", "trending", "created"),
        default="downloads",
        help="order of the results (default downloads)",
    )
    search.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="TAG",
        help="only models with this tag (repeatable), e.g. merge, text-generation",
    )
    add_json_option(search)
    search.set_defaults(func=run_search)
    info = sub.add_parser(
        "info", help="one model's details", description="Show a Hub model's details."
    )
    info.add_argument("repo_id", metavar="REPO_ID", help="org/name")
    info.add_argument("--revision", help="branch, tag or commit (default main)")
    add_json_option(info)
    info.set_defaults(func=run_info)


def run_search(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from mergetui.checkpoints.hub import search_models
    from mergetui.cli.output import console

    found = search_models(args.query, sort=args.sort, limit=args.limit, filters=args.filter)
    if args.json:
        sys.stdout.write(json.dumps([m.to_dict() for m in found], indent=2) + "\n")
        return 0
    if not found:
        console().print(f"No models match {escape(repr(args.query))}.")
        return 0
    table = Table(title=f"Hub models matching {escape(repr(args.query))} (by {args.sort})")
    table.add_column("model", overflow="fold")
    table.add_column("downloads", justify="right")
    table.add_column("likes", justify="right")
    table.add_column("task")
    table.add_column("created")
    for model in found:
        mark = " [yellow](gated)[/]" if model.gated else ""
        table.add_row(
            escape(model.repo_id) + mark,
            f"{model.downloads:,}" if model.downloads is not None else "-",
            f"{model.likes:,}" if model.likes is not None else "-",
            escape(model.pipeline_tag or "-"),
            (model.created_at or "-")[:10],
        )
    console().print(table)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from mergetui.checkpoints.hub import model_info
    from mergetui.cli.output import console
    from mergetui.formatting import human_bytes, human_count

    model = model_info(args.repo_id, args.revision)
    if args.json:
        sys.stdout.write(json.dumps(model.to_dict(), indent=2) + "\n")
        return 0
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("model", escape(model.repo_id))
    grid.add_row("commit", escape(model.sha or "-"))
    grid.add_row(
        "architecture", escape(f"{model.architecture or 'unknown'} ({model.model_type or '?'})")
    )
    if model.parameters:
        by_dtype = ", ".join(f"{k} {human_count(v)}" for k, v in model.parameters.items())
        grid.add_row("parameters", f"{human_count(model.total_parameters or 0)} ({by_dtype})")
    else:
        grid.add_row("parameters", "not given by the Hub (try `mergetui inspect` on it)")
    grid.add_row("downloads / likes", f"{model.downloads or 0:,} / {model.likes or 0:,}")
    grid.add_row("licence", escape(model.license or "not stated"))
    gated = {False: "no", "auto": "yes (automatic approval)", "manual": "yes (manual approval)"}
    grid.add_row("gated", escape(gated.get(model.gated, str(model.gated))))
    if model.private:
        grid.add_row("private", "yes")
    grid.add_row("task", escape(model.pipeline_tag or "-"))
    grid.add_row("tags", escape(", ".join(model.tags) or "-"))
    size = model.size
    grid.add_row(
        "size",
        f"{human_bytes(size)} in {len(model.files or [])} files" if size is not None else "-",
    )
    out = console()
    out.print(grid)
    files = Table(title="files", show_header=True)
    files.add_column("file", overflow="fold")
    files.add_column("size", justify="right")
    for item in model.files or []:
        files.add_row(escape(item.path), human_bytes(item.size) if item.size is not None else "-")
    out.print(files)
    return 0

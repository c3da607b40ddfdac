"""`mergetui pull REPO_ID`: download a Hub model into the Hugging Face cache, with progress.

Only what a merge needs is fetched by default (safetensors, JSON, tokenizer files and chat
templates); `--include` picks other patterns. Files already cached are skipped, so pulling again
resumes. Ctrl-C cancels: the file being fetched is dropped and the snapshot stays marked
incomplete (never mistaken for a model) until a later pull finishes it.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="download a Hub model into the local cache (weights, configs, tokenizer)",
        description="Download a Hugging Face Hub model into the local Hugging Face cache.",
    )
    parser.add_argument("repo_id", metavar="REPO_ID", help="org/name")
    parser.add_argument("--revision", help="branch, tag or commit (default main)")
    parser.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="file pattern to fetch (repeatable; default: *.safetensors, *.json and the tokenizer)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from mergetui.cli.output import console, console_err
    from mergetui.errors import CancelledError

    try:
        path = pull_with_progress(
            args.repo_id, revision=args.revision, include=args.include, err=console_err()
        )
    except CancelledError:
        console_err().print(
            "[yellow]Cancelled:[/] the partial file was removed; pull again to resume."
        )
        return 130
    console().print(
        f"[green]Downloaded[/] {escape(args.repo_id)} to {escape(str(path))}", soft_wrap=True
    )
    return 0


def pull_with_progress(
    repo_id: str, *, revision: str | None = None, include: list[str] | None = None, err: Any = None
) -> Any:
    """Download with a Rich progress bar (bytes, files, speed); Ctrl-C cancels between chunks."""
    from mergetui.checkpoints.hub import download_repo
    from mergetui.cli.cmd_merge import _install_sigint, _restore_sigint
    from mergetui.cli.output import bytes_progress, console_err

    cancel = threading.Event()
    progress = bytes_progress("files", err or console_err())
    task = progress.add_task(f"pulling {repo_id}", total=None, files="")

    def on_progress(event: Any) -> None:
        progress.update(
            task,
            total=event.bytes_total or None,
            completed=event.bytes_done,
            files=f"{event.files_done}/{event.file_count} files",
        )

    previous = _install_sigint(cancel)
    try:
        with progress:
            return download_repo(
                repo_id, revision=revision, include=include, on_progress=on_progress, cancel=cancel
            )
    finally:
        _restore_sigint(previous)

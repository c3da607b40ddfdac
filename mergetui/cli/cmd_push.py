"""`mergetui push DIR REPO_ID`: publish a merged model folder on the Hub, with its model card.

The repo is created if needed (`--private` for a private one) and every file goes up in one
commit, so a failed or cancelled upload changes nothing. The card's front matter lists the Hub
parents as `base_model` (added from the folder's recipe when missing) so the Hub draws the model
tree. Needs HF_TOKEN with write access; the token is never printed.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

HELP = "upload a merged model folder to the Hub (creates the repo if needed)"
DESCRIPTION = "Upload a merged model folder, with its model card, to a Hugging Face Hub repo."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="DIR", help="the merged model's folder")
    parser.add_argument("repo_id", metavar="REPO_ID", help="org/name or user/name")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--message", help="commit message")


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from mergetui.cli.interrupts import install_sigint, restore_sigint
    from mergetui.cli.output import console, console_err
    from mergetui.errors import CancelledError
    from mergetui.merge.publish import push_merge

    cancel = threading.Event()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=False),
        TextColumn("{task.fields[files]}"),
        TransferSpeedColumn(),
        console=console_err(),
    )
    task = progress.add_task(f"pushing to {args.repo_id}", total=None, files="")

    def on_progress(event: Any) -> None:
        progress.update(
            task,
            total=event.bytes_total,
            completed=event.bytes_done,
            files=f"{event.files} files · {event.stage}",
        )

    previous = install_sigint(cancel)
    try:
        with progress:
            url = push_merge(
                args.folder,
                args.repo_id,
                private=args.private,
                message=args.message,
                on_progress=on_progress,
                cancel=cancel,
            )
    except CancelledError:
        console_err().print("[yellow]Cancelled:[/] nothing was committed to the Hub.")
        return 130
    finally:
        restore_sigint(previous)
    console().print(f"[green]Pushed[/] {escape(str(args.folder))} to {escape(url)}", soft_wrap=True)
    return 0

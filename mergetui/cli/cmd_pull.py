"""`mergetui pull REPO_ID`: download a Hub model into the Hugging Face cache, with progress.

Only what a merge needs is fetched by default (safetensors, JSON, tokenizer files and chat
templates); `--include` picks other patterns. Files already cached are skipped, so pulling again
resumes. The first Ctrl-C cancels at once, even while the Hub is silent: the file being fetched is
dropped, the snapshot stays marked incomplete (never mistaken for a model) until a later pull
finishes it, and the exit status is 130. Waits are bounded by HF_HUB_ETAG_TIMEOUT and
HF_HUB_DOWNLOAD_TIMEOUT (see `checkpoints.hub.net`).
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
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
    """Download with a Rich progress bar (bytes, files, speed). The first Ctrl-C stops it at once
    (`CancelledError`), whatever it is waiting on: the downloader removes its partial file."""
    from mergetui.checkpoints.hub import download_repo
    from mergetui.cli.output import bytes_progress, console_err
    from mergetui.errors import CancelledError

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

    restore = _interrupt_at_once(cancel)
    try:
        with progress:
            return download_repo(
                repo_id, revision=revision, include=include, on_progress=on_progress, cancel=cancel
            )
    except KeyboardInterrupt:
        raise CancelledError("download cancelled") from None
    finally:
        restore()


def _interrupt_at_once(cancel: threading.Event) -> Callable[[], None]:
    """Ctrl-C interrupts the download where it is (a socket read included), not at the next
    chunk: a silent server would otherwise keep the first Ctrl-C waiting for its timeout.
    Returns what puts the previous handler back (nothing to do off the main thread, where
    signals do not arrive)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        cancel.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)

    def restore() -> None:
        # None: the previous handler was not set from Python; Python's own is the closest.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)

    return restore

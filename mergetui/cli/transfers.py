"""Hub transfers with a progress bar, shared by the commands that download (`pull`, `merge`)."""

from __future__ import annotations

import threading
from typing import Any

from mergetui.cli.interrupts import interrupt_at_once


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

    restore = interrupt_at_once(cancel)
    try:
        with progress:
            return download_repo(
                repo_id, revision=revision, include=include, on_progress=on_progress, cancel=cancel
            )
    except KeyboardInterrupt:
        raise CancelledError("download cancelled") from None
    finally:
        restore()

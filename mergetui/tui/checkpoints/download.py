"""The Checkpoints screen's download strip: a progress bar and what is being downloaded.

`d` downloads the highlighted Hub model into the Hugging Face cache (in a worker the screen
starts) and `x` cancels; no partial file is kept, so `d` again resumes from nothing left over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from mergetui.errors import CancelledError, UserError
from mergetui.formatting import human_bytes


@dataclass
class DownloadState:
    repo_id: str
    cancel: threading.Event


def fetch(
    repo_id: str,
    revision: str | None,
    cancel: threading.Event,
    on_progress: Callable[[Any], None],
) -> tuple[Path | None, str | None]:
    """Download a repo into the HF cache (blocking: run it in a worker): its folder, or None
    and why not ("cancelled" when `cancel` was set)."""
    from mergetui.checkpoints.hub import download_repo

    try:
        path = download_repo(repo_id, revision=revision, cancel=cancel, on_progress=on_progress)
        return path, None
    except CancelledError:
        return None, "cancelled"
    except UserError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"download failed: {exc}"


class DownloadStrip(Horizontal):
    """Shown while a download runs: the bar, files and bytes done, and that x cancels."""

    def compose(self) -> ComposeResult:
        yield ProgressBar(id="ck-progress", show_eta=False)
        yield Label(id="ck-download-label")

    def on_mount(self) -> None:
        self.display = False

    def _say(self, text: str) -> None:
        self.query_one("#ck-download-label", Label).update(text)

    def begin(self, repo_id: str) -> None:
        self.display = True
        self._say(f"⇣ {repo_id}: asking the Hub… (x cancels)")
        self.query_one("#ck-progress", ProgressBar).update(total=None, progress=0)

    def show(self, event: Any) -> None:
        """One progress event of `download_repo`."""
        bar = self.query_one("#ck-progress", ProgressBar)
        bar.update(total=max(event.bytes_total, 1), progress=event.bytes_done)
        self._say(
            f"{event.files_done}/{event.file_count} files · {human_bytes(event.bytes_done)} / "
            f"{human_bytes(event.bytes_total)} · x cancels · {event.repo_id}"
        )

    def cancelling(self, repo_id: str) -> None:
        self._say(f"⇣ {repo_id}: cancelling…")

    def end(self) -> None:
        self.display = False

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

from mergetui.errors import CancelledError, UserError
from mergetui.formatting import human_bytes
from mergetui.tui.checkpoints.strip import ProgressStrip


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


class DownloadStrip(ProgressStrip):
    """Shown while a download runs: the bar, files and bytes done, and that x cancels."""

    BAR_ID = "ck-progress"
    LABEL_ID = "ck-download-label"

    def begin(self, repo_id: str) -> None:
        self.start(f"⇣ {repo_id}: asking the Hub… (x cancels)")

    def show(self, event: Any) -> None:
        """One progress event of `download_repo`."""
        self.advance(
            event.bytes_done,
            event.bytes_total,
            f"{event.files_done}/{event.file_count} files · {human_bytes(event.bytes_done)} / "
            f"{human_bytes(event.bytes_total)} · x cancels · {event.repo_id}",
        )

    def cancelling(self, repo_id: str) -> None:
        self.say(f"⇣ {repo_id}: cancelling…")

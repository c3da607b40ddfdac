"""The Search screen's search, in a thread: `mergetui.search.loop.run_search`, its events relayed.

Everything the screen needs goes to it as messages (`messages.py`): each event of the search as
it comes (a candidate takes a second or more, so nothing needs coalescing), then how the worker
ended. The thread, and the torch threads it starts, run at a lower CPU priority than the UI
(`workers.lower_priority`), so keys stay quick while the search has every core. Stopping is the
search's own: `cancel` set, it ends after the candidate in progress and keeps everything, and the
next start resumes from the out folder's evaluations.jsonl.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from textual.message import Message

from mergetui.errors import UserError
from mergetui.tui.search.messages import SearchEnded, SearchUpdate
from mergetui.tui.workers import lower_priority


class Poster(Protocol):
    """Where the worker's messages go (the Search screen; a collector in tests)."""

    def post_message(self, message: Message) -> bool: ...


@dataclass
class SearchJob:
    """One run of the search, as the screen starts it (the spec is checked already)."""

    spec: Any  # mergetui.search.spec.SearchSpec
    out_dir: Path
    cancel: threading.Event
    device: str = "auto"
    # Set with `cancel` when the screen goes away: the candidate in progress is dropped.
    abandon: threading.Event = field(default_factory=threading.Event)


def run_job(target: Poster, job: SearchJob) -> None:
    """Run the search in this thread; its events go as SearchUpdate, its end as SearchEnded."""
    from mergetui.search.loop import run_search

    lower_priority()

    def relay(event: Any) -> None:
        target.post_message(SearchUpdate(event))

    try:
        finished = run_search(
            job.spec,
            out_dir=job.out_dir,
            device=job.device,
            on_event=relay,
            cancel=job.cancel,
            abandon=job.abandon,
        )
    except UserError as exc:
        target.post_message(SearchEnded("failed", str(in_app_words(exc, job.out_dir))))
        return
    except Exception as exc:  # a bug: say so, keep the app alive
        target.post_message(SearchEnded("failed", f"internal error: {exc!r}"))
        return
    outcome = "stopped" if finished.stopped else "finished"
    target.post_message(SearchEnded(outcome, finished=finished))


def in_app_words(error: UserError, out_dir: Path) -> UserError:
    """The error with a fix the app can follow: the out folder's results being another search's,
    the command's "pass another --out" becomes what to do here (the folder is the recipe's)."""
    from mergetui.search.outputs import EVALUATIONS_FILE

    if error.where != str(out_dir / EVALUATIONS_FILE):
        return error
    return UserError(
        error.message,
        where=error.where,
        fix=f"set the form back as it was, or move {out_dir.name} away to start over",
    )

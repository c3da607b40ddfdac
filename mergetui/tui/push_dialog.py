"""Publish a merged folder on the Hub: repo id, private or not, progress, cancel.

Opened from the palette ("Push a folder to the Hub…") or by the Run screen after a merge
(`app.action_push_to_hub(folder)`). The upload runs in a worker through the core
(`merge.publish.push_merge`: one commit, so a cancel changes nothing on the Hub); the token comes
from HF_TOKEN and is never shown.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, Static

from mergetui.errors import CancelledError, UserError
from mergetui.tui.dialogs.base import DialogScreen
from mergetui.tui.workers import reply


def suggested_repo_id(folder: str) -> str:
    """`<user>/<folder name>` is what people type; the user part is left for them to fill in."""
    name = Path(folder).name if folder else ""
    return f"your-name/{name}" if name else ""


class PushDialog(DialogScreen):
    """Folder, repo id, private; enter pushes; escape cancels a running upload, then closes."""

    BINDINGS = [Binding("escape", "cancel", "Cancel / close")]
    title_text = "Push a merged model to the Hub"
    DEFAULT_CSS = """
    PushDialog #push-progress { width: 1fr; }
    PushDialog #push-progress-row { height: 1; }
    PushDialog #push-message { height: auto; }
    """

    def __init__(self, folder: str = "") -> None:
        super().__init__()
        self.folder = folder
        self.cancel_event: threading.Event | None = None
        self.url: str | None = None
        self.error: str | None = None

    @property
    def running(self) -> bool:
        return self.cancel_event is not None

    def compose_body(self) -> ComposeResult:
        from mergetui.checkpoints.hub import hub_endpoint, hub_token, offline_reason

        yield Label("Folder")
        yield Input(self.folder, placeholder="merges/my-merge", id="push-folder", compact=True)
        yield Label("Repo id (created if it does not exist)")
        yield Input(
            placeholder=suggested_repo_id(self.folder) or "your-name/my-merge",
            id="push-repo",
            compact=True,
        )
        yield Checkbox("private", id="push-private", compact=True)
        reason = offline_reason()
        if reason:
            hint = f"[b $warning]{reason}[/]"
        elif not hub_token():
            hint = (
                f"[b $warning]No token:[/] export HF_TOKEN=<a write token from "
                f"{hub_endpoint()}/settings/tokens> and restart mergetui"
            )
        else:
            hint = f"to {hub_endpoint()} with the token in HF_TOKEN · enter pushes"
        yield Static(hint, id="push-message", classes="hint")
        with Horizontal(id="push-progress-row"):
            yield ProgressBar(id="push-progress", show_eta=False)
        with Horizontal(classes="buttons"):
            yield Button("Push", id="push-go", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#push-progress-row").display = False
        target = "#push-repo" if self.folder else "#push-folder"
        self.query_one(target, Input).focus()

    def _message(self, text: str, error: bool = False) -> None:
        message = self.query_one("#push-message", Static)
        message.update(text)
        message.set_class(error, "error")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "push-folder" and not self.query_one("#push-repo", Input).value:
            self.query_one("#push-repo", Input).focus()
            return
        self.start()

    @on(Button.Pressed, "#push-go")
    def pressed(self) -> None:
        self.start()

    def start(self) -> None:
        if self.running:
            return
        folder = self.query_one("#push-folder", Input).value.strip()
        repo_id = self.query_one("#push-repo", Input).value.strip()
        if not folder or not Path(folder).expanduser().is_dir():
            self._message(f"no such folder: {folder or '(empty)'}", error=True)
            self.query_one("#push-folder", Input).focus()
            return
        if "/" not in repo_id:
            self._message("the repo id is org/name or your-user/name", error=True)
            self.query_one("#push-repo", Input).focus()
            return
        private = self.query_one("#push-private", Checkbox).value
        self.cancel_event = threading.Event()
        self.url = self.error = None
        self.query_one("#push-progress-row").display = True
        self.query_one("#push-progress", ProgressBar).update(total=None, progress=0)
        self._message(f"pushing to {repo_id}… (escape cancels)")
        self._push(folder, repo_id, private, self.cancel_event)

    @work(thread=True, exclusive=True, group="push", exit_on_error=False)
    def _push(self, folder: str, repo_id: str, private: bool, cancel: threading.Event) -> None:
        from mergetui.merge.publish import push_merge

        try:
            url = push_merge(
                folder,
                repo_id,
                private=private,
                cancel=cancel,
                on_progress=lambda event: reply(self, self._progress, event),
            )
            reply(self, self._done, url, None)
        except CancelledError:
            reply(self, self._done, None, "cancelled: nothing was committed to the Hub")
        except UserError as exc:
            reply(self, self._done, None, str(exc))
        except Exception as exc:
            from mergetui.checkpoints.hub import redact

            reply(self, self._done, None, redact(f"push failed: {exc}"))

    def _progress(self, event: Any) -> None:
        if not self.is_mounted:
            return
        from mergetui.formatting import human_bytes

        self.query_one("#push-progress", ProgressBar).update(
            total=max(event.bytes_total, 1), progress=event.bytes_done
        )
        if self.running:
            self._message(
                f"{event.stage} {event.files} files · {human_bytes(event.bytes_done)} / "
                f"{human_bytes(event.bytes_total)} · escape cancels"
            )

    def _done(self, url: str | None, error: str | None) -> None:
        if not self.is_mounted:
            return
        self.cancel_event = None
        self.url, self.error = url, error
        if url:
            self._message(f"[b $success]✓ pushed:[/] {url} · escape closes")
            self.app.notify(f"pushed to {url}", timeout=6)
        else:
            self._message(error or "push failed", error=True)

    def action_cancel(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()
            self._message("cancelling…")
            return
        self.dismiss(self.url)

"""The Checkpoints screen (F2): local folders, the Hugging Face cache and the Hub, in one list.

The list shows every checkpoint with its architecture, parameters, dtype, size and layers; typing in
the filter narrows it at once, `s` sorts by the next column. Enter in the filter searches the Hub;
`h` changes the Hub's order, `t` and `m` the tag filters. The pane below shows the highlighted
checkpoint: config, tensors by layer, tokenizer, files, and for Hub models downloads, likes,
licence and the parameters read from the remote safetensors headers. `a` / `b` add it to the
recipe as a model / as the base (through the document, so ctrl+z undoes it), `d` downloads it with
a progress bar (`x` cancels), `e` extracts a LoRA adapter from a local fine-tune (`extract`; `x`
cancels too), `k` checks that the recipe's models fit together.

This screen wires its panes (`table`: the filter and the list; `hub_search`; `details`;
`download`; `extract`); all the work (reading headers, the Hub) happens in workers; the core does it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Header, Input

from mergetui.checkpoints.sources import CheckpointRow
from mergetui.tui.checkpoints.adding import add_checkpoint, model_named
from mergetui.tui.checkpoints.details import DetailsPane
from mergetui.tui.checkpoints.download import DownloadState, DownloadStrip, fetch
from mergetui.tui.checkpoints.extract import ExtractActions, ExtractStrip
from mergetui.tui.checkpoints.hub_search import OFFLINE_MESSAGE, HubSearch
from mergetui.tui.checkpoints.messages import DetailsRead, HubAnswered
from mergetui.tui.checkpoints.table import CheckpointTable, FilterInput
from mergetui.tui.commands import PaletteCommand, PaletteEntry, binding_commands
from mergetui.tui.footer import KeyFooter
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen
from mergetui.tui.status_line import StatusLine
from mergetui.tui.workers import reply

PALETTE = (
    PaletteEntry("focus_filter", "Checkpoints: search the Hub", "then enter in the filter box"),
    PaletteEntry(
        "add(False)", "Checkpoints: add to recipe", "the highlighted checkpoint as a model"
    ),
    PaletteEntry("add(True)", "Checkpoints: add as base", "the highlighted checkpoint as the base"),
    PaletteEntry("download", "Checkpoints: download", "into the HF cache, with progress"),
    PaletteEntry("extract", "Checkpoints: extract a LoRA adapter…", "from a local fine-tune"),
    PaletteEntry("cancel_download", "Checkpoints: cancel download / extraction"),
    PaletteEntry("check", "Checkpoints: check recipe compatibility", "architecture, names, shapes"),
    PaletteEntry("sort", "Checkpoints: sort by next column"),
    PaletteEntry("reverse", "Checkpoints: reverse order"),
    PaletteEntry("hub_sort", "Checkpoints: Hub order", "downloads, likes, trending, created"),
    PaletteEntry("tag('text-generation')", "Checkpoints: Hub filter text-generation", "toggle"),
    PaletteEntry("tag('merge')", "Checkpoints: Hub filter merge", "toggle"),
    PaletteEntry("rescan", "Checkpoints: rescan local folders"),
    PaletteEntry("add_folder", "Checkpoints: add a models folder…", "remembered in the config"),
)


def delegate(pane: str, name: str, doc: str = "") -> property:
    """A read-only attribute of the screen that is one of its pane's (`pane` names the screen's
    property that finds the pane)."""
    return property(lambda screen: getattr(getattr(screen, pane), name), doc=doc)


class CheckpointsScreen(ExtractActions, ModeScreen):
    """Browse checkpoints and hand them to the recipe."""

    BINDINGS = [
        # The footer shows only Add and Base: with the app's own keys, more overflows 80 columns.
        Binding("slash", "focus_filter", "Filter/search", key_display="/", show=False),
        Binding("a", "add(False)", "Add"),
        Binding("b", "add(True)", "Base"),
        Binding("d", "download", "Download", show=False),
        Binding("e", "extract", "Extract a LoRA adapter (fine-tune - base)", show=False),
        Binding("x", "cancel_download", "Cancel the download / extraction", show=False),
        Binding("k", "check", "Check recipe", show=False),
        Binding("s", "sort", "Sort by next column", show=False),
        Binding("S", "reverse", "Reverse the order", show=False),
        Binding("h", "hub_sort", "Hub order (downloads, likes…)", show=False),
        Binding("t", "tag('text-generation')", "Hub filter: text-generation", show=False),
        Binding("m", "tag('merge')", "Hub filter: merge", show=False),
        Binding("r", "rescan", "Rescan local folders", show=False),
        Binding("f", "add_folder", "Add a models folder", show=False),
        Binding("ctrl+z", "undo", "Undo", show=False),
        Binding("ctrl+y", "redo", "Redo", show=False),
    ]

    DEFAULT_CSS = """
    CheckpointsScreen #ck-bar { height: 1; }
    CheckpointsScreen #ck-filter { width: 1fr; border: none; height: 1; padding: 0 1; }
    CheckpointsScreen #ck-hub { width: auto; max-width: 50%; padding: 0 1; color: $text-muted; }
    CheckpointsScreen #ck-table { height: 1fr; }
    CheckpointsScreen #ck-details {
        height: 40%; min-height: 6; border-top: solid $primary-muted; padding: 0 1;
    }
    CheckpointsScreen #ck-download { height: 1; padding: 0 1; background: $panel; }
    CheckpointsScreen #ck-download-label { width: 1fr; }
    CheckpointsScreen #ck-progress { width: 30; padding-right: 1; }
    CheckpointsScreen #ck-status { height: 1; padding: 0 1; background: $panel; overflow: hidden; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.local_rows: list[CheckpointRow] = []
        self.scanning = False
        self.download: DownloadState | None = None
        self.download_progress: Any = None
        self._merge_seen: str | None = None  # the app's last merge output at the last scan
        self.table = CheckpointTable(id="ck-table")
        self.hub = HubSearch(id="ck-hub")
        self.pane = DetailsPane(id="ck-details")

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="ck-bar"):
            yield FilterInput(
                placeholder="filter… (enter searches the Hub)", id="ck-filter", compact=True
            )
            yield self.hub
        yield self.table
        yield self.pane
        yield DownloadStrip(id="ck-download")
        yield ExtractStrip(id="ck-extract")
        yield StatusLine(id="ck-status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.rescan()
        self.table.focus()

    def on_screen_resume(self) -> None:
        self.app.refresh_title()
        if getattr(self.app, "last_merge_output", None) != self._merge_seen:
            self.rescan()  # a merge finished since the list was read: it may belong in it

    # -- what the panes hold, as the screen's own -----------------------------------------------

    rows = delegate("table", "rows_shown", "What the table shows, in order.")
    sort_column = delegate("table", "sort_column")
    hub_sort = delegate("hub", "sort")
    hub_message = delegate("hub", "message")
    details = delegate("pane", "details", "Row key -> the details read.")
    check_report = delegate("pane", "check_report")

    def current_row(self) -> CheckpointRow | None:
        return self.table.current_row()

    # -- the list ------------------------------------------------------------------------------

    @property
    def models_dirs(self) -> list[str]:
        """The remembered folders, then this session's own (the demo's), each once."""
        remembered = list(getattr(self.app.config, "models_dirs", []) or [])
        session = getattr(self.app, "session_models_dirs", [])
        return remembered + [folder for folder in session if folder not in remembered]

    def rescan(self) -> None:
        self._merge_seen = getattr(self.app, "last_merge_output", None)
        self.scanning = True
        self._refresh_status()
        self._scan(self.models_dirs)

    @work(thread=True, exclusive=True, group="ck-scan", exit_on_error=False)
    def _scan(self, folders: list[str]) -> None:
        from mergetui.checkpoints.sources import scan_local

        try:
            rows = scan_local(folders)
            error = None
        except Exception as exc:  # a broken cache is a message, not a crash
            rows, error = [], str(exc)
        reply(self, self._scanned, rows, error)

    def _scanned(self, rows: list[CheckpointRow], error: str | None) -> None:
        if not self.is_mounted:
            return
        self.scanning = False
        self.local_rows = rows
        self._link_local()
        if error:
            self.notify(f"could not read the local checkpoints: {error}", severity="warning")
        self.refresh_table()
        self.select_extracted()

    def _link_local(self) -> None:
        """A Hub result that is also on this machine points at its local folder."""
        local = {row.source: row for row in self.local_rows}
        for row in self.hub.rows:
            found = local.get(row.source)
            row.path = found.path if found is not None else None

    def all_rows(self) -> list[CheckpointRow]:
        """Local rows, then Hub results not already on this machine (a downloaded result shows
        once, as its cache row, keeping what the Hub said about it)."""
        local = {row.source: row for row in self.local_rows}
        remote = []
        for row in self.hub.rows:
            mine = local.get(row.source)
            if mine is None:
                remote.append(row)
            elif mine.hub is None:
                mine.hub = row.hub
        return [*self.local_rows, *remote]

    def refresh_table(self) -> None:
        """Filter, sort and show; the cursor stays on the same checkpoint when it is still there."""
        text = self.query_one("#ck-filter", Input).value
        self.table.show([row for row in self.all_rows() if row.matches(text)])
        self._refresh_status()
        self.pane.show_row(self.current_row(), self.scanning)

    def _refresh_status(self) -> None:
        from mergetui.checkpoints.hub import offline_reason

        parts = []
        if self.scanning:
            parts.append("reading local folders and the HF cache…")
        else:
            folders = len(self.models_dirs)
            parts.append(
                f"{len(self.local_rows)} local ({folders} folder{'s' if folders != 1 else ''} "
                "+ HF cache)"
            )
        shown, total = len(self.rows), len(self.all_rows())
        if shown != total:
            parts.append(f"{shown} of {total} shown")
        if offline_reason():
            parts.append(OFFLINE_MESSAGE)
        elif self.hub.message:
            parts.append(self.hub.message)
        elif self.hub.query is None:
            parts.append("Hub: type in the filter, then enter")
        self.query_one("#ck-status", StatusLine).show(parts)

    # -- filter, Hub search and sorting --------------------------------------------------------

    @on(Input.Changed, "#ck-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.refresh_table()

    @on(Input.Submitted, "#ck-filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        self.hub.search(event.value.strip())
        self.table.focus()

    def action_focus_filter(self) -> None:
        self.query_one("#ck-filter", Input).focus()

    def action_focus_list(self) -> None:
        self.table.focus()

    @on(HubAnswered)
    def hub_answered(self, event: HubAnswered) -> None:
        if not event.found:
            self._refresh_status()
            return
        self._link_local()
        self.refresh_table()

    def action_hub_sort(self) -> None:
        self.hub.next_sort()

    def action_tag(self, tag: str) -> None:
        self.hub.toggle_tag(tag)

    def action_sort(self) -> None:
        self.table.sort_next()
        self._sorted()

    def action_reverse(self) -> None:
        self.table.sort_reverse = not self.table.sort_reverse
        self._sorted()

    @on(DataTable.HeaderSelected, "#ck-table")
    def header_clicked(self, event: DataTable.HeaderSelected) -> None:
        self.table.sort_by(str(event.column_key.value))
        self._sorted()

    def _sorted(self) -> None:
        self.refresh_table()
        self.notify(self.table.sort_description(), timeout=2)

    # -- details -------------------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#ck-table")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.pane.leave_check()
        self.pane.show_row(self.current_row(), self.scanning)

    @on(DataTable.RowSelected, "#ck-table")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self.pane.read_now(self.current_row())

    @on(DetailsRead)
    def details_read(self, event: DetailsRead) -> None:
        if event.key.startswith("hub:"):  # the remote headers filled in params, layers, size
            self.refresh_table()

    def action_check(self) -> None:
        from mergetui.recipe.paths import recipe_folder

        document = self.app.document
        if len(document.recipe.models) < 2:
            self.notify(
                "the recipe needs two models to compare (a adds the highlighted one)", timeout=4
            )
            return
        self.pane.check(document.recipe, recipe_folder(document.path or document.origin))

    # -- adding to the recipe ------------------------------------------------------------------

    def action_add(self, as_base: bool) -> None:
        row = self.current_row()
        if row is None:
            self.notify("no checkpoint highlighted", severity="warning", timeout=3)
            return
        if row.error:
            self.notify(f"{row.name} cannot be read: {row.error}", severity="warning", timeout=6)
        if self.app.document.moe is not None:
            self.notify(
                "the open recipe is an MoE recipe, read-only in the app: add an expert in its "
                "file with a text editor (docs/moe.md)",
                severity="warning",
                timeout=6,
            )
            return
        existing = model_named(self.app.document.recipe, row)
        if existing is not None and not as_base:
            self.notify(f"already in the recipe as {existing}", timeout=3)
            return
        name = add_checkpoint(self.app.document, row, as_base)
        self._recipe_changed()
        what = "as the base" if as_base else "as a model"
        self.notify(f"{name} added {what} · ctrl+z undoes", timeout=3)

    def _recipe_changed(self) -> None:
        edited = getattr(self.app, "recipe_edited", None)
        if callable(edited):
            edited()
        else:
            self.app.refresh_title()

    def action_undo(self) -> None:
        self._step_history(self.app.document.undo, "undo", "undid")

    def action_redo(self) -> None:
        self._step_history(self.app.document.redo, "redo", "redid")

    def _step_history(self, step: Any, verb: str, done: str) -> None:
        label = step()
        if label is None:
            self.notify(f"nothing to {verb}", timeout=2)
            return
        self._recipe_changed()
        self.notify(f"{done}: {label}", timeout=2)

    # -- download ------------------------------------------------------------------------------

    def action_download(self) -> None:
        from mergetui.checkpoints.hub import offline_reason
        from mergetui.checkpoints.locate import looks_like_hub_id

        row = self.current_row()
        if row is None:
            return
        if self.download is not None:
            self.notify(
                f"downloading {self.download.repo_id}; x cancels it", severity="warning", timeout=3
            )
            return
        if row.origin == "folder" or not looks_like_hub_id(row.source):
            self.notify(f"{row.name} is a local folder: nothing to download", timeout=3)
            return
        reason = offline_reason()
        if reason:
            self.notify(reason, title="Hub offline", severity="warning")
            return
        self.download = DownloadState(row.source, threading.Event())
        self.query_one(DownloadStrip).begin(row.source)
        self._download(row.source, row.revision, self.download.cancel)

    @work(thread=True, exclusive=True, group="ck-download", exit_on_error=False)
    def _download(self, repo_id: str, revision: str | None, cancel: threading.Event) -> None:
        def progress(event: Any) -> None:
            reply(self, self._download_progress, event)

        path, error = fetch(repo_id, revision, cancel, progress)
        reply(self, self._download_done, repo_id, path, error)

    def _download_progress(self, event: Any) -> None:
        if not self.is_mounted or self.download is None:
            return
        self.download_progress = event
        self.query_one(DownloadStrip).show(event)

    def _download_done(self, repo_id: str, path: Path | None, error: str | None) -> None:
        if not self.is_mounted:
            return
        self.download = None
        self.query_one(DownloadStrip).end()
        if path is not None:
            self.notify(f"downloaded {repo_id} to the HF cache", timeout=4)
            self.pane.forget(ending=repo_id)
            self.rescan()
        elif error == "cancelled":
            self.notify(
                f"download of {repo_id} cancelled: no partial file kept; d resumes",
                severity="warning",
                timeout=5,
            )
        else:
            self.notify(error or "download failed", title="Download", severity="error", timeout=10)

    def action_cancel_download(self) -> None:
        extracting = self.cancel_extraction()
        if self.download is None:
            if not extracting:
                self.notify("no download or extraction is running", timeout=2)
            return
        self.download.cancel.set()
        self.query_one(DownloadStrip).cancelling(self.download.repo_id)

    # -- folders -------------------------------------------------------------------------------

    def action_rescan(self) -> None:
        self.pane.forget()
        self.rescan()

    def action_add_folder(self) -> None:
        from mergetui.tui.dialogs.paths import TextPrompt

        self.app.push_screen(
            TextPrompt(
                "Add a folder of models",
                str(Path.cwd()) + "/",
                paths=True,
                hint="its checkpoints (and those in its subfolders) join the list · remembered",
            ),
            self._folder_added,
        )

    def _folder_added(self, text: str | None) -> None:
        if not text:
            return
        folder = Path(text).expanduser()
        if not folder.is_dir():
            self.notify(f"no such folder: {folder}", severity="error", timeout=5)
            return
        added = self.app.config.add_models_dir(folder)
        if added is None:
            self.notify(f"{folder} is already listed", timeout=3)
            return
        save = getattr(self.app, "save_config", None)
        if callable(save):
            save()
        self.notify(f"remembered {added}", timeout=3)
        self.rescan()

    # -- help and palette ----------------------------------------------------------------------

    def help_sections(self) -> list[HelpSection]:
        app = self.app
        return [
            ("Checkpoints screen", binding_rows(app, self.BINDINGS)),
            (
                "Filter box",
                [
                    ("typing", "Filter the list (every word must match)"),
                    *binding_rows(app, FilterInput.BINDINGS),
                ],
            ),
            (
                "List",
                [
                    *binding_rows(app, CheckpointTable.BINDINGS),
                    ("click a header", "Sort by that column (again: reverse)"),
                ],
            ),
        ]

    def palette_commands(self) -> list[PaletteCommand]:
        return binding_commands(self, PALETTE, self.BINDINGS)

"""The Checkpoints screen (F2): local folders, the Hugging Face cache and the Hub, in one list.

The list shows every checkpoint with its architecture, parameters, dtype, size and layers; typing in
the filter narrows it at once, `s` sorts by the next column. Enter in the filter searches the Hub (in
a worker, so the screen never waits); `h` changes the Hub's order, `t` and `m` the tag filters.
The pane below shows the highlighted checkpoint: config, tensors by layer, tokenizer, files, and for
Hub models downloads, likes, licence and the parameters read from the remote safetensors headers.
`a` / `b` add it to the recipe as a model / as the base (through the document, so ctrl+z undoes it),
`d` downloads it with a progress bar (`x` cancels), `k` checks that the recipe's models fit together.
All the work (reading headers, the Hub) happens in workers; the core does it, this only shows it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Header, Input, Label, ProgressBar, Static

from mergetui.checkpoints.sources import CheckpointRow
from mergetui.errors import CancelledError, UserError
from mergetui.formatting import human_bytes, human_count
from mergetui.tui.commands import PaletteCommand
from mergetui.tui.footer import KeyFooter
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen
from mergetui.tui.status_line import StatusLine

COLUMNS: tuple[tuple[str, str], ...] = (
    # (key, header)
    ("name", "name"),
    ("architecture", "arch"),
    ("parameters", "params"),
    ("dtype", "dtype"),
    ("size", "size"),
    ("layers", "layers"),
    ("origin", "source"),
    ("where", "where"),
)
HUB_SORTS = ("downloads", "likes", "trending", "created")
HUB_LIMIT = 50
NAME_WIDTH = 22  # so that all eight columns fit 80 columns
DETAILS_DELAY = 0.35  # seconds the cursor rests on a row before its details are read


def short_arch(arch: str | None) -> str:
    if not arch:
        return "-"
    return arch.removesuffix("ForCausalLM").removesuffix("LMHeadModel") or arch


def sort_key(row: CheckpointRow, column: str) -> tuple:
    value = getattr(row, column, None)
    if column == "name":
        return (0, row.name.lower())
    if value is None:
        return (1, "")
    return (0, value.lower() if isinstance(value, str) else value)


@dataclass
class DownloadState:
    repo_id: str
    cancel: threading.Event


class CheckpointsScreen(ModeScreen):
    """Browse checkpoints and hand them to the recipe."""

    BINDINGS = [
        # The footer shows only Add and Base: with the app's own keys, more overflows 80 columns.
        Binding("slash", "focus_filter", "Filter/search", key_display="/", show=False),
        Binding("a", "add(False)", "Add"),
        Binding("b", "add(True)", "Base"),
        Binding("d", "download", "Download", show=False),
        Binding("x", "cancel_download", "Cancel download", show=False),
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
        self.hub_rows: list[CheckpointRow] = []
        self.rows: list[CheckpointRow] = []  # what the table shows, in order
        self.sort_column = "name"
        self.sort_reverse = False
        self.hub_sort = "downloads"
        self.hub_tags: list[str] = []
        self.hub_query: str | None = None  # the last search, None before any
        self.hub_message = ""
        self.scanning = False
        self.details: dict[str, str] = {}  # row key -> rendered details
        self.download: DownloadState | None = None
        self.download_progress: Any = None
        self.check_report: Any = None
        self._details_timer: Any = None
        self.showing_check = False
        self._loading_key: str | None = None
        self._shown_key: str | None = None
        self._merge_seen: str | None = None  # the app's last merge output at the last scan

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="ck-bar"):
            yield Input(
                placeholder="filter… (enter searches the Hub)", id="ck-filter", compact=True
            )
            yield Static(id="ck-hub")
        yield DataTable(id="ck-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="ck-details"):
            yield Static(id="ck-details-text")
        with Horizontal(id="ck-download"):
            yield ProgressBar(id="ck-progress", show_eta=False)
            yield Label(id="ck-download-label")
        yield StatusLine(id="ck-status")
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one("#ck-table", DataTable)
        for key, header in COLUMNS:
            table.add_column(header, key=key)
        self.query_one("#ck-download").display = False
        self._refresh_hub_label()
        self.rescan()
        table.focus()

    def on_screen_resume(self) -> None:
        self.app.refresh_title()
        if getattr(self.app, "last_merge_output", None) != self._merge_seen:
            self.rescan()  # a merge finished since the list was read: it may belong in it

    # -- data ----------------------------------------------------------------------------------

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
        self._reply(self._scanned, rows, error)

    def _reply(self, callback: Any, *args: Any) -> None:
        try:
            self.app.call_from_thread(callback, *args)
        except RuntimeError:  # the app closed while the worker ran
            pass

    def _scanned(self, rows: list[CheckpointRow], error: str | None) -> None:
        if not self.is_mounted:
            return
        self.scanning = False
        self.local_rows = rows
        local = {row.source: row for row in rows}
        for row in self.hub_rows:
            found = local.get(row.source)
            row.path = found.path if found is not None else None
        if error:
            self.notify(f"could not read the local checkpoints: {error}", severity="warning")
        self.refresh_table()

    def all_rows(self) -> list[CheckpointRow]:
        """Local rows, then Hub results not already on this machine (a downloaded result shows
        once, as its cache row, keeping what the Hub said about it)."""
        local = {row.source: row for row in self.local_rows}
        remote = []
        for row in self.hub_rows:
            mine = local.get(row.source)
            if mine is None:
                remote.append(row)
            elif mine.hub is None:
                mine.hub = row.hub
        return [*self.local_rows, *remote]

    def refresh_table(self) -> None:
        """Filter, sort and show; the cursor stays on the same checkpoint when it is still there."""
        table = self.query_one("#ck-table", DataTable)
        current = self.current_row()
        text = self.query_one("#ck-filter", Input).value
        rows = [row for row in self.all_rows() if row.matches(text)]
        rows.sort(key=lambda row: sort_key(row, self.sort_column), reverse=self.sort_reverse)
        self.rows = rows
        table.clear()
        for index, row in enumerate(rows):
            name = row.name if len(row.name) <= NAME_WIDTH else "…" + row.name[1 - NAME_WIDTH :]
            arch = short_arch(row.architecture) if not row.error else "broken"
            table.add_row(
                name,
                arch if len(arch) <= 9 else arch[:8] + "…",
                human_count(row.parameters),
                (row.dtype or "-").lower(),
                human_bytes(row.size).replace(" ", ""),
                str(row.layers) if row.layers is not None else "-",
                row.origin,
                row.where,
                key=f"{index}:{row.key}",
            )
        if current is not None:
            for index, row in enumerate(rows):
                if row.key == current.key:
                    table.move_cursor(row=index)
                    break
        self._refresh_status()
        self._schedule_details()

    def current_row(self) -> CheckpointRow | None:
        table = self.query_one("#ck-table", DataTable)
        if not self.rows or table.row_count == 0:
            return None
        return self.rows[min(max(table.cursor_row, 0), len(self.rows) - 1)]

    # -- status lines --------------------------------------------------------------------------

    def _refresh_hub_label(self) -> None:
        from mergetui.checkpoints.hub import is_offline

        tags = "+".join(self.hub_tags) if self.hub_tags else "all tags"
        state = "offline" if is_offline() else f"by {self.hub_sort} · {tags}"
        self.query_one("#ck-hub", Static).update(f"Hub: {state}")

    def _refresh_status(self) -> None:
        from mergetui.checkpoints.hub import offline_reason

        local = len(self.local_rows)
        parts = []
        if self.scanning:
            parts.append("reading local folders and the HF cache…")
        else:
            folders = len(self.models_dirs)
            parts.append(
                f"{local} local ({folders} folder{'s' if folders != 1 else ''} + HF cache)"
            )
        shown = len(self.rows)
        total = len(self.all_rows())
        if shown != total:
            parts.append(f"{shown} of {total} shown")
        reason = offline_reason()
        if reason:
            parts.append("Hub: offline (HF_HUB_OFFLINE=1), local parts work")
        elif self.hub_message:
            parts.append(self.hub_message)
        elif self.hub_query is None:
            parts.append("Hub: type in the filter, then enter")
        self.query_one("#ck-status", StatusLine).show(parts)

    # -- filter and Hub search -----------------------------------------------------------------

    @on(Input.Changed, "#ck-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.refresh_table()

    @on(Input.Submitted, "#ck-filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        self.search_hub(event.value.strip())
        self.query_one("#ck-table", DataTable).focus()

    def action_focus_filter(self) -> None:
        self.query_one("#ck-filter", Input).focus()

    def on_key(self, event: Any) -> None:
        if event.key == "escape" and self.query_one("#ck-filter", Input).has_focus:
            self.query_one("#ck-table", DataTable).focus()
            event.stop()
        elif event.key == "down" and self.query_one("#ck-filter", Input).has_focus:
            self.query_one("#ck-table", DataTable).focus()
            event.stop()

    def search_hub(self, query: str) -> None:
        """Ask the Hub (in a worker); the results join the list as remote rows."""
        from mergetui.checkpoints.hub import offline_reason

        reason = offline_reason()
        if reason:
            self.hub_message = "Hub: offline (HF_HUB_OFFLINE=1), local parts work"
            self.notify(reason, title="Hub offline", severity="warning")
            self._refresh_status()
            return
        self.hub_query = query
        self.hub_message = f"Hub: searching {query!r}…" if query else "Hub: listing top models…"
        self._refresh_status()
        self._search(query, self.hub_sort, list(self.hub_tags))

    @work(thread=True, exclusive=True, group="ck-search", exit_on_error=False)
    def _search(self, query: str, sort: str, tags: list[str]) -> None:
        from mergetui.checkpoints.hub import search_models
        from mergetui.checkpoints.sources import hub_row

        try:
            found = search_models(query, sort=sort, limit=HUB_LIMIT, filters=tags)
            self._reply(self._searched, query, [hub_row(m) for m in found], None)
        except UserError as exc:
            self._reply(self._searched, query, None, exc)
        except Exception as exc:
            self._reply(self._searched, query, None, UserError(f"Hub search failed: {exc}"))

    def _searched(
        self, query: str, rows: list[CheckpointRow] | None, error: UserError | None
    ) -> None:
        if not self.is_mounted or query != self.hub_query:
            return
        from mergetui.checkpoints.hub import HubOffline

        if error is not None:
            short = (
                "Hub: unreachable, local parts work"
                if isinstance(error, HubOffline)
                else "Hub: error"
            )
            self.hub_message = short
            self.notify(str(error), title="Hub", severity="error", timeout=8)
            self._refresh_status()
            return
        assert rows is not None
        local = {row.source: row for row in self.local_rows}
        for row in rows:
            found = local.get(row.source)
            row.path = found.path if found is not None else None
        self.hub_rows = rows
        what = f"{query!r}" if query else "top models"
        self.hub_message = f"Hub: {len(rows)} for {what}"
        self.refresh_table()

    def action_hub_sort(self) -> None:
        self.hub_sort = HUB_SORTS[(HUB_SORTS.index(self.hub_sort) + 1) % len(HUB_SORTS)]
        self._refresh_hub_label()
        self.notify(f"Hub order: {self.hub_sort}", timeout=2)
        if self.hub_query is not None:
            self.search_hub(self.hub_query)

    def action_tag(self, tag: str) -> None:
        if tag in self.hub_tags:
            self.hub_tags.remove(tag)
        else:
            self.hub_tags.append(tag)
        self._refresh_hub_label()
        self.notify(f"Hub filter: {'+'.join(self.hub_tags) or 'none'}", timeout=2)
        if self.hub_query is not None:
            self.search_hub(self.hub_query)

    # -- sorting -------------------------------------------------------------------------------

    def action_sort(self) -> None:
        keys = [key for key, _ in COLUMNS]
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self.sort_reverse = self.sort_column in ("parameters", "size", "layers")
        self._sorted()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._sorted()

    @on(DataTable.HeaderSelected, "#ck-table")
    def header_clicked(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column = key
            self.sort_reverse = False
        self._sorted()

    def _sorted(self) -> None:
        header = dict(COLUMNS)[self.sort_column]
        self.refresh_table()
        self.notify(
            f"sorted by {header} ({'descending' if self.sort_reverse else 'ascending'})",
            timeout=2,
        )

    # -- details -------------------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#ck-table")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.showing_check = False
        self._schedule_details()

    @on(DataTable.RowSelected, "#ck-table")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self._show_details(now=True)

    def _schedule_details(self) -> None:
        if self.showing_check:  # the compatibility report stays until the cursor moves
            return
        row = self.current_row()
        text = self.query_one("#ck-details-text", Static)
        if row is None:
            self._shown_key = None
            text.update(self._empty_text())
            return
        if row.key in self.details:
            self._shown_key = row.key
            text.update(self.details[row.key])
            return
        text.update(self._summary_text(row) + "\n[dim]reading details…[/]")
        self._shown_key = row.key
        if self._details_timer is not None:
            self._details_timer.stop()
        self._details_timer = self.set_timer(DETAILS_DELAY, self._show_details)

    def _show_details(self, now: bool = False) -> None:
        if self.showing_check and not now:
            return
        if now:
            self.showing_check = False
        row = self.current_row()
        if row is None or row.key in self.details:
            if row is not None:
                self.query_one("#ck-details-text", Static).update(self.details[row.key])
            return
        if row.key == self._loading_key:  # already being read (the timer, then enter)
            return
        self._loading_key = row.key
        self._load_details(row)

    def _empty_text(self) -> str:
        from mergetui.checkpoints.hub import is_offline

        if self.scanning:
            return "[dim]Reading the local folders and the Hugging Face cache…[/]"
        hub = (
            "· the Hub is off (HF_HUB_OFFLINE=1): unset it to search the Hub\n"
            if is_offline()
            else "· type a name and press [b]enter[/] to search the Hub\n"
        )
        return (
            "[b]No checkpoints here yet.[/]\n"
            + hub
            + "· [b]f[/] adds a folder of local models (or start with "
            "[b]mergetui --models-dir DIR[/])\n"
            "· models downloaded with huggingface_hub (the HF cache) appear by themselves"
        )

    def _summary_text(self, row: CheckpointRow) -> str:
        where = escape(str(row.path)) if row.path else "on the Hub (not downloaded)"
        return f"[b]{escape(row.name)}[/] · {row.origin} · {where}"

    @work(thread=True, exclusive=True, group="ck-details", exit_on_error=False)
    def _load_details(self, row: CheckpointRow) -> None:
        try:
            text = details_text(row)
        except UserError as exc:
            text = self._summary_text(row) + f"\n[b $error]{escape(str(exc))}[/]"
        except Exception as exc:
            text = self._summary_text(row) + f"\n[b $error]could not read it: {escape(str(exc))}[/]"
        self._reply(self._details_loaded, row.key, text)

    def _details_loaded(self, key: str, text: str) -> None:
        if not self.is_mounted:
            return
        self.details[key] = text
        if key == self._loading_key:
            self._loading_key = None
        if key.startswith("hub:"):  # the remote headers filled in params, layers, size
            self.refresh_table()
        row = self.current_row()
        if row is not None and row.key == key and not self.showing_check:
            self.query_one("#ck-details-text", Static).update(text)

    # -- adding to the recipe ------------------------------------------------------------------

    def action_add(self, as_base: bool) -> None:
        from mergetui.recipe.methods import METHODS
        from mergetui.recipe.model import ModelEntry
        from mergetui.tui.dialogs.models import suggest_model_name

        row = self.current_row()
        if row is None:
            self.notify("no checkpoint highlighted", severity="warning", timeout=3)
            return
        if row.error:
            self.notify(f"{row.name} cannot be read: {row.error}", severity="warning", timeout=6)
        document = self.app.document
        recipe = document.recipe
        existing = next(
            (
                n
                for n, e in recipe.models.items()
                if e.source == row.source and e.revision == row.revision
            ),
            None,
        )
        if existing is not None and not as_base:
            self.notify(f"already in the recipe as {existing}", timeout=3)
            return
        name = existing or suggest_model_name(row.source, set(recipe.models))
        label = f"base {name}" if as_base else f"add model {name}"
        with document.edit(label):
            if existing is None:
                recipe.models[name] = ModelEntry(name, row.source, revision=row.revision)
            spec = METHODS.get(recipe.method)
            if as_base:
                recipe.base = name
            elif recipe.base is None and spec is not None and spec.base == "required":
                recipe.base = name
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
        label = self.app.document.undo()
        if label is None:
            self.notify("nothing to undo", timeout=2)
            return
        self._recipe_changed()
        self.notify(f"undid: {label}", timeout=2)

    def action_redo(self) -> None:
        label = self.app.document.redo()
        if label is None:
            self.notify("nothing to redo", timeout=2)
            return
        self._recipe_changed()
        self.notify(f"redid: {label}", timeout=2)

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
        cancel = threading.Event()
        self.download = DownloadState(row.source, cancel)
        strip = self.query_one("#ck-download")
        strip.display = True
        self.query_one("#ck-download-label", Label).update(
            f"⇣ {row.source}: asking the Hub… (x cancels)"
        )
        self.query_one("#ck-progress", ProgressBar).update(total=None, progress=0)
        self._download(row.source, row.revision, cancel)

    @work(thread=True, exclusive=True, group="ck-download", exit_on_error=False)
    def _download(self, repo_id: str, revision: str | None, cancel: threading.Event) -> None:
        from mergetui.checkpoints.hub import download_repo

        try:
            path = download_repo(
                repo_id,
                revision=revision,
                cancel=cancel,
                on_progress=lambda event: self._reply(self._download_progress, event),
            )
            self._reply(self._download_done, repo_id, path, None)
        except CancelledError:
            self._reply(self._download_done, repo_id, None, "cancelled")
        except UserError as exc:
            self._reply(self._download_done, repo_id, None, str(exc))
        except Exception as exc:
            self._reply(self._download_done, repo_id, None, f"download failed: {exc}")

    def _download_progress(self, event: Any) -> None:
        if not self.is_mounted or self.download is None:
            return
        self.download_progress = event
        bar = self.query_one("#ck-progress", ProgressBar)
        bar.update(total=max(event.bytes_total, 1), progress=event.bytes_done)
        self.query_one("#ck-download-label", Label).update(
            f"{event.files_done}/{event.file_count} files · {human_bytes(event.bytes_done)} / "
            f"{human_bytes(event.bytes_total)} · x cancels · {event.repo_id}"
        )

    def _download_done(self, repo_id: str, path: Path | None, error: str | None) -> None:
        if not self.is_mounted:
            return
        self.download = None
        self.query_one("#ck-download").display = False
        if path is not None:
            self.notify(f"downloaded {repo_id} to the HF cache", timeout=4)
            for key in [k for k in self.details if k.endswith(repo_id)]:
                del self.details[key]
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
        if self.download is None:
            self.notify("no download is running", timeout=2)
            return
        self.download.cancel.set()
        self.query_one("#ck-download-label", Label).update(
            f"⇣ {self.download.repo_id}: cancelling…"
        )

    # -- compatibility -------------------------------------------------------------------------

    def action_check(self) -> None:
        recipe = self.app.document.recipe
        if len(recipe.models) < 2:
            self.notify(
                "the recipe needs two models to compare (a adds the highlighted one)", timeout=4
            )
            return
        if self._details_timer is not None:
            self._details_timer.stop()
        self.showing_check = True
        self.query_one("#ck-details-text", Static).update(
            "[b]Compatibility of the recipe's models[/]\n[dim]reading headers…[/]"
        )
        self._shown_key = None
        import copy

        from mergetui.recipe.paths import recipe_folder

        base_dir = recipe_folder(self.app.document.path or self.app.document.origin)
        self._check(copy.deepcopy(recipe), base_dir)

    @work(thread=True, exclusive=True, group="ck-check", exit_on_error=False)
    def _check(self, recipe: Any, base_dir: Path) -> None:
        from mergetui.checkpoints.hub import is_offline
        from mergetui.recipe.models_compat import check_recipe_models

        report = check_recipe_models(recipe, base_dir, remote=not is_offline())
        self._reply(self._checked, report)

    def _checked(self, report: Any) -> None:
        if not self.is_mounted:
            return
        self.check_report = report
        self.showing_check = True
        self.query_one("#ck-details-text", Static).update(compat_text(report))
        if report.ok:
            self.notify("the recipe's models fit together", timeout=3)
        else:
            self.notify(
                f"{len(report.problems)} problem(s), {len(report.skipped)} model(s) not read",
                severity="warning",
                timeout=4,
            )

    # -- folders -------------------------------------------------------------------------------

    def action_rescan(self) -> None:
        self.details.clear()
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
        return [
            ("Checkpoints screen", binding_rows(self.app, self.BINDINGS)),
            (
                "Filter box",
                [
                    ("typing", "Filter the list (every word must match)"),
                    ("enter", "Search the Hub for the text (empty: the top models)"),
                    ("escape ↓", "Back to the list"),
                ],
            ),
            (
                "List",
                [
                    ("enter", "Read the details now"),
                    ("click a header", "Sort by that column (again: reverse)"),
                ],
            ),
        ]

    def palette_commands(self) -> list[PaletteCommand]:
        entries = [
            ("Checkpoints: search the Hub", "/ then enter · in the filter box", "focus_filter"),
            (
                "Checkpoints: add to recipe",
                "a · the highlighted checkpoint as a model",
                "add(False)",
            ),
            ("Checkpoints: add as base", "b · the highlighted checkpoint as the base", "add(True)"),
            ("Checkpoints: download", "d · into the HF cache, with progress", "download"),
            ("Checkpoints: cancel download", "x · keeps finished files", "cancel_download"),
            ("Checkpoints: check recipe compatibility", "k · architecture, names, shapes", "check"),
            ("Checkpoints: sort by next column", "s", "sort"),
            ("Checkpoints: reverse order", "S", "reverse"),
            ("Checkpoints: Hub order", "h · downloads, likes, trending, created", "hub_sort"),
            ("Checkpoints: Hub filter text-generation", "t · toggle", "tag('text-generation')"),
            ("Checkpoints: Hub filter merge", "m · toggle", "tag('merge')"),
            ("Checkpoints: rescan local folders", "r", "rescan"),
            ("Checkpoints: add a models folder…", "f · remembered in the config", "add_folder"),
        ]
        return [
            PaletteCommand(title, help_text, partial(self.run_action, action), action)
            for title, help_text, action in entries
        ]


# -- text for the details pane (plain functions, tested without a terminal) -------------------


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[yellow]no[/]"


def checkpoint_text(checkpoint: Any) -> list[str]:
    """Config summary, tokenizer, tensors grouped by layer, files."""
    from mergetui.checkpoints.layers import BLOCK_KINDS

    lines = [
        f"[b]architecture[/] {escape(str(checkpoint.architecture or '?'))} "
        f"({escape(str(checkpoint.model_type or '?'))}) · {checkpoint.num_layers} layers · "
        f"hidden {checkpoint.hidden_size} · vocab {checkpoint.vocab_size}",
        f"[b]parameters[/] {human_count(checkpoint.parameter_count)} "
        f"({checkpoint.parameter_count:,}) · dtype {checkpoint.dtype} · "
        f"{human_bytes(checkpoint.size_on_disk)} in {len(checkpoint.weight_files)} file(s)",
        f"[b]tokenizer[/] {_yes(checkpoint.has_tokenizer)} · [b]chat template[/] "
        f"{_yes(checkpoint.has_chat_template)} · tied embeddings "
        f"{'yes' if checkpoint.tied else 'no'}",
    ]
    for warning in checkpoint.warnings:
        lines.append(f"[yellow]! {escape(warning)}[/]")
    lines.append("[b]tensors by layer[/]")

    def describe(names: list[str]) -> str:
        parts = []
        for name in names:
            info = checkpoint.tensors[name]
            short = name.split(".")[-2] if name.endswith((".weight", ".bias")) else name
            parts.append(f"{short} {list(info.shape)}")
        return ", ".join(parts)

    if checkpoint.pre_layer:
        lines.append(f"  before: {escape(describe(checkpoint.pre_layer))}")
    for index, layer in enumerate(checkpoint.layers):
        groups = [
            f"{kind} {escape(describe(names))}"
            for kind in BLOCK_KINDS
            if (names := layer.get(kind))
        ]
        lines.append(f"  layer {index}: " + " · ".join(groups))
    if checkpoint.post_layer:
        lines.append(f"  after: {escape(describe(checkpoint.post_layer))}")
    lines.append(f"[b]files[/] {escape(', '.join(checkpoint.files))}")
    return lines


def details_text(row: CheckpointRow) -> str:
    """Everything the details pane says about one row (reads headers; local or from the Hub)."""
    from mergetui.checkpoints.inspect import open_checkpoint

    where = escape(str(row.path)) if row.path else "on the Hub (not downloaded)"
    lines = [f"[b]{escape(row.name)}[/] · {row.origin} · {where}"]
    if row.origin == "hub" or row.hub is not None:
        from mergetui.checkpoints.hub import is_offline, model_info, read_remote_checkpoint

        model = row.hub
        if not is_offline():
            model = model_info(row.source, row.revision)
            row.hub = model
        if model is not None:
            gated = {False: "no", "auto": "yes (automatic)", "manual": "yes (manual approval)"}
            lines.append(
                f"[b]downloads[/] {model.downloads or 0:,} · [b]likes[/] {model.likes or 0:,} · "
                f"[b]licence[/] {escape(model.license or 'not stated')} · [b]gated[/] "
                f"{gated.get(model.gated, str(model.gated))}"
            )
            if model.tags:
                lines.append(f"[b]tags[/] {escape(', '.join(model.tags[:12]))}")
        if row.path is None:
            if is_offline():
                lines.append("[yellow]offline: the Hub's details need the network[/]")
                return "\n".join(lines)
            try:
                checkpoint = read_remote_checkpoint(row.source, row.revision)
            except UserError as exc:
                lines.append(f"[b $warning]headers not read:[/] {escape(exc.message)}")
                if exc.fix:
                    lines.append(f"[dim]fix: {escape(exc.fix)}[/]")
                return "\n".join(lines)
            row.parameters = checkpoint.parameter_count
            row.layers = checkpoint.num_layers
            row.dtype = checkpoint.dtype
            row.size = checkpoint.size_on_disk
            row.architecture = checkpoint.architecture or row.architecture
            lines.append("[dim]read from the remote safetensors headers; nothing downloaded[/]")
            lines.extend(checkpoint_text(checkpoint))
            return "\n".join(lines)
    if row.path is None:
        return "\n".join(lines)
    if row.error:
        lines.append(f"[b $error]{escape(row.error)}[/]")
        return "\n".join(lines)
    lines.extend(checkpoint_text(open_checkpoint(row.path)))
    return "\n".join(lines)


def compat_text(report: Any) -> str:
    lines = [
        f"[b]Compatibility of the recipe's models[/] (compared with {escape(str(report.reference))})"
    ]
    if report.ok:
        lines.append(
            f"[green]✓ {len(report.checked)} models: same architecture, tensor names and shapes[/]"
        )
    for problem in report.problems[:200]:
        lines.append(f"[yellow]✗[/] {escape(problem.model)}: {escape(problem.message)}")
    if len(report.problems) > 200:
        lines.append(f"… and {len(report.problems) - 200} more")
    for name, why in report.skipped.items():
        lines.append(f"[yellow]?[/] {escape(name)} not read: {escape(why)}")
    return "\n".join(lines)

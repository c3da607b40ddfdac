"""The Checkpoints screen's LoRA extraction: `e` on a local fine-tune, a dialog, then a worker.

The dialog (mergetui/tui/dialogs/extract.py) checks every field; the run is the core's, as
`mergetui extract-lora` runs it (`merge.extract_plan.plan_extraction`, then
`merge.extract_run.run_extraction`), in a thread worker at a lower CPU priority, so the list stays
usable. A strip under the details shows the bytes read and the module at work; `x` cancels after
the module at work, and a cancel or an error leaves nothing written (the core writes into a
temporary folder renamed into place when complete). When it is done the screen reads its folders
again, so the new adapter is listed with its rank and alpha, and a notification sums it up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import work

from mergetui.checkpoints.sources import CheckpointRow
from mergetui.errors import CancelledError, UserError
from mergetui.formatting import human_bytes
from mergetui.tui.checkpoints.strip import ProgressStrip
from mergetui.tui.dialogs.extract import ExtractRequest
from mergetui.tui.paths_text import short_path
from mergetui.tui.workers import lower_priority, reply


@dataclass
class ExtractState:
    """The extraction at work: what, and its cancel."""

    request: ExtractRequest
    cancel: threading.Event
    modules: int = 0  # once planned: how many modules are decomposed

    @property
    def name(self) -> str:
        """The fine-tune as the strip names it: its folder's name, or the Hub id's."""
        return self.request.finetuned_source.rstrip("/").rsplit("/", 1)[-1]


def default_base(document: Any, finetuned: Path) -> str:
    """The open recipe's base model (a folder as seen from the working folder), else "", and ""
    when that base is the fine-tune itself (as when the recipe merges from it)."""
    from mergetui.checkpoints.locate import find_local
    from mergetui.recipe.paths import recipe_folder

    recipe = document.recipe
    entry = recipe.models.get(recipe.base) if recipe.base else None
    if entry is None:
        return ""
    source = entry.source
    path = Path(source).expanduser()
    if not path.is_absolute():  # a recipe's folders are relative to its own folder
        path = recipe_folder(document.path or document.origin) / path
    if path.is_dir():
        source = short_path(path.resolve())
    folder = find_local(source, entry.revision)
    if folder is not None and Path(folder).resolve() == finetuned.resolve():
        return ""
    return source


def out_namer(row: CheckpointRow, models_dirs: list[str]) -> Callable[[int], str]:
    """How the dialog names the output for a rank: `<fine-tune>-lora-r<rank>` beside a folder
    fine-tune (for one in the HF cache: in the first models folder, else the working folder),
    with -2, -3… when that name is taken."""
    path = row.path or Path(row.source)
    if row.origin == "folder":
        parent = path.parent
    else:
        parent = Path(models_dirs[0]) if models_dirs else Path.cwd()
    stem = (row.source.rsplit("/", 1)[-1] if row.origin != "folder" else path.name) or "model"

    def name(rank: int) -> str:
        candidate = parent / f"{stem}-lora-r{rank}"
        number = 2
        while candidate.exists() or candidate.is_symlink():
            candidate = parent / f"{stem}-lora-r{rank}-{number}"
            number += 1
        return short_path(candidate)

    return name


def extract(
    request: ExtractRequest,
    cancel: threading.Event,
    on_planned: Callable[[Any], None],
    on_event: Callable[[Any], None],
) -> tuple[Any, str | None]:
    """Plan and run (blocking: run it in a worker): the `ExtractResult`, or None and why not
    ("cancelled" when `cancel` was set); a `UserError` says what, where and the fix."""
    from mergetui.merge.extract_plan import plan_extraction
    from mergetui.merge.extract_run import run_extraction

    try:
        plan = plan_extraction(
            request.finetuned,
            request.base,
            request.options,
            finetuned_source=request.finetuned_source,
            base_source=request.base_source,
        )
        on_planned(plan)
        if cancel.is_set():
            raise CancelledError("extraction cancelled")
        result = run_extraction(
            plan, request.out, force=request.force, on_event=on_event, cancel=cancel
        )
        return result, None
    except CancelledError:
        return None, "cancelled"
    except UserError as exc:
        return None, str(exc)
    except Exception as exc:  # a bug, said in the app rather than lost in a worker
        return None, f"extraction failed: {type(exc).__name__}: {exc}"


def summary(result: Any) -> str:
    """One notification: how many modules, at which rank, the mean and worst error, where."""
    modules = result.modules
    mean = sum(m.error for m in modules) / len(modules) if modules else 0.0
    saved = f", {len(result.saved)} tensors saved whole" if result.saved else ""
    return (
        f"{len(modules)} modules at rank ≤ {result.config.get('r', '?')}{saved}; relative error "
        f"mean {mean:.3g}, worst {result.max_error:.3g}; in {result.seconds:.1f} s → "
        f"{short_path(result.out)}"
    )


class ExtractStrip(ProgressStrip):
    """Shown while an extraction runs: the bar, modules and bytes done, and that x cancels."""

    DEFAULT_CSS = """
    ExtractStrip { height: 1; padding: 0 1; background: $panel; }
    ExtractStrip #ck-extract-progress { width: 20; padding-right: 1; }
    ExtractStrip #ck-extract-label { width: 1fr; }
    """
    BAR_ID = "ck-extract-progress"
    LABEL_ID = "ck-extract-label"

    def begin(self, name: str) -> None:
        self.start(f"⤓ LoRA of {name}: reading the headers and the modules… (x cancels)")

    def show(self, state: ExtractState, count: int, event: Any) -> None:
        """One `ExtractProgress` of the run; `count` modules done so far."""
        module = event.module.removeprefix("model.")
        module = module if len(module) <= 36 else "…" + module[-35:]
        self.advance(
            event.done,
            event.total,
            f"{min(count, state.modules)}/{state.modules} modules · {human_bytes(event.done)} / "
            f"{human_bytes(event.total)} · x cancels · {module}",
        )


def refusal(row: CheckpointRow | None) -> str | None:
    """Why `e` cannot extract from this row (None: it can)."""
    if row is None:
        return "no checkpoint highlighted"
    if row.path is None:
        return f"{row.name} is on the Hub only: download it first (d), then e extracts from it"
    if row.adapter is not None:
        return f"{row.name} is already a LoRA adapter: e extracts one from a fine-tuned model"
    if row.error:
        return f"{row.name} cannot be read: {row.error}"
    return None


class ExtractActions:
    """The screen's part, mixed into it: `e` opens the dialog, a worker runs the request, `x`
    cancels it, and the finished adapter joins the list."""

    extraction: ExtractState | None = None
    extracted: Path | None = None  # the last adapter written: the cursor goes to it once listed

    def action_extract(self) -> None:
        from mergetui.tui.dialogs.extract import ExtractDialog

        screen: Any = self
        if self.extraction is not None:
            name = self.extraction.request.finetuned_source
            screen.notify(f"extracting from {name}; x cancels it", severity="warning", timeout=4)
            return
        row = screen.current_row()
        why = refusal(row)
        if why is not None:
            screen.notify(why, severity="warning", timeout=5)
            return
        dialog = ExtractDialog(
            row.path,
            row.source,
            default_base(screen.app.document, row.path),
            out_namer(row, screen.models_dirs),
        )
        screen.app.push_screen(dialog, self._extract_chosen)

    def _extract_chosen(self, request: ExtractRequest | None) -> None:
        if request is None:
            return
        self.extraction = ExtractState(request, threading.Event())
        strip = self.query_one(ExtractStrip)
        strip.begin(self.extraction.name)
        self._extract(self.extraction)

    @work(thread=True, exclusive=True, group="ck-extract", exit_on_error=False)
    def _extract(self, state: ExtractState) -> None:
        lower_priority()
        count = 0

        def planned(plan: Any) -> None:
            reply(self, self._extract_planned, state, len(plan.targets), list(plan.notices))

        def progress(event: Any) -> None:
            nonlocal count
            count += event.result is not None
            reply(self, self._extract_progress, state, count, event)

        result, error = extract(state.request, state.cancel, planned, progress)
        reply(self, self._extract_done, state, result, error)

    def _extract_planned(self, state: ExtractState, modules: int, notices: list[str]) -> None:
        screen: Any = self
        if not screen.is_mounted or self.extraction is not state:
            return
        state.modules = modules
        for notice in notices:
            screen.notify(notice, title="Extract LoRA", timeout=8)

    def _extract_progress(self, state: ExtractState, count: int, event: Any) -> None:
        screen: Any = self
        if not screen.is_mounted or self.extraction is not state or state.cancel.is_set():
            return
        screen.query_one(ExtractStrip).show(state, count, event)

    def _extract_done(self, state: ExtractState, result: Any, error: str | None) -> None:
        screen: Any = self
        if not screen.is_mounted:
            return
        self.extraction = None
        screen.query_one(ExtractStrip).end()
        if result is None:
            if error == "cancelled":
                screen.notify(
                    "extraction cancelled: nothing was written", severity="warning", timeout=5
                )
            else:
                screen.notify(error, title="Extract LoRA", severity="error", timeout=15)
            return
        out = Path(result.out).resolve()
        listed = [Path(folder).resolve() for folder in screen.models_dirs]
        if not any(out.is_relative_to(folder) for folder in listed):
            screen.app.session_models_dirs.append(str(out))  # this session lists it too
        screen.notify(summary(result), title="LoRA adapter extracted", timeout=12)
        self.extracted = out
        screen.pane.forget()
        screen.rescan()

    def cancel_extraction(self) -> bool:
        """Ask the run to stop after the module at work; False when none runs."""
        if self.extraction is None:
            return False
        self.extraction.cancel.set()
        name = self.extraction.name
        self.query_one(ExtractStrip).say(
            f"⤓ LoRA of {name}: cancelling (after the module at work)…"
        )
        return True

    def select_extracted(self) -> None:
        """Once the list is read again, the cursor goes to the adapter just written."""
        if self.extracted is None:
            return
        screen: Any = self
        for index, row in enumerate(screen.rows):
            if row.path is not None and Path(row.path).resolve() == self.extracted:
                screen.table.move_cursor(row=index)
                self.extracted = None
                return

    def on_unmount(self) -> None:
        if self.extraction is not None:  # the app is closing: stop, leaving nothing behind
            self.extraction.cancel.set()

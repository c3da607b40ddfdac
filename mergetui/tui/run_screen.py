"""The Run screen: merge the current recipe in the background and watch it happen.

`r` (or the palette's "Run merge") plans the open recipe, unsaved edits included, and runs the engine
(`mergetui.merge.runner.run_merge`) in a thread worker. The engine's events become Textual messages;
progress is coalesced to at most PROGRESS_HZ updates a second, so a merge never floods the UI and
keys stay quick. `c` cancels after a confirmation: the engine removes its temporary folder and
nothing is left behind. Each run is recorded in the history (`mergetui.merge.history`); a past run's
recipe reopens with enter on the History tab. A finished merge offers chat (`t`) and push (`u`).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import (
    DataTable,
    Header,
    ProgressBar,
    RichLog,
    Static,
    TabbedContent,
    TabPane,
)

from mergetui.errors import CancelledError, UserError
from mergetui.formatting import human_bytes
from mergetui.tui.commands import PaletteCommand
from mergetui.tui.dialogs.confirm import ConfirmDialog
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.eta import RateEstimate
from mergetui.tui.footer import KeyFooter
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen

PROGRESS_HZ = 20
# The merge threads run at a lower CPU priority than the UI (Linux: nice is per thread and
# inherited by the threads they start), so keys stay quick even when the merge has every core.
MERGE_NICENESS = 10
# The screen's clocks: patched by the snapshot tests so the numbers on screen do not vary.
CLOCK = time.monotonic
WALL_CLOCK = time.time


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def short_path(path: str | Path) -> str:
    """A path relative to the working folder when it is inside it (what a person typed)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        home = Path.home()
        try:
            return "~/" + str(Path(path).relative_to(home))
        except ValueError:
            return str(path)


def layer_strip(done: set[int], active: int | None, count: int, width: int) -> Text:
    """One cell per layer (or per group of layers when there are more than `width`)."""
    text = Text()
    if count <= 0:
        return text
    cells = max(1, min(count, width))
    for cell in range(cells):
        first = cell * count // cells
        last = max(first, (cell + 1) * count // cells - 1)
        members = range(first, last + 1)
        if all(i in done for i in members):
            text.append("█", style="green")
        elif active is not None and active in members or any(i in done for i in members):
            text.append("▒", style="yellow")
        else:
            text.append("░", style="dim")
    return text


# ----------------------------------------------------------------------------------------------
# Messages from the worker


@dataclass
class ProgressState:
    """What the screen shows of a running merge; the worker sends copies of it."""

    bytes_done: int = 0
    total_bytes: int = 0
    tensors_done: int = 0
    tensor_count: int = 0
    current: str = ""
    layer_count: int = 0
    layers_done: set[int] = field(default_factory=set)
    active_layer: int | None = None
    pre_done: bool = False
    post_done: bool = False


class RunStarted(Message):
    def __init__(self, summary: list[str], state: ProgressState, device: str) -> None:
        super().__init__()
        self.summary = summary
        self.state = state
        self.device = device


class RunProgress(Message):
    def __init__(self, state: ProgressState) -> None:
        super().__init__()
        self.state = state


class RunLog(Message):
    def __init__(self, text: str, style: str = "") -> None:
        super().__init__()
        self.text = text
        self.style = style


class RunDevice(Message):
    """The device the engine chose (the plan may say `auto`)."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device


class RunEnded(Message):
    def __init__(self, outcome: str, message: str, output_dir: Path | None, record: Any) -> None:
        super().__init__()
        self.outcome = outcome  # finished, failed, cancelled
        self.message = message
        self.output_dir = output_dir
        self.record = record


class _Relay:
    """The engine's listener: turns events into messages, progress at most PROGRESS_HZ a second."""

    def __init__(self, screen: RunScreen, plan: Any) -> None:
        self.screen = screen
        self.plan = plan
        self.state = ProgressState(
            total_bytes=plan.total_bytes,
            tensor_count=plan.tensor_count,
            layer_count=plan.layer_count or 0,
        )
        self.per_layer: dict[int, int] = {}
        self.pre = self.post = 0
        for tensor in plan.tensors:
            if tensor.layer is not None:
                self.per_layer[tensor.layer] = self.per_layer.get(tensor.layer, 0) + 1
            elif tensor.section == "pre":
                self.pre += 1
            else:
                self.post += 1
        self.layer_seen: dict[int, int] = {}
        self.pre_seen = self.post_seen = 0
        self.sections = {t.name: (t.section, t.layer) for t in plan.tensors}
        self.last_post = 0.0
        self.interval = 1.0 / PROGRESS_HZ
        self.device = ""

    def __call__(self, event: Any) -> None:
        from mergetui.merge.events import Notice, PlanReady, ShardWritten, TensorDone

        if isinstance(event, TensorDone):
            self._tensor_done(event)
            now = time.monotonic()
            if now - self.last_post >= self.interval:
                self.flush(now)
        elif isinstance(event, PlanReady):
            self.device = event.device
            self.screen.post_message(RunLog(f"merging on {event.device}", "bold"))
            self.screen.post_message(RunDevice(event.device))
        elif isinstance(event, ShardWritten):
            self.flush()
            self.screen.post_message(
                RunLog(
                    f"wrote {event.filename} ({human_bytes(event.nbytes)}, "
                    f"shard {event.index + 1}/{event.shard_count})"
                )
            )
        elif isinstance(event, Notice):
            self.screen.post_message(RunLog(f"note: {event.message}", "yellow"))

    def _tensor_done(self, event: Any) -> None:
        state = self.state
        state.bytes_done = max(state.bytes_done, event.bytes_written)
        state.tensors_done += 1
        state.current = event.name
        section, layer = self.sections.get(event.name, ("post", event.layer))
        if layer is not None:
            seen = self.layer_seen.get(layer, 0) + 1
            self.layer_seen[layer] = seen
            state.active_layer = layer
            if seen >= self.per_layer.get(layer, 0):
                state.layers_done.add(layer)
        elif section == "pre":
            self.pre_seen += 1
            state.pre_done = self.pre_seen >= self.pre
        else:
            self.post_seen += 1
            state.post_done = self.post_seen >= self.post
        if state.tensors_done >= state.tensor_count:
            # The engine merges several tensors at once, so which one ends last varies from run
            # to run: once all are written, no tensor is "current".
            state.current = ""
            state.active_layer = None

    def flush(self, now: float | None = None) -> None:
        self.last_post = now if now is not None else time.monotonic()
        snapshot = copy.copy(self.state)
        snapshot.layers_done = set(self.state.layers_done)
        self.screen.post_message(RunProgress(snapshot))


# ----------------------------------------------------------------------------------------------
# The screen


class RunScreen(ModeScreen):
    """Run the recipe's merge with live progress, a log and the history of runs."""

    DEFAULT_CSS = """
    RunScreen #run-top { height: auto; padding: 0 1; }
    RunScreen #run-summary { height: auto; max-height: 2; }
    RunScreen #run-state { height: auto; max-height: 2; overflow: hidden; }
    RunScreen #run-progress { height: 1; }
    RunScreen #run-progress Bar { width: 1fr; }
    RunScreen #run-stats, RunScreen #run-tensor, RunScreen #run-layers { height: 1; overflow: hidden; }
    RunScreen #run-tabs { height: 1fr; }
    RunScreen #run-tabs TabPane { padding: 0; }
    RunScreen #run-log, RunScreen #run-history { height: 1fr; border: none; }
    RunScreen #run-history-hint { height: 1; padding: 0 1; overflow: hidden; }
    """

    BINDINGS = [
        # Short names: after a merge r, t and u all show, and the footer keeps to 80 columns.
        Binding("r", "run_merge", "Run", tooltip="Run the merge of the open recipe"),
        Binding("c", "cancel_merge", "Cancel", tooltip="Cancel the running merge (asks first)"),
        Binding("t", "chat_with_output", "Chat", tooltip="Chat with the finished merge (F5)"),
        Binding("u", "push_output", "Push", tooltip="Push the finished merge to the Hub"),
        Binding("o", "reopen_run", "Reopen recipe", show=False),
        Binding("f6", "tab('log')", "Log tab", show=False),
        Binding("f7", "tab('history')", "History tab", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.cancel_event: threading.Event | None = None
        self.state = ProgressState()
        self.started_clock: float | None = None
        self.final_seconds: float | None = None  # the last run's duration, once it ended
        self.rate_estimate: RateEstimate | None = None  # throughput and ETA while a merge runs
        self.last_output: Path | None = None
        self.last_outcome: str | None = None
        self.history: list[Any] = []
        self.outcomes: list[str] = []  # outcomes of this session's runs, oldest first
        self.cancel_dialog: ConfirmDialog | None = None  # the open "Cancel the merge?" question
        self.ticker: Any = None  # redraws the elapsed time once a second while a merge runs
        # What the idle lines show now: an unchanged text is not updated again (each update
        # costs a layout, on every switch to this screen).
        self._idle_texts: dict[str, str] = {}

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="run-top"):
            yield Static(id="run-summary")
            yield Static(id="run-state")
            yield ProgressBar(total=100, show_eta=False, id="run-progress")
            yield Static(id="run-stats")
            yield Static(id="run-tensor")
            yield Static(id="run-layers")
        with TabbedContent(id="run-tabs", initial="log"):
            with TabPane("Log [dim]F6[/]", id="log"):
                yield RichLog(id="run-log", markup=True, wrap=True, max_lines=2000)
            with TabPane("History [dim]F7[/]", id="history"):
                # The reopen key is not in the footer (it would not fit at 80 columns): say it here.
                yield Static(
                    "newest first · [b]enter[/] or [b]o[/] reopens the selected run's recipe",
                    id="run-history-hint",
                    classes="hint",
                )
                yield DataTable(id="run-history", cursor_type="row", zebra_stripes=True)
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one("#run-history", DataTable)
        table.add_columns("when", "recipe", "method", "outcome", "time", "output")
        self._log(
            "The merge's plan, notes and files show here as it runs. F7 lists past runs.", "dim"
        )
        self._load_history()
        self._show_idle()

    def on_screen_resume(self) -> None:
        self.app.refresh_title()
        if not self.running:
            self._show_idle()
        elif self.started_clock is not None:
            self._show_progress(self.state)

    def on_unmount(self) -> None:
        # Leaving the app mid-merge: ask the engine to stop and clean up its temporary folder.
        if self.cancel_event is not None:
            self.cancel_event.set()

    # -- what the screen says ------------------------------------------------------------------

    def _recipe_dir(self) -> Path:
        from mergetui.recipe.paths import recipe_folder

        document = self.app.document
        return recipe_folder(document.path or document.origin)

    def _relative_to(self) -> str:
        """What a relative output is read from, in words (the output prompt's hint)."""
        document = self.app.document
        owner = "the recipe's folder" if document.path or document.origin else "the working folder"
        return f"{owner}, {short_path(self._recipe_dir())}"

    def _output_dir(self) -> Path | None:
        """Where the merge will write: the recipe's output, read from the recipe's folder."""
        from mergetui.recipe.paths import output_folder

        return output_folder(self.app.document.recipe, self._recipe_dir())

    def _show_idle(self) -> None:
        recipe = self.app.document.recipe
        output = self._output_dir()
        models = ", ".join(recipe.models) or "no models yet"
        summary = (
            f"[b]{escape(self.app.document.display_name)}[/] · {escape(recipe.method)} · "
            f"{escape(models)}\noutput: "
            + (escape(short_path(output)) if output else "[$warning]not set[/]")
        )
        self._update_once("#run-summary", summary)
        if self.last_outcome is None:
            hint = "[b]r[/] runs the merge of the open recipe (unsaved edits included)"
            if output is not None and output.exists():
                hint += " · the output exists: a run asks before replacing it"
            self._update_once("#run-state", hint)
        self.refresh_bindings()

    def _update_once(self, selector: str, text: str) -> None:
        """Update an idle line only when its text changes."""
        if self._idle_texts.get(selector) == text:
            return
        self._idle_texts[selector] = text
        self.query_one(selector, Static).update(text)

    def _state_line(self, text: str) -> None:
        self._idle_texts.pop("#run-state", None)
        self.query_one("#run-state", Static).update(text)

    def _log(self, text: str, style: str = "") -> None:
        line = escape(text)
        self.query_one("#run-log", RichLog).write(f"[{style}]{line}[/]" if style else line)

    def _show_progress(self, state: ProgressState) -> None:
        self.state = state
        bar = self.query_one("#run-progress", ProgressBar)
        bar.update(total=max(1, state.total_bytes), progress=state.bytes_done)
        if not self.running and self.final_seconds is not None:
            elapsed = self.final_seconds
        else:
            elapsed = CLOCK() - self.started_clock if self.started_clock is not None else 0.0
        if self.running:  # measured from the first progress report: start-up is not merging
            estimate = self.rate_estimate
            rate = estimate.rate(CLOCK()) if estimate is not None else None
            eta = estimate.eta(CLOCK()) if estimate is not None else None
        else:  # ended: the whole run's average
            rate = state.bytes_done / elapsed if elapsed > 0 else None
            eta = None
        parts = [
            f"{human_bytes(state.bytes_done)} / {human_bytes(state.total_bytes)}",
            f"{state.tensors_done}/{state.tensor_count} tensors",
            f"{human_bytes(rate)}/s" if rate else "— /s",
            f"ETA {self._eta_text(eta)}",
            f"elapsed {format_duration(elapsed)}",
        ]
        self.query_one("#run-stats", Static).update(" · ".join(parts))
        self.query_one("#run-tensor", Static).update(
            f"[dim]tensor[/] {escape(state.current)}" if state.current and self.running else ""
        )
        width = max(8, self.size.width - 30)
        strip = Text("layers ", style="bold")
        strip.append("E", style="green" if state.pre_done else "dim")
        strip.append(" ")
        strip.append_text(
            layer_strip(state.layers_done, state.active_layer, state.layer_count, width)
        )
        strip.append(" ")
        strip.append("H", style="green" if state.post_done else "dim")
        strip.append(f"  {len(state.layers_done)}/{state.layer_count}")
        self.query_one("#run-layers", Static).update(strip)

    def _eta_text(self, eta: float | None) -> str:
        if self.running:
            return format_duration(eta)
        # Ended: a finished merge has nothing left; a cancelled or failed one has no ETA.
        return "0.0 s" if self.last_outcome == "finished" else "—"

    # -- history -------------------------------------------------------------------------------

    def _load_history(self) -> None:
        from mergetui.merge.history import load_history

        self.history = list(reversed(load_history()))
        table = self.query_one("#run-history", DataTable)
        table.clear()
        for record in self.history:
            style = {"finished": "green", "failed": "red", "cancelled": "yellow"}[record.outcome]
            table.add_row(
                time.strftime("%m-%d %H:%M", time.localtime(record.started_at)),
                record.recipe_name,
                record.method,
                Text(record.outcome, style=style),
                format_duration(record.seconds),
                short_path(record.output_dir),
                key=record.id,
            )

    def _selected_record(self) -> Any:
        table = self.query_one("#run-history", DataTable)
        if not self.history or table.cursor_row is None:
            return None
        row = min(max(table.cursor_row, 0), len(self.history) - 1)
        return self.history[row]

    # -- actions -------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "run_merge":
            return not self.running
        if action == "cancel_merge":
            return self.running
        if action in ("chat_with_output", "push_output"):
            return self._finished_output() is not None
        return True

    def _finished_output(self) -> Path | None:
        if self.running or self.last_outcome != "finished" or self.last_output is None:
            return None
        return self.last_output if self.last_output.is_dir() else None

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        target = "#run-log" if tab == "log" else "#run-history"
        self.query_one(target).focus()

    def action_run_merge(self) -> None:
        """Start the merge of the open recipe: asks for an output folder or a replace first."""
        if self.running:
            self.notify("a merge is already running", severity="warning")
            return
        recipe = self.app.document.recipe
        if not recipe.models:
            self.notify(
                "the recipe has no models: add some on the Recipe screen (F3)",
                title="Nothing to merge",
                severity="error",
            )
            return
        output = self._output_dir()
        if output is None:
            stem = self.app.document.path.stem if self.app.document.path else recipe.method
            self.app.push_screen(
                TextPrompt(
                    "Output folder for the merged model",
                    str(Path("merges") / stem),
                    paths=True,
                    hint=f"relative to {self._relative_to()} · enter merges · escape cancels",
                ),
                self._output_chosen,
            )
            return
        if output.exists():
            from mergetui.merge.target import replace_refusal

            why = replace_refusal(output, recipe_dir=self._recipe_dir())  # the engine checks too
            if why is not None:
                self.notify(
                    f"{short_path(output)} already exists, and only a folder that a previous "
                    f"merge wrote can be replaced: this one {why}. Remove or move it yourself if "
                    "it may go, or set another output on the Recipe screen (F3).",
                    title="Cannot replace the output",
                    severity="error",
                    timeout=12,
                )
                return
            self.app.push_screen(
                ConfirmDialog(
                    "Replace the output?",
                    f"{short_path(output)} already exists. Replace it once the new merge is "
                    "complete? (It stays as it is if the merge fails or is cancelled.)",
                    yes="Replace",
                    no="Keep it",
                ),
                lambda yes: self._start(force=True) if yes else None,
            )
            return
        self._start(force=False)

    def _output_chosen(self, text: str | None) -> None:
        if not text:
            return
        with self.app.document.edit("output"):
            self.app.document.recipe.output = text
        edited = getattr(self.app, "recipe_edited", None)  # the Recipe screen shows the new output
        if edited is not None:
            edited()
        else:
            self.app.refresh_title()
        self.action_run_merge()

    def _start(self, *, force: bool) -> None:
        recipe = copy.deepcopy(self.app.document.recipe)
        self.running = True
        self.last_outcome = None
        self.last_output = None
        self.cancel_event = threading.Event()
        self.started_clock = CLOCK()
        self.final_seconds = None
        self.rate_estimate = None  # made when the plan says how many bytes there are
        self.state = ProgressState()
        self.query_one("#run-log", RichLog).clear()
        self._state_line("[b]planning[/] (reading the checkpoints' headers)…")
        self.query_one("#run-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#run-stats", Static).update("")
        self.query_one("#run-tensor", Static).update("")
        self.query_one("#run-layers", Static).update("")
        self.refresh_bindings()
        # Elapsed keeps counting while no tensor finishes (planning, a slow first tensor).
        self.ticker = self.set_interval(1.0, self._tick)
        source = self.app.document.path or self.app.document.origin
        self._merge(recipe, self._recipe_dir(), force, self.cancel_event, source, WALL_CLOCK())

    @work(thread=True, exclusive=True, group="merge", exit_on_error=False)
    def _merge(
        self,
        recipe: Any,
        recipe_dir: Path,
        force: bool,
        cancel: threading.Event,
        source: Path | None,
        started_at: float,
    ) -> None:
        """Plan and run the merge in this thread; everything the UI needs goes as messages."""
        from mergetui.merge.history import RunRecord, append_run
        from mergetui.merge.plan import make_plan
        from mergetui.merge.runner import run_merge
        from mergetui.recipe.toml_write import dumps_toml
        from mergetui.recipe.validate import validate_recipe

        _lower_priority()
        started = CLOCK()
        plan = None
        outcome, message, output = "failed", "", None
        try:
            problems = validate_recipe(recipe, offline=True, base_dir=recipe_dir)
            errors = [p for p in problems if getattr(p, "is_error", True)]
            if errors:
                first = errors[0]
                where = getattr(first, "location", None) or getattr(first, "where", None)
                raise UserError(
                    f"the recipe has {len(errors)} error(s); first: "
                    + (f"{where}: " if where else "")
                    + str(getattr(first, "message", first)),
                    fix="see the Recipe screen's Problems tab (F3, then F9)",
                )
            plan = make_plan(recipe, recipe_dir=recipe_dir)
            if plan.output_dir.exists() and not force:
                raise UserError("the output folder already exists", where=str(plan.output_dir))
            relay = _Relay(self, plan)
            summary = [
                f"{plan.method} of {', '.join(plan.models)} → {short_path(plan.output_dir)}",
                f"{plan.tensor_count} tensors · {human_bytes(plan.total_bytes)} in "
                f"{plan.shard_count} file(s) · {plan.layer_count or 0} layers · "
                f"dtype {plan.output_dtype or 'as the inputs'} · peak memory about "
                f"{human_bytes(plan.estimated_peak_bytes)}",
            ]
            # The plan's notices come from the engine as events (logged once, by the relay).
            self.post_message(RunStarted(summary, copy.copy(relay.state), plan.device))
            try:
                result = run_merge(plan, on_event=relay, cancel=cancel, force=force)
            finally:
                relay.flush()
            outcome, output = "finished", result.output_dir
            message = f"{result.tensor_count} tensors, {human_bytes(result.total_bytes)}"
        except CancelledError:
            outcome, message = "cancelled", "nothing was written"
        except UserError as exc:
            outcome, message = "failed", str(exc)
        except Exception as exc:  # a bug: say so, keep the app alive
            outcome, message = "failed", f"internal error: {exc!r}"
        seconds = CLOCK() - started
        record = RunRecord(
            started_at=started_at,
            recipe_toml=dumps_toml(recipe),
            output_dir=str(plan.output_dir if plan is not None else (recipe.output or "")),
            outcome=outcome,
            seconds=seconds,
            recipe_path=str(source) if source is not None else None,
            method=recipe.method,
            models=list(recipe.models),
            message=message,
            total_bytes=plan.total_bytes if plan is not None else 0,
            tensor_count=plan.tensor_count if plan is not None else 0,
        )
        try:
            append_run(record)
        except OSError as exc:
            self.post_message(RunLog(f"the run was not added to the history: {exc}", "yellow"))
        self.post_message(RunEnded(outcome, message, output, record))

    # -- messages from the worker --------------------------------------------------------------

    @on(RunStarted)
    def run_started(self, event: RunStarted) -> None:
        for line in event.summary:
            self._log(line)
        # `auto` is resolved by the engine: RunDevice names the device once it is chosen.
        where = f" on {escape(event.device)}" if event.device != "auto" else ""
        self._state_line(f"[b]merging[/]{where}… [dim]c cancels[/]")
        self._show_progress(event.state)

    @on(RunDevice)
    def run_device(self, event: RunDevice) -> None:
        if self.running and self.cancel_event is not None and not self.cancel_event.is_set():
            self._state_line(f"[b]merging[/] on {escape(event.device)}… [dim]c cancels[/]")

    def _tick(self) -> None:
        if self.running and self.app.screen is self and self.state.tensor_count:
            self._show_progress(self.state)

    @on(RunProgress)
    def run_progress(self, event: RunProgress) -> None:
        if not self.running:
            return
        if self.rate_estimate is None:
            self.rate_estimate = RateEstimate(event.state.total_bytes)
        self.rate_estimate.observe(CLOCK(), event.state.bytes_done)
        if self.app.screen is not self:  # drawn when the screen is shown again
            self.state = event.state
            return
        self._show_progress(event.state)

    @on(RunLog)
    def run_log(self, event: RunLog) -> None:
        self._log(event.text, event.style)

    @on(RunEnded)
    def run_ended(self, event: RunEnded) -> None:
        self.running = False
        self.cancel_event = None
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        self.last_outcome = event.outcome
        self.last_output = event.output_dir
        self.final_seconds = event.record.seconds
        self.outcomes.append(event.outcome)
        elapsed = format_duration(event.record.seconds)
        dialog = self.cancel_dialog
        if dialog is not None and self.app.screen is dialog:
            # The merge ended while "Cancel the merge?" was open: the question is moot.
            dialog.dismiss(None)
            if event.outcome == "finished":
                self.notify("the merge finished before it could be cancelled", timeout=5)
        self.cancel_dialog = None
        ended = getattr(self.app, "merge_ended", None)  # closes "Quit and cancel the merge?"
        if callable(ended):
            ended(event.outcome)
        if event.outcome != "finished" and self.state.tensor_count:
            self._show_progress(self.state)  # no ETA, no current tensor once it stopped
        if event.outcome == "finished":
            self._show_progress(self.state)
            where = escape(short_path(event.output_dir)) if event.output_dir else ""
            self._state_line(
                f"[b $success]✓ merged[/] into {where} in {elapsed} · "
                "[b]t[/] chat with it · [b]u[/] push to Hub"
            )
            self._log(f"finished in {elapsed}: {event.message}", "green")
            self.app.last_merge_output = str(event.output_dir)
            self.notify(f"merged into {short_path(event.output_dir)}", title="Merge finished")
        elif event.outcome == "cancelled":
            self._state_line(f"[b $warning]cancelled[/] after {elapsed}: nothing was written")
            self._log("cancelled: nothing was written (no output, no temporary folder)", "yellow")
        else:
            self._state_line(f"[b $error]✗ failed[/]: {escape(event.message)}")
            self._log(f"failed: {event.message}", "red")
            self.notify(event.message, title="Merge failed", severity="error", timeout=10)
        self._load_history()
        self.refresh_bindings()

    # -- cancel, chat, push, reopen ------------------------------------------------------------

    def action_cancel_merge(self) -> None:
        if not self.running or self.cancel_event is None:
            return
        if isinstance(self.app.screen, ConfirmDialog):
            return
        event = self.cancel_event
        self.cancel_dialog = ConfirmDialog(
            "Cancel the merge?",
            "The merge stops at the next tensor and its temporary folder is removed: "
            "nothing is written.",
            yes="Cancel merge",
            no="Keep merging",
        )
        self.app.push_screen(self.cancel_dialog, partial(self._cancel_answer, event))

    def _cancel_answer(self, event: threading.Event, yes: bool | None) -> None:
        self.cancel_dialog = None
        if yes and self.running and event is self.cancel_event:
            event.set()
            self._state_line("[b $warning]cancelling[/] at the next tensor…")
            self._log("cancel requested", "yellow")

    def action_chat_with_output(self) -> None:
        output = self._finished_output()
        if output is None:
            self.notify("no finished merge to chat with yet", severity="warning")
            return
        from mergetui.tui.chat_screen import open_chat

        open_chat(self.app, str(output))

    def action_push_output(self) -> None:
        output = self._finished_output()
        if output is None:
            self.notify("no finished merge to push yet", severity="warning")
            return
        push = getattr(self.app, "action_push_to_hub", None)
        if push is None:
            self.notify("pushing to the Hub is not available in this version", severity="warning")
            return
        push(str(output))

    def action_reopen_run(self) -> None:
        if self.query_one(TabbedContent).active != "history":
            # Off the History tab nothing is selected that a person can see: show the runs
            # rather than replace the open recipe with one they did not pick.
            self.action_tab("history")
            if self.history:
                self.notify("pick a run, then enter or o reopens its recipe", timeout=4)
            return
        record = self._selected_record()
        if record is None:
            self.notify("no past runs yet", severity="warning")
            return
        self.app._after_unsaved_check(partial(self._reopen, record))

    @on(DataTable.RowSelected, "#run-history")
    def history_row_chosen(self) -> None:
        self.action_reopen_run()

    def _reopen(self, record: Any) -> None:
        from mergetui.editing.document import RecipeDocument

        try:
            recipe = record.recipe()
        except UserError as exc:
            self.notify(str(exc), title="Not reopened", severity="error")
            return
        origin = Path(record.recipe_path) if record.recipe_path else None
        self.app.document = RecipeDocument(
            recipe, path=None, origin=origin, origin_note="from history"
        )
        self.app.document_replaced()
        self.app.switch_mode("recipe")
        self.notify(
            f"reopened the recipe of the run of {record.when()} (save it with ctrl+s)", timeout=5
        )

    # -- help and palette ----------------------------------------------------------------------

    def help_sections(self) -> list[HelpSection]:
        return [
            ("Run screen", binding_rows(self.app, self.BINDINGS)),
            ("History tab", [("enter o", "Reopen the selected run's recipe")]),
        ]

    def palette_commands(self) -> list[PaletteCommand]:
        entries = [
            ("Run: Log tab", "f6 · what the merge is doing", "tab('log')"),
            ("Run: History tab", "f7 · past runs", "tab('history')"),
            ("Cancel merge", "c · stop the running merge (asks first)", "cancel_merge"),
            (
                "Chat with the merge",
                "t · load the finished merge on the Chat screen",
                "chat_with_output",
            ),
            ("Push the merge to the Hub", "u · upload the finished merge", "push_output"),
            ("Reopen a past run's recipe", "o or enter (History tab)", "reopen_run"),
        ]
        return [
            PaletteCommand(title, help_text, partial(self.run_action, action), action)
            for title, help_text, action in entries
        ]


def _lower_priority() -> None:
    """Give the calling (merge) thread, and every thread it starts, a lower CPU priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MERGE_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: merge at normal priority
        pass


def start_merge(app: Any) -> None:
    """The palette's "Run merge" from any screen: go to the Run screen and start."""

    def go() -> None:
        screen = app.screen
        if isinstance(screen, RunScreen):
            screen.action_run_merge()

    app.switch_mode("run")
    app.call_after_refresh(go)


def app_palette_commands(app: Any) -> list[PaletteCommand]:
    """Run and chat entries every screen's palette has."""
    from mergetui.tui.chat_screen import ask_load_model

    return [
        PaletteCommand(
            "Run merge",
            "r (Run screen) · merge the open recipe now",
            partial(start_merge, app),
            "run_merge",
        ),
        PaletteCommand(
            "Chat: load a model…",
            "ctrl+l (Chat screen) · a merge, a parent or any checkpoint folder",
            partial(ask_load_model, app),
            "load_model",
        ),
    ]

"""The Run screen: merge the current recipe in the background and watch it happen.

`r` (or the palette's "Run merge") plans the open recipe, unsaved edits included, and runs the engine
in a thread worker (`worker.py`); its events come back as messages (`messages.py`) and are drawn by
the progress pane (`progress.py`) and the Log tab (`tabs.py`). `c` cancels after a confirmation: the
engine removes its temporary folder and nothing is left behind. Each run is recorded in the history
(`mergetui.merge.history`); a past run's recipe reopens with enter on the History tab. A finished
merge offers chat (`t`, through the app) and push (`u`).

A multi-stage file (docs/multi-stage.md) runs whole: its stages are placed as `mergetui merge` places
them (the final output from the final stage's recipe, else asked for; the others in `OUT-stages`),
judged before anything runs (a folder another recipe made is replaced only when asked), then run in
order by the worker, each under a `stage 2/3: NAME` heading with its own progress bar, an up-to-date
stage skipped; cancel stops the stage that runs and keeps those finished.

An MoE recipe (docs/moe.md) is assembled by the CLI's core (`merge.moe_plan`, `merge.moe_run`)
with the same bar, figures, log, cancel and history; its output is its recipe's, else asked at `r`.
"""

from __future__ import annotations

import copy
import threading
from functools import partial
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Header, TabbedContent

from mergetui.tui.commands import PaletteCommand, PaletteEntry, binding_commands, binding_keys
from mergetui.tui.dialogs.confirm import ConfirmDialog
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.eta import RateEstimate
from mergetui.tui.footer import KeyFooter
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen
from mergetui.tui.paths_text import document_folder, short_path
from mergetui.tui.run import clocks
from mergetui.tui.run.kinds import RunKinds
from mergetui.tui.run.messages import (
    ChatWith,
    ProgressState,
    RunDevice,
    RunEnded,
    RunLog,
    RunProgress,
    RunStarted,
    StageStarted,
)
from mergetui.tui.run.progress import ProgressPane, RunTiming, format_duration
from mergetui.tui.run.tabs import HistoryTab, LogTab
from mergetui.tui.run.worker import MergeJob, run_job


class RunScreen(RunKinds, ModeScreen):
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
    # The palette's entries for these keys (reopen's is made apart: enter on the History tab too).
    PALETTE = [
        PaletteEntry("tab('log')", "Run: Log tab", "what the merge is doing"),
        PaletteEntry("tab('history')", "Run: History tab", "past runs"),
        PaletteEntry("cancel_merge", "Cancel merge", "stop the running merge (asks first)"),
        PaletteEntry(
            "chat_with_output", "Chat with the merge", "load the finished merge on the Chat screen"
        ),
        PaletteEntry("push_output", "Push the merge to the Hub", "upload the finished merge"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.cancel_event: threading.Event | None = None
        self.state = ProgressState()
        self.timing = RunTiming()
        self.last_output: Path | None = None
        self.last_outcome: str | None = None
        self.outcomes: list[str] = []  # outcomes of this session's runs, oldest first
        self.cancel_dialog: ConfirmDialog | None = None  # the open "Cancel the merge?" question
        self.ticker: Any = None  # redraws the elapsed time once a second while a merge runs
        # A multi-stage file: the final output chosen at `r` when its recipe sets none, the
        # stages of the run under way (or last run), and the heading of the stage that runs.
        self.chosen_out: tuple[Any, Path] | None = None  # (the document, its folder)
        self.running_stages = False
        self.stage_heading = ""
        self.stage_clock: float | None = None

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield ProgressPane(id="run-top")
        with TabbedContent(id="run-tabs", initial="log"):
            yield LogTab()
            yield HistoryTab()
        yield KeyFooter()

    @property
    def progress(self) -> ProgressPane:
        return self.query_one(ProgressPane)

    @property
    def log_tab(self) -> LogTab:
        return self.query_one(LogTab)

    @property
    def history_tab(self) -> HistoryTab:
        return self.query_one(HistoryTab)

    def on_mount(self) -> None:
        self.log_tab.say(
            "The merge's plan, notes and files show here as it runs. F7 lists past runs.", "dim"
        )
        self.history_tab.load()
        self._show_idle()

    def on_screen_resume(self) -> None:
        self.app.refresh_title()
        if self.app.document.stages is None:
            self.sub_title = None
        else:
            self._stage_title()
        if not self.running:
            self._show_idle()
        elif self.timing.started is not None:
            self._show_progress(self.state)

    def on_unmount(self) -> None:
        # Leaving the app mid-merge: ask the engine to stop and clean up its temporary folder.
        if self.cancel_event is not None:
            self.cancel_event.set()

    # -- what the screen says ------------------------------------------------------------------

    def _recipe_dir(self) -> Path:
        return document_folder(self.app.document)

    def _relative_to(self) -> str:
        """What a relative output is read from, in words (the output prompt's hint)."""
        document = self.app.document
        owner = "the recipe's folder" if document.path or document.origin else "the working folder"
        return f"{owner}, {short_path(self._recipe_dir())}"

    def _output_dir(self) -> Path | None:
        """Where the merge will write: the recipe's output, read from the recipe's folder (a
        multi-stage file's: its final stage's, or the folder chosen at `r`)."""
        from mergetui.recipe.paths import output_folder

        moe = self.app.document.moe
        if moe is not None:
            from mergetui.recipe.paths import recipe_path

            if moe.output:
                return recipe_path(moe.output, self._recipe_dir())
            return self.stages_out  # chosen at `r` for this document
        stages = self.app.document.stages
        if stages is not None:
            from mergetui.recipe.stage_order import final_output

            try:
                return final_output(stages, self._recipe_dir(), self.stages_out, needed=False)
            except Exception:  # noqa: BLE001 - shown as "not set"; `r` says why
                return None
        return output_folder(self.app.document.recipe, self._recipe_dir())

    def _show_progress(self, state: ProgressState) -> None:
        self.state = state
        finished = self.last_outcome == "finished"
        self.progress.show(state, running=self.running, timing=self.timing, finished=finished)

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
        if self.app.document.stages is not None:
            self._run_stages()
            return
        if self.app.document.moe is not None:
            self._run_moe()
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
        elif output.exists():
            self._ask_replace(output)
        else:
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

    def _start(self, *, force: bool, stages: list[Any] | None = None) -> None:
        self.running = True
        self.running_stages = stages is not None
        self.stage_heading = ""
        self.stage_clock = None  # CLOCK() when the stage that runs started
        self.last_outcome = None
        self.last_output = None
        self.cancel_event = threading.Event()
        # The rate estimate is made when the plan says how many bytes there are.
        self.timing = RunTiming(started=clocks.CLOCK())
        self.state = ProgressState()
        self.log_tab.clear()
        self.progress.planning()
        self.refresh_bindings()
        # Elapsed keeps counting while no tensor finishes (planning, a slow first tensor).
        self.ticker = self.set_interval(1.0, self._tick)
        document = self.app.document
        job = MergeJob(
            recipe=copy.deepcopy(document.recipe),
            recipe_dir=self._recipe_dir(),
            force=force,
            cancel=self.cancel_event,
            source=document.path or document.origin,
            started_at=clocks.WALL_CLOCK(),
            stages=stages,
            moe=copy.deepcopy(document.moe),
            out=self._output_dir() if document.moe is not None else None,
        )
        self._merge(job)

    @work(thread=True, exclusive=True, group="merge", exit_on_error=False)
    def _merge(self, job: MergeJob) -> None:
        """Plan and run the merge in this thread; everything the UI needs goes as messages."""
        run_job(self, job)

    # -- messages from the worker --------------------------------------------------------------

    @on(StageStarted)
    def stage_started(self, event: StageStarted) -> None:
        self.stage_heading = event.heading
        self._stage_title()
        where = f" → {escape(short_path(event.output))}" if event.output else ""
        self.log_tab.say(f"{escape(event.heading)}{where}", "bold")
        if self.cancel_event is not None and self.cancel_event.is_set():
            return
        verb = "[b]planning[/]…" if event.runs else "up to date: skipped"
        self.progress.state_line(f"{self._stage_prefix()}{verb}")

    @on(RunStarted)
    def run_started(self, event: RunStarted) -> None:
        for line in event.summary:
            self.log_tab.say(line)
        # Each stage of a multi-stage run has its own bar, rate and ETA.
        self.timing.estimate = None
        self.stage_clock = clocks.CLOCK()
        # `auto` is resolved by the engine: RunDevice names the device once it is chosen.
        where = f" on {escape(event.device)}" if event.device != "auto" else ""
        if self.cancel_event is None or not self.cancel_event.is_set():
            self.progress.state_line(
                f"{self._stage_prefix()}[b]{self._verb()}[/]{where}… [dim]c cancels[/]"
            )
        self._show_progress(event.state)

    @on(RunDevice)
    def run_device(self, event: RunDevice) -> None:
        if self.running and self.cancel_event is not None and not self.cancel_event.is_set():
            self.progress.state_line(
                f"{self._stage_prefix()}[b]{self._verb()}[/] on {escape(event.device)}… "
                "[dim]c cancels[/]"
            )

    def _verb(self) -> str:
        """What the state line says the engine does."""
        return "assembling" if self.app.document.moe is not None else "merging"

    def _tick(self) -> None:
        if self.running and self.app.screen is self and self.state.tensor_count:
            self._show_progress(self.state)

    @on(RunProgress)
    def run_progress(self, event: RunProgress) -> None:
        if not self.running:
            return
        if self.timing.estimate is None:
            self.timing.estimate = RateEstimate(event.state.total_bytes)
        self.timing.estimate.observe(clocks.CLOCK(), event.state.bytes_done)
        if self.app.screen is not self:  # drawn when the screen is shown again
            self.state = event.state
            return
        self._show_progress(event.state)

    @on(RunLog)
    def run_log(self, event: RunLog) -> None:
        self.log_tab.say(event.text, event.style)

    @on(RunEnded)
    def run_ended(self, event: RunEnded) -> None:
        self.running = False
        self.cancel_event = None
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        self.last_outcome = event.outcome
        self.last_output = event.output_dir
        self.timing.final_seconds = event.record.seconds
        if self.running_stages and self.stage_clock is not None and self.state.tensor_count:
            # The figures are the last merged stage's: its bytes over its own time.
            self.timing.final_seconds = clocks.CLOCK() - self.stage_clock
        self.outcomes.append(event.outcome)
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
        if self.running_stages and not self.state.tensor_count:
            self.progress.nothing_merged(finished=event.outcome == "finished")
        elif event.outcome == "finished" or self.state.tensor_count:
            self._show_progress(self.state)  # no ETA, no current tensor once it stopped
        if self.running_stages:
            self._stage_title()
        self._say_ended(event, format_duration(event.record.seconds))
        self.history_tab.load()
        self.refresh_bindings()

    # -- cancel, chat, push, reopen ------------------------------------------------------------

    def action_cancel_merge(self) -> None:
        if not self.running or self.cancel_event is None:
            return
        if isinstance(self.app.screen, ConfirmDialog):
            return
        event = self.cancel_event
        said = (
            "The stage that runs stops at the next tensor and its temporary folder is removed; "
            "the stages finished before it are kept."
            if self.running_stages
            else "The merge stops at the next tensor and its temporary folder is removed: "
            "nothing is written."
        )
        self.cancel_dialog = ConfirmDialog(
            "Cancel the merge?",
            said,
            yes="Cancel merge",
            no="Keep merging",
        )
        self.app.push_screen(self.cancel_dialog, partial(self._cancel_answer, event))

    def _cancel_answer(self, event: threading.Event, yes: bool | None) -> None:
        self.cancel_dialog = None
        if yes and self.running and event is self.cancel_event:
            event.set()
            self.progress.state_line(
                f"{self._stage_prefix()}[b $warning]cancelling[/] at the next tensor…"
            )
            self.log_tab.say("cancel requested", "yellow")

    def action_chat_with_output(self) -> None:
        output = self._finished_output()
        if output is None:
            self.notify("no finished merge to chat with yet", severity="warning")
            return
        self.post_message(ChatWith(str(output)))  # the app opens the Chat screen on it

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
            if self.history_tab.records:
                self.notify("pick a run, then enter or o reopens its recipe", timeout=4)
            return
        self.history_tab.reopen_selected()

    @on(DataTable.RowSelected, "#run-history")
    def history_row_chosen(self) -> None:
        self.action_reopen_run()

    # -- help and palette ----------------------------------------------------------------------

    def help_sections(self) -> list[HelpSection]:
        reopen = binding_keys(self.BINDINGS, "reopen_run")
        return [
            ("Run screen", binding_rows(self.app, self.BINDINGS)),
            ("History tab", [(f"enter {reopen}", "Reopen the selected run's recipe")]),
        ]

    def palette_commands(self) -> list[PaletteCommand]:
        reopen = binding_keys(self.BINDINGS, "reopen_run")
        return [
            *binding_commands(self, self.PALETTE, self.BINDINGS),
            PaletteCommand(
                "Reopen a past run's recipe",
                f"{reopen} or enter (History tab)",
                partial(self.run_action, "reopen_run"),
                "reopen_run",
            ),
        ]


def start_merge(app: Any) -> None:
    """The palette's "Run merge" from any screen: go to the Run screen and start."""

    def go() -> None:
        screen = app.screen
        if isinstance(screen, RunScreen):
            screen.action_run_merge()

    app.switch_mode("run")
    app.call_after_refresh(go)

"""The top of the Run screen: what will be merged, the state of the run, and its progress.

Six lines: the recipe's summary, the state (idle hint, planning, merging, the outcome), the bar,
bytes · tensors · rate · ETA · elapsed, the tensor being written, and a strip of the layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from mergetui.formatting import format_duration, human_bytes
from mergetui.tui.eta import RateEstimate
from mergetui.tui.paths_text import short_path
from mergetui.tui.run import clocks
from mergetui.tui.run.messages import ProgressState


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


@dataclass
class RunTiming:
    """When the run started, how long it took once it ended, and its measured rate."""

    started: float | None = None  # CLOCK() at `r`
    final_seconds: float | None = None  # the whole run, once it ended
    estimate: RateEstimate | None = None  # throughput and ETA while it runs

    def figures(
        self, state: ProgressState, *, running: bool, finished: bool, now: float
    ) -> tuple[float, float | None, str]:
        """(seconds elapsed, bytes a second, the ETA in words). While running, the rate is
        measured from the first progress report (start-up is not merging); once ended, it is the
        whole run's average, and a finished merge has nothing left while a cancelled or failed
        one has no ETA."""
        if not running and self.final_seconds is not None:
            elapsed = self.final_seconds
        else:
            elapsed = now - self.started if self.started is not None else 0.0
        if running:
            estimate = self.estimate
            rate = estimate.rate(now) if estimate is not None else None
            eta = format_duration(estimate.eta(now) if estimate is not None else None)
        else:
            rate = state.bytes_done / elapsed if elapsed > 0 else None
            eta = "0.0 s" if finished else "—"
        return elapsed, rate, eta


class ProgressPane(Vertical):
    """The summary, state and progress lines above the Run screen's tabs."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # What the idle lines show now: an unchanged text is not updated again (each update
        # costs a layout, on every switch to the Run screen).
        self._idle_texts: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="run-summary")
        yield Static(id="run-state")
        yield ProgressBar(total=100, show_eta=False, id="run-progress")
        yield Static(id="run-stats")
        yield Static(id="run-tensor")
        yield Static(id="run-layers")

    def show_recipe(self, document: Any, output: Path | None, *, first: bool) -> None:
        """What `r` would merge and where; before the first run, also what `r` does."""
        recipe = document.recipe
        models = ", ".join(recipe.models) or "no models yet"
        self._update_once(
            "#run-summary",
            f"[b]{escape(document.display_name)}[/] · {escape(recipe.method)} · "
            f"{escape(models)}\noutput: "
            + (escape(short_path(output)) if output else "[$warning]not set[/]"),
        )
        if first:
            hint = "[b]r[/] runs the merge of the open recipe (unsaved edits included)"
            if output is not None and output.exists():
                hint += " · the output exists: a run asks before replacing it"
            self._update_once("#run-state", hint)

    def show_moe(self, document: Any, output: Path | None, *, first: bool) -> None:
        """An MoE recipe: its experts and gate mode, and where it is assembled."""
        moe = document.moe
        shared = f" + {len(moe.shared_experts)} shared" if moe.shared_experts else ""
        name = document.path.name if document.path else document.display_name
        self._update_once(
            "#run-summary",
            f"[b]{escape(name)}[/] · MoE of {len(moe.experts)} experts{shared} · "
            f"gate {escape(moe.gate_mode)} · {moe.experts_per_token} per token\noutput: "
            + (escape(short_path(output)) if output else "[$warning]not set[/] (r asks)"),
        )
        if first:
            hint = "[b]r[/] assembles the MoE as [b]mergetui merge[/] does"
            if output is not None and output.exists():
                hint += " · the output exists: a run asks before replacing it"
            self._update_once("#run-state", hint)

    def show_stages(
        self, document: Any, output: Path | None, stages_dir: Path | None, *, first: bool
    ) -> None:
        """A multi-stage file: its stages (file order), where the final one writes and where the
        named ones do."""
        stages = ", ".join(
            f"{escape(document.stage_name(stage))} ({escape(stage.recipe.method)})"
            for stage in document.stages
        )
        where = escape(short_path(output)) if output else "[$warning]not set[/] (r asks)"
        name = document.path.name if document.path else document.display_name
        self._update_once(
            "#run-summary",
            f"[b]{escape(name)}[/] · {len(document.stages)} stages: {stages}\n"
            f"output: {where}"
            + (f" · stages in {escape(short_path(stages_dir))}" if stages_dir else ""),
        )
        if first:
            self._update_once(
                "#run-state",
                "[b]r[/] runs every stage in order (unsaved edits included); "
                "up-to-date stages are skipped",
            )

    def _update_once(self, selector: str, text: str) -> None:
        """Update an idle line only when its text changes."""
        if self._idle_texts.get(selector) == text:
            return
        self._idle_texts[selector] = text
        self.query_one(selector, Static).update(text)

    def state_line(self, text: str) -> None:
        self._idle_texts.pop("#run-state", None)
        self.query_one("#run-state", Static).update(text)

    def planning(self) -> None:
        """A run starts: no figures until the plan says how many bytes there are."""
        self.state_line("[b]planning[/] (reading the checkpoints' headers)…")
        self.query_one("#run-progress", ProgressBar).update(total=None, progress=0)
        for line in ("#run-stats", "#run-tensor", "#run-layers"):
            self.query_one(line, Static).update("")

    def nothing_merged(self, *, finished: bool) -> None:
        """A multi-stage run that merged nothing (every stage up to date): a full bar when it
        finished, and no figures."""
        self.query_one("#run-progress", ProgressBar).update(total=1, progress=1 if finished else 0)
        for line in ("#run-stats", "#run-tensor", "#run-layers"):
            self.query_one(line, Static).update("")

    def show(
        self, state: ProgressState, *, running: bool, timing: RunTiming, finished: bool
    ) -> None:
        """Draw `state`: the bar, the figures, the current tensor (while running), the layers."""
        elapsed, rate, eta = timing.figures(
            state, running=running, finished=finished, now=clocks.CLOCK()
        )
        bar = self.query_one("#run-progress", ProgressBar)
        bar.update(total=max(1, state.total_bytes), progress=state.bytes_done)
        parts = [
            f"{human_bytes(state.bytes_done)} / {human_bytes(state.total_bytes)}",
            f"{state.tensors_done}/{state.tensor_count} tensors",
            f"{human_bytes(rate)}/s" if rate else "— /s",
            f"ETA {eta}",
            f"elapsed {format_duration(elapsed)}",
        ]
        self.query_one("#run-stats", Static).update(" · ".join(parts))
        self.query_one("#run-tensor", Static).update(
            f"[dim]tensor[/] {escape(state.current)}" if state.current and running else ""
        )
        self.query_one("#run-layers", Static).update(self._layers(state))

    def _layers(self, state: ProgressState) -> Text:
        width = max(8, self.screen.size.width - 30)
        strip = Text("layers ", style="bold")
        strip.append("E", style="green" if state.pre_done else "dim")
        strip.append(" ")
        strip.append_text(
            layer_strip(state.layers_done, state.active_layer, state.layer_count, width)
        )
        strip.append(" ")
        strip.append("H", style="green" if state.post_done else "dim")
        strip.append(f"  {len(state.layers_done)}/{state.layer_count}")
        return strip

"""The Run screen's merge, in a thread: plan the recipe, run the engine, record the run.

Everything the screen needs goes to it as messages (`messages.py`); the engine's events are relayed,
progress coalesced to at most PROGRESS_HZ updates a second, so a merge never floods the UI and keys
stay quick. The merge threads run at a lower CPU priority than the UI.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from textual.message import Message

from mergetui.errors import CancelledError, UserError
from mergetui.formatting import human_bytes
from mergetui.tui.paths_text import short_path
from mergetui.tui.run import clocks
from mergetui.tui.run.messages import (
    ProgressState,
    RunDevice,
    RunEnded,
    RunLog,
    RunProgress,
    RunStarted,
)
from mergetui.tui.workers import lower_priority

PROGRESS_HZ = 20


class Poster(Protocol):
    """Where the worker's messages go (the Run screen; a collector in tests)."""

    def post_message(self, message: Message) -> bool: ...


class Relay:
    """The engine's listener: turns events into messages, progress at most PROGRESS_HZ a second."""

    def __init__(self, target: Poster, plan: Any) -> None:
        self.target = target
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
            self.target.post_message(RunLog(f"merging on {event.device}", "bold"))
            self.target.post_message(RunDevice(event.device))
        elif isinstance(event, ShardWritten):
            self.flush()
            self.target.post_message(
                RunLog(
                    f"wrote {event.filename} ({human_bytes(event.nbytes)}, "
                    f"shard {event.index + 1}/{event.shard_count})"
                )
            )
        elif isinstance(event, Notice):
            self.target.post_message(RunLog(f"note: {event.message}", "yellow"))

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
        self.target.post_message(RunProgress(snapshot))


@dataclass
class MergeJob:
    """One run, as the screen starts it: the recipe as it was (unsaved edits included)."""

    recipe: Any
    recipe_dir: Path
    force: bool
    cancel: threading.Event
    source: Path | None  # the recipe's file, for the history
    started_at: float  # wall-clock time, for the history


def run_job(target: Poster, job: MergeJob) -> None:
    """Plan and run the merge in this thread, then record it; the outcome goes as RunEnded."""
    from mergetui.merge.history import append_run

    lower_priority()
    started = clocks.CLOCK()
    plan = None
    outcome, message, output = "failed", "", None
    try:
        check_recipe(job.recipe, job.recipe_dir)
        from mergetui.merge.plan import make_plan

        plan = make_plan(job.recipe, recipe_dir=job.recipe_dir)
        output, message = _run_plan(target, plan, job)
        outcome = "finished"
    except CancelledError:
        outcome, message = "cancelled", "nothing was written"
    except UserError as exc:
        outcome, message = "failed", str(exc)
    except Exception as exc:  # a bug: say so, keep the app alive
        outcome, message = "failed", f"internal error: {exc!r}"
    record = _record(job, plan, outcome, message, clocks.CLOCK() - started)
    try:
        append_run(record)
    except OSError as exc:
        target.post_message(RunLog(f"the run was not added to the history: {exc}", "yellow"))
    target.post_message(RunEnded(outcome, message, output, record))


def check_recipe(recipe: Any, recipe_dir: Path) -> None:
    """Refuse a recipe the validator finds errors in, naming the first (offline: no network)."""
    from mergetui.recipe.validate import validate_recipe

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


def _run_plan(target: Poster, plan: Any, job: MergeJob) -> tuple[Path, str]:
    """Run the engine on `plan`, relaying its events; (the output folder, what was written)."""
    from mergetui.merge.runner import run_merge

    if plan.output_dir.exists() and not job.force:
        raise UserError("the output folder already exists", where=str(plan.output_dir))
    relay = Relay(target, plan)
    # The plan's notices come from the engine as events (logged once, by the relay).
    target.post_message(RunStarted(plan_summary(plan), copy.copy(relay.state), plan.device))
    try:
        result = run_merge(plan, on_event=relay, cancel=job.cancel, force=job.force)
    finally:
        relay.flush()
    return result.output_dir, f"{result.tensor_count} tensors, {human_bytes(result.total_bytes)}"


def plan_summary(plan: Any) -> list[str]:
    """The two lines the Log tab starts a run with: what is merged where, and how big it is."""
    return [
        f"{plan.method} of {', '.join(plan.models)} → {short_path(plan.output_dir)}",
        f"{plan.tensor_count} tensors · {human_bytes(plan.total_bytes)} in "
        f"{plan.shard_count} file(s) · {plan.layer_count or 0} layers · "
        f"dtype {plan.output_dtype or 'as the inputs'} · peak memory about "
        f"{human_bytes(plan.estimated_peak_bytes)}",
    ]


def _record(job: MergeJob, plan: Any, outcome: str, message: str, seconds: float) -> Any:
    """The history's record of this run (made whether it finished, failed or was cancelled)."""
    from mergetui.merge.history import RunRecord
    from mergetui.recipe.toml_write import dumps_toml

    recipe = job.recipe
    return RunRecord(
        started_at=job.started_at,
        recipe_toml=dumps_toml(recipe),
        output_dir=str(plan.output_dir if plan is not None else (recipe.output or "")),
        outcome=outcome,
        seconds=seconds,
        recipe_path=str(job.source) if job.source is not None else None,
        method=recipe.method,
        models=list(recipe.models),
        message=message,
        total_bytes=plan.total_bytes if plan is not None else 0,
        tensor_count=plan.tensor_count if plan is not None else 0,
    )

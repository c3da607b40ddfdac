"""The Run screen's merge, in a thread: plan the recipe, run the engine, record the run.

Everything the screen needs goes to it as messages (`messages.py`); the engine's events are relayed,
progress coalesced to at most PROGRESS_HZ updates a second, so a merge never floods the UI and keys
stay quick. The merge threads run at a lower CPU priority than the UI.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable
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
    StageStarted,
)
from mergetui.tui.workers import lower_priority

PROGRESS_HZ = 20


class Poster(Protocol):
    """Where the worker's messages go (the Run screen; a collector in tests)."""

    def post_message(self, message: Message) -> bool: ...


class Relay:
    """The engine's listener: turns events into messages, progress at most PROGRESS_HZ a second."""

    def __init__(self, target: Poster, plan: Any, verb: str = "merging") -> None:
        self.target = target
        self.plan = plan
        self.verb = verb  # what the log says the engine does ("assembling" for an MoE)
        self.state = ProgressState(
            total_bytes=plan.total_bytes,
            tensor_count=plan.tensor_count,
            layer_count=plan.layer_count or 0,
        )
        self.per_layer: dict[int, int] = {}
        self.pre = self.post = 0
        self.sections: dict[str, tuple[str, int | None]] = {}
        for tensor in plan.tensors:
            # An MoE plan's tensors have no section: those before the first layer's are "pre".
            section = getattr(tensor, "section", None) or ("post" if self.per_layer else "pre")
            self.sections[tensor.name] = (section, tensor.layer)
            if tensor.layer is not None:
                self.per_layer[tensor.layer] = self.per_layer.get(tensor.layer, 0) + 1
            elif section == "pre":
                self.pre += 1
            else:
                self.post += 1
        self.layer_seen: dict[int, int] = {}
        self.pre_seen = self.post_seen = 0
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
            self.target.post_message(RunLog(f"{self.verb} on {event.device}", "bold"))
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
    stages: list[Any] | None = None  # a multi-stage file's stages, placed (`place_stages`)
    moe: Any = None  # an MoE recipe (`recipe` is then a placeholder)
    out: Path | None = None  # where the MoE goes when its recipe names no output (chosen at `r`)


def run_job(target: Poster, job: MergeJob) -> None:
    """Plan and run the merge in this thread, then record it; the outcome goes as RunEnded."""
    if job.stages is not None:
        run_stages_job(target, job)
        return
    if job.moe is not None:
        run_moe_job(target, job)
        return

    def plan() -> Any:
        check_recipe(job.recipe, job.recipe_dir)
        from mergetui.merge.plan import make_plan

        return make_plan(job.recipe, recipe_dir=job.recipe_dir)

    _run_recorded(target, job, plan, _run_plan, _record)


def run_moe_job(target: Poster, job: MergeJob) -> None:
    """Assemble an MoE recipe in this thread with the CLI's core (`merge.moe_plan` checks and
    plans, `merge.moe_run` writes into a temporary folder renamed into place), then record it."""

    def plan() -> Any:
        from mergetui.merge.moe_plan import make_moe_plan

        return make_moe_plan(job.moe, recipe_dir=job.recipe_dir, out=job.out)

    _run_recorded(target, job, plan, _run_moe_plan, _moe_record)


def _run_recorded(
    target: Poster,
    job: MergeJob,
    plan_of: Callable[[], Any],
    run_plan: Callable[[Poster, Any, MergeJob], tuple[Path, str]],
    record_of: Callable[..., Any],
) -> None:
    """One merge or assembly at lower priority: plan, run, then its history record; how it ended
    (finished, cancelled, failed, or a bug said as such) goes as RunEnded."""
    lower_priority()
    started = clocks.CLOCK()
    plan = None
    outcome, message, output = "failed", "", None
    try:
        plan = plan_of()
        output, message = run_plan(target, plan, job)
        outcome = "finished"
    except CancelledError:
        outcome, message = "cancelled", "nothing was written"
    except UserError as exc:
        outcome, message = "failed", str(exc)
    except Exception as exc:  # a bug: say so, keep the app alive
        outcome, message = "failed", f"internal error: {exc!r}"
    record = record_of(job, plan, outcome, message, clocks.CLOCK() - started)
    _append(target, record)
    target.post_message(RunEnded(outcome, message, output, record))


def _run_moe_plan(target: Poster, plan: Any, job: MergeJob) -> tuple[Path, str]:
    """`run_moe` on `plan`, its events relayed as a merge's; (the output folder, what was
    written)."""
    from mergetui.merge.moe_run import run_moe

    if plan.output_dir.exists() and not job.force:
        raise UserError("the output folder already exists", where=str(plan.output_dir))
    relay = Relay(target, plan, "assembling")
    target.post_message(RunStarted(moe_summary(plan), copy.copy(relay.state), plan.device))
    try:
        result = run_moe(plan, on_event=relay, cancel=job.cancel, force=job.force)
    finally:
        relay.flush()
    return result.output_dir, (
        f"a {plan.architecture} of {len(plan.recipe.experts)} experts: "
        f"{result.tensor_count} tensors, {human_bytes(result.total_bytes)}"
    )


def moe_summary(plan: Any) -> list[str]:
    """The two lines the Log tab starts an MoE assembly with (as `plan_summary` for a merge)."""
    recipe = plan.recipe
    shared = f" + {len(recipe.shared_experts)} shared" if recipe.shared_experts else ""
    return [
        f"MoE ({plan.architecture}) of {len(recipe.experts)} experts{shared}, "
        f"gate {recipe.gate_mode}, {recipe.experts_per_token} per token → "
        f"{short_path(plan.output_dir)}",
        f"{plan.tensor_count} tensors · {human_bytes(plan.total_bytes)} in "
        f"{plan.shard_count} file(s) · {plan.layer_count} layers · "
        f"dtype {dtype_label(plan.out_dtype)} · peak memory about "
        f"{human_bytes(plan.estimated_peak_bytes)}",
    ]


def dtype_label(code: str | None) -> str:
    from mergetui.dtypes import dtype_name

    return dtype_name(code) if code else "as the inputs"


def _moe_record(job: MergeJob, plan: Any, outcome: str, message: str, seconds: float) -> Any:
    """The history's record of an MoE assembly: its recipe as `[moe]` TOML (the run's copy, with
    local models absolute, once planned), method `moe`, the experts as its models."""
    from mergetui.merge.history import RunRecord
    from mergetui.recipe.moe import dumps_moe

    moe = job.moe
    if plan is not None:
        from mergetui.merge.moe_run import moe_recipe_as_run

        kept = moe_recipe_as_run(plan)
        kept.output = moe.output
        output = str(plan.output_dir)
    else:
        kept, output = moe, str(job.out or moe.output or "")
    return RunRecord(
        started_at=job.started_at,
        recipe_toml=dumps_moe(kept, "toml"),
        output_dir=output,
        outcome=outcome,
        seconds=seconds,
        recipe_path=str(job.source) if job.source is not None else None,
        method="moe",
        models=[expert.source for expert in moe.experts],
        message=message,
        total_bytes=plan.total_bytes if plan is not None else 0,
        tensor_count=plan.tensor_count if plan is not None else 0,
    )


def run_stages_job(target: Poster, job: MergeJob) -> None:
    """Run a multi-stage file's stages (placed) in this thread, as `mergetui merge FILE` does
    (`merge.stages`: the checks before anything runs, then each stage in order, skipped when up to
    date); each stage that runs is recorded in the history. RunEnded names the final output."""
    from mergetui.merge import stages as staging
    from mergetui.merge.plan import make_plan

    lower_priority()
    stages = job.stages
    assert stages is not None
    started = clocks.CLOCK()
    outcome, message, output = "failed", "", None
    current: dict[str, Any] = {}  # the stage that runs now: its step, plan and start
    merged = [0]
    last = None

    def record(outcome: str, message: str) -> Any:
        step = current["step"]
        stage_job = MergeJob(
            step.stage.recipe, job.recipe_dir, step.force, job.cancel, job.source, job.started_at
        )
        made = _record(
            stage_job, current.get("plan"), outcome, message, clocks.CLOCK() - current["at"]
        )
        _append(target, made)
        return made

    def begin(step: Any) -> None:
        current.clear()
        current.update(step=step, at=clocks.CLOCK())
        target.post_message(StageStarted(step.heading, step.stage.output, step.output.runs))

    def plan(step: Any) -> Any:
        current["plan"] = make_plan(
            step.stage.recipe, recipe_dir=job.recipe_dir, out=step.stage.output
        )
        return current["plan"]

    def merge(step: Any, plan: Any) -> int:
        nonlocal last
        _, said = _run_plan(target, plan, dataclasses.replace(job, force=step.force))
        last = record("finished", said)
        merged[0] += 1
        return 0

    try:
        check_stages(stages)
        states = staging.stage_outputs(stages, None)
        staging.check_outputs(stages, states, force=job.force, recipe_dir=job.recipe_dir)
        run = staging.run_steps(
            staging.stage_steps(stages, states, force=job.force),
            plan=plan,
            merge=merge,
            started=begin,
            skipped=lambda step: target.post_message(RunLog(f"  {staging.SKIPPED}", "dim")),
            kept=lambda count: target.post_message(RunLog(f"  {staging.KEPT}", "yellow")),
        )
        output = staging.final_stage(stages).output
        outcome = "finished"
        message = (
            f"{len(stages)} stages, {run.merged} merged, {len(stages) - run.merged} up to date"
        )
    except CancelledError:
        outcome, message = "cancelled", _stopped(current, merged[0], "was not written")
    except UserError as exc:
        outcome, message = "failed", str(exc)
    except Exception as exc:  # a bug: say so, keep the app alive
        outcome, message = "failed", f"internal error: {exc!r}"
    if outcome != "finished" and "step" in current and current["step"].output.runs:
        last = record(outcome, message)
    if last is None:  # nothing ran (every stage up to date, or refused before the first)
        last = _nothing_ran(job, output, outcome, message)
    last = dataclasses.replace(last, seconds=clocks.CLOCK() - started)
    target.post_message(RunEnded(outcome, message, output, last))


def _nothing_ran(job: MergeJob, output: Any, outcome: str, message: str) -> Any:
    """The record of a multi-stage run in which no stage merged (all up to date, or refused)."""
    from mergetui.merge.history import RunRecord

    return RunRecord(
        started_at=job.started_at,
        recipe_toml="",
        output_dir=str(output or ""),
        outcome=outcome,
        seconds=0.0,
        message=message,
    )


def _stopped(current: dict[str, Any], merged: int, what: str) -> str:
    """What a cancelled multi-stage run left: the stage it stopped in, and those kept."""
    step = current.get("step")
    said = f"{step.heading} {what}" if step is not None else f"nothing {what}"
    if merged:
        said += f"; the {merged} stage(s) merged before it are kept (running again skips them)"
    return said


def _append(target: Poster, record: Any) -> None:
    from mergetui.merge.history import append_run

    try:
        append_run(record)
    except OSError as exc:
        target.post_message(RunLog(f"the run was not added to the history: {exc}", "yellow"))


def check_stages(stages: list[Any]) -> None:
    """Refuse stages the validator finds errors in (as `mergetui merge` does, offline), naming the
    stage and the first error."""
    from mergetui.recipe.stage_order import validate_stages

    results = validate_stages(stages, offline=True, hub_cache=True)
    for stage in sorted(stages, key=lambda s: s.number):
        errors = [p for p in results[stage.number] if getattr(p, "is_error", True)]
        if errors:
            first = errors[0]
            where = getattr(first, "where", None)
            raise UserError(
                f"{stage.label} has {len(errors)} error(s); first: "
                + (f"{where}: " if where else "")
                + str(getattr(first, "message", first)),
                fix="see `mergetui validate FILE`, or the stage's Problems tab (F3, then F9)",
            )


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

"""Whether a stage of a multi-stage file must run: its output folder against its recipe.

A merge stores the recipe it ran (`output.recipe_as_run`, written as `mergetui.toml` in the output),
so a stage is up to date when its folder holds a complete merge whose stored recipe is the stage's
own (the seed compared only when the stage fixes one) and no stage it uses was merged after it.
mergekit-multi only looks for a config and weights; here an edited stage is merged again, and a
folder some other recipe made is not replaced without `--force` (the rule of single merges).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mergetui.merge.output import CONFIG_FILE, RECIPE_FILE, recipe_as_run
from mergetui.merge.writer import INDEX_FILE_NAME, SINGLE_FILE_NAME
from mergetui.recipe.stages import Stage

State = Literal["missing", "current", "stale", "other"]

# What a run says of a stage it skips (the CLI's line and the Run screen's log).
SKIPPED = "up to date (merged from this recipe): skipped"
KEPT = "the stages merged before it are kept: running again skips them"


@dataclass(frozen=True)
class StageOutput:
    """What is in a stage's output folder: nothing (`missing`), its own merge, up to date
    (`current`) or made before a stage it uses was merged again (`stale`), or something else
    (`other`: another recipe's merge, or not a merge), with why in a few words."""

    state: State
    why: str

    @property
    def runs(self) -> bool:
        return self.state != "current"


def stage_output(stage: Stage, seed: int | None, inputs: Iterable[Path] = ()) -> StageOutput:
    """The state of `stage.output` for a run with `seed` (the command line's, else the stage's
    own); `inputs` are the output folders of the stages it uses."""
    assert stage.output is not None
    folder = stage.output
    if not (folder.exists() or folder.is_symlink()):
        return StageOutput("missing", "not merged yet")
    stored = _stored_recipe(folder)
    if stored is None:
        return StageOutput("other", "it is not a mergetui merge's output")
    if _comparable(stored, seed) != _comparable(_expected(stage, seed), seed):
        return StageOutput("other", "it was merged from another recipe")
    mine = (folder / RECIPE_FILE).stat().st_mtime_ns
    for used in inputs:
        copy = used / RECIPE_FILE
        if copy.is_file() and copy.stat().st_mtime_ns > mine:
            return StageOutput("stale", f"{used.name} was merged again after it")
    return StageOutput("current", "merged from this recipe")


def stage_outputs(stages: Sequence[Stage], seed: int | None) -> list[StageOutput]:
    """`stage_output` of each stage (in run order), a stage that uses one that will run being
    stale: its folder is replaced once the earlier stage is merged."""
    by_name = {stage.name: stage for stage in stages if stage.name is not None}
    runs: set[str] = set()
    found = []
    for stage in stages:
        outputs = [by_name[name].output for name in stage.uses]
        state = stage_output(stage, _seed(stage, seed), [p for p in outputs if p is not None])
        rerun = [name for name in stage.uses if name in runs]
        if state.state == "current" and rerun:
            state = StageOutput("stale", f"{rerun[0]} runs first")
        if state.runs and stage.name is not None:
            runs.add(stage.name)
        found.append(state)
    return found


def _seed(stage: Stage, seed: int | None) -> int | None:
    return seed if seed is not None else stage.recipe.seed


def _stored_recipe(folder: Path) -> str | None:
    """The recipe copy of a complete merge in `folder` as TOML text, or None."""
    from mergetui.errors import UserError
    from mergetui.recipe.toml_read import loads_toml

    copy = folder / RECIPE_FILE
    weights = (folder / SINGLE_FILE_NAME).is_file() or (folder / INDEX_FILE_NAME).is_file()
    if not (copy.is_file() and (folder / CONFIG_FILE).is_file() and weights):
        return None
    try:
        text = copy.read_text(encoding="utf-8")
        loads_toml(text, str(copy))
    except (UserError, OSError, UnicodeDecodeError):
        return None
    return text


def _expected(stage: Stage, seed: int | None) -> str:
    """The recipe copy a merge of `stage` would store, as TOML text (its local models found by
    the recipe's path rule, as the planner finds them)."""
    from mergetui.recipe.paths import locate_model, recipe_folder
    from mergetui.recipe.toml_write import dumps_toml

    folder = recipe_folder(stage.recipe.source_path)
    local = {}
    for name, entry in stage.recipe.models.items():
        found = locate_model(entry.source, entry.revision, folder)
        if found is not None and found[1]:
            local[name] = found[0]
    return dumps_toml(recipe_as_run(stage.recipe, seed, local))


def _comparable(text: str, seed: int | None) -> str:
    """A recipe copy as the one TOML layout writes it (both sides read back, so what the layout
    does not keep cannot differ), without its seed when the run fixes none: a random method then
    draws one, and any seed it drew is this recipe's."""
    from mergetui.recipe.toml_read import loads_toml
    from mergetui.recipe.toml_write import dumps_toml

    recipe = loads_toml(text)
    return dumps_toml(recipe if seed is not None else dataclasses.replace(recipe, seed=None))


# ----------------------------------------------------------------------------------------------
# Running the stages: what the CLI (`cli/merge_stages.py`) and the Run screen share.


def with_seed(recipe: Any, seed: int) -> Any:
    """A copy of a stage's recipe with `seed` (the command line's), keeping its file and lines."""
    copy = dataclasses.replace(recipe, seed=seed)
    copy.locations, copy.source_path = recipe.locations, recipe.source_path
    return copy


def stage_inputs(stage: Stage) -> list[Path]:
    """The stage's local model folders that exist now (what `--force` must never replace)."""
    from mergetui.recipe.paths import locate_model, recipe_folder

    folder = recipe_folder(stage.recipe.source_path)
    found = [locate_model(e.source, e.revision, folder) for e in stage.recipe.models.values()]
    return [f[0] for f in found if f is not None and f[1]]


def replace_refusals(
    stages: Sequence[Stage], states: Sequence[StageOutput], recipe_dir: Path
) -> list[tuple[Stage, str]]:
    """For each stage whose folder another recipe made (`other`), why even `--force` may not
    replace it (only a folder a merge wrote may go), as (stage, "this one ...")."""
    from mergetui.merge.target import replace_refusal

    found = []
    for stage, state in zip(stages, states, strict=True):
        if state.state != "other":
            continue
        assert stage.output is not None
        why = replace_refusal(stage.output, inputs=stage_inputs(stage), recipe_dir=recipe_dir)
        if why is not None:
            found.append((stage, why))
    return found


def check_outputs(
    stages: Sequence[Stage], states: Sequence[StageOutput], *, force: bool, recipe_dir: Path
) -> None:
    """Before anything runs: a folder another recipe made is an error unless `force`, and with
    `force` one that a merge did not write (the rule of single merges)."""
    from mergetui.errors import UserError

    for stage, state in zip(stages, states, strict=True):
        if state.state == "other" and not force:
            raise UserError(
                f"{stage.label}'s output folder already exists and {state.why}",
                where=str(stage.output),
                fix="pass --force to replace it (once the stage's new merge is complete), "
                "or choose another --out / --intermediate-dir",
            )
    for stage, why in replace_refusals(stages, states, recipe_dir)[:1]:
        raise UserError(
            f"--force only replaces a folder that a previous merge wrote, and {stage.label}'s "
            f"{why}",
            where=str(stage.output),
            fix="choose another --out / --intermediate-dir (or move that folder yourself)",
        )


@dataclass(frozen=True)
class StageStep:
    """One stage of a run, in run order: its place (`index` of `count`), its folder's state and
    whether the run may replace that folder."""

    index: int
    count: int
    stage: Stage
    output: StageOutput
    force: bool

    @property
    def name(self) -> str:
        return self.stage.name or "final"

    @property
    def heading(self) -> str:
        """`stage 2/3: NAME`, as the progress shows it."""
        return f"stage {self.index}/{self.count}: {self.name}"


def stage_steps(
    stages: Sequence[Stage], states: Sequence[StageOutput], *, force: bool
) -> list[StageStep]:
    """The run's steps: a stale stage's folder (its own earlier merge) is replaced without
    `force`."""
    count = len(stages)
    return [
        StageStep(i, count, stage, state, force or state.state == "stale")
        for i, (stage, state) in enumerate(zip(stages, states, strict=True), start=1)
    ]


@dataclass
class StagesRun:
    """How far a run of the stages got: how many merged, and the status of the one that stopped
    it (0: none did)."""

    merged: int = 0
    code: int = 0


def run_steps(
    steps: Sequence[StageStep],
    *,
    plan: Callable[[StageStep], Any],
    merge: Callable[[StageStep, Any], int],
    started: Callable[[StageStep], None] = lambda step: None,
    skipped: Callable[[StageStep], None] = lambda step: None,
    kept: Callable[[int], None] = lambda merged: None,
) -> StagesRun:
    """Run the steps in order: an up-to-date stage is skipped, any other planned now (its inputs,
    earlier stages' outputs, exist by then), its folder checked, and merged; the first that fails
    (`merge` returns non-zero, or raises) ends the run, and `kept(merged)` is told when stages
    merged before it stay."""
    from mergetui.merge.target import check_output, output_guard

    run = StagesRun()
    for step in steps:
        started(step)
        if not step.output.runs:
            skipped(step)
            continue
        try:
            made = plan(step)
            check_output(made.output_dir, step.force, **output_guard(made))
            run.code = merge(step, made)
        except BaseException:
            if run.merged:
                kept(run.merged)
            raise
        if run.code != 0:
            if run.merged:
                kept(run.merged)
            return run
        run.merged += 1
    return run


def final_stage(stages: Sequence[Stage]) -> Stage:
    """The stage whose output is the file's result: the unnamed one, else the last to run."""
    return next((s for s in stages if s.name is None), stages[-1])

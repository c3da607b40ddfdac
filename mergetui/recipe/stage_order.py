"""Wiring a multi-stage file's stages together: where each writes, which models are earlier
stages' outputs, the order they run in, and the checks of the whole before anything runs.

mergekit-multi's rule, kept: a model whose reference is a stage's name is that stage's output
(INTERMEDIATE/NAME); any other reference is what it says (a folder or a Hub id). Named stages write
into the intermediate folder, the unnamed final one to `--out` (else its recipe's `output`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mergetui.errors import UserError
from mergetui.recipe.paths import cli_path, output_folder, recipe_folder
from mergetui.recipe.problems import Problem
from mergetui.recipe.stages import Stage

# The default intermediate folder: `<final output>-stages` beside the final output, or, when every
# stage is named, `<file stem>-stages` beside the file.
INTERMEDIATE_SUFFIX = "-stages"


def final_output(
    stages: list[Stage], folder: Path, out: str | Path | None, *, needed: bool = True
) -> Path | None:
    """Where the unnamed final stage writes: `out`, else its recipe's `output`; None when every
    stage is named (or, not `needed`, when neither is given)."""
    final = next((stage for stage in stages if stage.name is None), None)
    if final is None:
        return None
    found = output_folder(final.recipe, folder, out)
    if found is None and needed:
        raise UserError(
            f"{final.label} (stage {final.number}) has no name, so it needs an output folder",
            where=final.where,
            fix="pass --out DIR (named stages go to the intermediate folder)",
        )
    return found


def intermediate_folder(
    source: str | Path, final: Path | None, intermediate: str | Path | None
) -> Path:
    """`--intermediate-dir` when given, else beside the final output, else beside the file."""
    if intermediate is not None and str(intermediate) != "":
        return cli_path(intermediate)
    if final is not None:
        return final.parent / f"{final.name}{INTERMEDIATE_SUFFIX}"
    source = Path(source)
    return recipe_folder(source) / f"{source.stem}{INTERMEDIATE_SUFFIX}"


def place_stages(
    stages: list[Stage],
    source: str | Path,
    *,
    out: str | Path | None = None,
    intermediate: str | Path | None = None,
    need_output: bool = True,
) -> list[Stage]:
    """The stages in the order they run, each with its output folder and its models that are
    earlier stages' outputs pointing there. Raises a located UserError for a named stage that
    sets `output`, an unnamed one without an output, a model naming no stage and no model, and a
    cycle. Without `need_output` (validation) an unnamed stage may lack an output folder."""
    folder = recipe_folder(source)
    final = final_output(stages, folder, out, needed=need_output)
    inter = intermediate_folder(source, final, intermediate)
    if final is not None and (final == inter or final in inter.parents):
        raise UserError(
            f"the intermediate folder {inter} is the final output folder or inside it, and the "
            "final merge would have to replace it",
            where=str(source),
            fix="put --intermediate-dir beside --out (its default: OUT-stages)",
        )
    names = {stage.name for stage in stages if stage.name is not None}
    placed = []
    for stage in stages:
        if stage.name is not None and stage.recipe.output:
            raise UserError(
                f"{stage.label} sets an output, but a named stage writes to the intermediate "
                f"folder ({inter / stage.name})",
                where=_where(stage, "merge.output"),
                fix="remove its output (or its name, if it is the final stage)",
            )
        output = final if stage.name is None else inter / stage.name
        placed.append(_wired(stage, names, inter, output))
    return _in_order(placed)


def _wired(stage: Stage, names: set[str], inter: Path, output: Path | None) -> Stage:
    """A copy of `stage` whose models that name a stage read that stage's output folder."""
    models = {}
    uses = []
    for model, entry in stage.recipe.models.items():
        if entry.source in names:
            uses.append(entry.source)
            entry = dataclasses.replace(entry, source=str(inter / entry.source), revision=None)
        models[model] = entry
    recipe = dataclasses.replace(stage.recipe, models=models)
    recipe.locations = stage.recipe.locations
    recipe.source_path = stage.recipe.source_path
    return dataclasses.replace(stage, recipe=recipe, output=output, uses=tuple(dict.fromkeys(uses)))


def _in_order(stages: list[Stage]) -> list[Stage]:
    """Each stage after the stages it uses (file order otherwise); a cycle is an error naming it."""
    by_name = {stage.name: stage for stage in stages if stage.name is not None}
    ordered: list[Stage] = []
    done: set[int] = set()

    def visit(stage: Stage, path: list[Stage]) -> None:
        if stage.number in done:
            return
        if any(s.number == stage.number for s in path):
            cycle = path[[s.number for s in path].index(stage.number) :] + [stage]
            shown = " -> ".join(str(s.name) for s in cycle)
            raise UserError(
                f"the stages use each other's outputs in a cycle: {shown}",
                where=stage.where,
                fix="a stage can only merge the outputs of stages that do not use its own",
            )
        for name in stage.uses:
            visit(by_name[name], path + [stage])
        done.add(stage.number)
        ordered.append(stage)

    for stage in stages:
        visit(stage, [])
    return ordered


def _where(stage: Stage, key: str) -> str:
    line = stage.recipe.line_of(key)
    file = stage.where.rpartition(":")[0] or stage.where
    return f"{file}:{line}" if line is not None else stage.where


def unknown_references(stages: list[Stage]) -> list[tuple[Stage, Problem]]:
    """Models whose reference is a bare name (no '/') that is no stage of the file, no folder and
    no cached Hub model: almost always a stage's name misspelt. mergekit would try it as a path or
    download it; here it is an error before anything runs."""
    from mergetui.recipe.paths import locate_model

    names = sorted(stage.name for stage in stages if stage.name is not None)
    found = []
    for stage in stages:
        folder = recipe_folder(stage.recipe.source_path)
        for model, entry in stage.recipe.models.items():
            source = entry.source
            if "/" in source or "\\" in source or source.startswith(("~", ".")):
                continue
            if locate_model(source, entry.revision, folder) is not None:
                continue
            where = f"models.{model}.source"
            problem = Problem(
                "error",
                where,
                f"model {model!r} is {source!r}, which is no stage of this file "
                f"(its stages: {', '.join(names) or 'none named'}), no folder and no cached Hub model",
                "write a stage's name exactly, a folder's path, or a Hub id as org/name",
                stage.recipe.source_path,
                stage.recipe.line_of(where),
            )
            found.append((stage, problem))
    return found


def validate_stages(
    stages: list[Stage], *, offline: bool, hub_cache: bool
) -> dict[int, list[Problem]]:
    """Every stage's problems (by stage number), as `validate_recipe` finds them, less the missing
    folders of earlier stages' outputs (they exist once those stages run), plus the unknown
    references. The stages are placed ones (`place_stages`)."""
    from mergetui.recipe.validate import validate_recipe

    results: dict[int, list[Problem]] = {}
    for stage in stages:
        pending = {
            f"models.{model}.source"
            for model, entry in stage.recipe.models.items()
            if _is_stage_output(entry.source, stages) and not Path(entry.source).is_dir()
        }
        problems = validate_recipe(
            stage.recipe,
            offline=offline,
            base_dir=recipe_folder(stage.recipe.source_path),
            hub_cache=hub_cache,
        )
        results[stage.number] = [p for p in problems if p.where not in pending]
    for stage, problem in unknown_references(stages):
        others = [p for p in results[stage.number] if p.where != problem.where]
        results[stage.number] = [problem, *others]  # not also "not in the Hub cache"
    return results


def _is_stage_output(source: str, stages: list[Stage]) -> bool:
    return any(stage.output is not None and str(stage.output) == source for stage in stages)

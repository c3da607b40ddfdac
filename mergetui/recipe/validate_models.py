"""The validator's checks of the models themselves: where each one is on disk and, unless offline,
whether the checkpoints (headers only) can be merged as the recipe says: one architecture, the
same tensor names and shapes, layer ranges inside each model, and every parameter resolved for
every tensor the merge visits (the walk of `mergetui.recipe.walk`, which the planner follows too).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mergetui.errors import UserError
from mergetui.recipe.methods import MethodSpec, window_fits
from mergetui.recipe.model import Recipe, Slice
from mergetui.recipe.problems import Problems
from mergetui.recipe.resolve import (
    MissingParameterError,
    ParameterValueError,
    resolve_tensor_params,
)
from mergetui.recipe.walk import layer_problems, used_models, walk_tensors

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint


def check_paths(problems: Problems, folder: Path, *, hub_cache: bool) -> dict[str, Path]:
    """Find each model on disk; a missing local folder is an error, an uncached Hub id a warning.

    Without `hub_cache` a Hub id is left alone: whether it is cached says nothing about the recipe.
    """
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id
    from mergetui.recipe.paths import local_model_path

    located: dict[str, Path] = {}
    for name, entry in problems.recipe.models.items():
        source = entry.source.strip()
        if not source:
            continue
        where = f"models.{name}.source"
        candidate = local_model_path(source, folder)  # beside the recipe, else from the cwd
        if candidate.is_dir():
            located[name] = candidate
        elif candidate.exists():
            problems.error(
                where,
                f"'{source}' is a file, not a checkpoint folder",
                f"point at the folder that holds it: {candidate.parent}",
            )
        elif not looks_like_hub_id(source):
            problems.error(
                where,
                f"model folder not found: {candidate}",
                f"check the path (relative paths start from {folder})",
            )
        elif hub_cache:
            found = find_local(source, entry.revision)
            if found is not None:
                located[name] = found
            else:
                problems.warning(
                    where,
                    f"'{entry.reference}' is not in the local Hugging Face cache",
                    "it is downloaded when merging; checks that need its files were skipped",
                )
        if entry.lora is not None:
            _check_adapter_path(problems, name, entry.lora, folder, hub_cache)
    return located


def _check_adapter_path(
    problems: Problems, name: str, lora: str, folder: Path, hub_cache: bool
) -> None:
    """A model's adapter: a missing local folder is an error, an uncached Hub id a warning."""
    from mergetui.checkpoints.locate import looks_like_hub_id
    from mergetui.recipe.paths import locate_adapter

    where = f"models.{name}.lora"
    path = lora.partition("@")[0]
    hub = looks_like_hub_id(path)
    if hub and not hub_cache:
        return
    if locate_adapter(lora, folder) is not None:
        return
    if not hub:
        problems.error(
            where,
            f"adapter folder not found: {path}",
            f"check the path (relative paths start from {folder})",
        )
    else:
        problems.warning(
            where,
            f"adapter '{lora}' is not in the local Hugging Face cache",
            f"download it first (mergetui pull {path}); checks that need its files were skipped",
        )


def check_adapters(
    problems: Problems, folder: Path, checkpoints: dict[str, Checkpoint], allow_bin: bool = False
) -> None:
    """Each opened model's adapter (headers only): a kind mergetui cannot apply, a shape or an
    architecture that does not fit its base are errors; another base's name is a warning."""
    from mergetui.checkpoints.lora import check_adapter, open_adapter
    from mergetui.recipe.paths import locate_adapter

    for name, checkpoint in checkpoints.items():
        entry = problems.recipe.models[name]
        found = locate_adapter(entry.lora, folder) if entry.lora else None
        if found is None:
            continue
        where = f"models.{name}.lora"
        try:
            adapter = open_adapter(found[0], allow_bin=allow_bin, where=where)
        except UserError as exc:
            problems.error(where, exc.message, exc.fix)
            continue
        misfit, warnings = check_adapter(adapter, checkpoint, entry.source)
        for warning in warnings:
            problems.warning(where, warning)
        if misfit is not None:
            problems.error(where, misfit.message, misfit.fix)


def _comparable(checkpoint: Checkpoint, depth: int) -> dict[str, str]:
    """Tensor names outside the layer stack or in its first `depth` layers (name -> name).

    Models of different depths (layer stacks) are compared over the layers they share.
    """
    from mergetui.checkpoints.layers import layer_index

    result: dict[str, str] = {}
    for name in checkpoint.tensors:
        index = layer_index(name)
        if index is None or index < depth:
            result[name] = name
    return result


def check_checkpoints(
    problems: Problems,
    spec: MethodSpec | None,
    located: dict[str, Path],
    folder: Path | None = None,
) -> bool:
    """Open the located checkpoints and check they can be merged as the recipe says.

    Returns True when every used model was read and the per-tensor parameter check ran (so the
    recipe-only guesses about parameter coverage are not needed).
    """
    from mergetui.checkpoints.compat import (
        MIXED_ARCHITECTURES_FLAG,
        describe_architecture,
        same_architecture,
    )
    from mergetui.checkpoints.inspect import open_checkpoint

    recipe = problems.recipe
    used = used_models(recipe)
    checkpoints: dict[str, Checkpoint] = {}
    for name in used:
        if name not in located:
            continue
        try:
            checkpoints[name] = open_checkpoint(located[name])
        except UserError as exc:
            problems.error(f"models.{name}.source", f"cannot read '{name}': {exc}", exc.fix)
    if not checkpoints:
        return False
    if folder is not None:
        check_adapters(problems, folder, checkpoints)

    reference = recipe.base if recipe.base in checkpoints else next(iter(checkpoints))
    ref = checkpoints[reference]
    comparable = {reference: ref}
    for name, checkpoint in checkpoints.items():
        if name == reference:
            continue
        if not same_architecture(ref, checkpoint):
            problems.error(
                f"models.{name}.source",
                f"'{name}' is a {describe_architecture(checkpoint)} but '{reference}' is a "
                f"{describe_architecture(ref)}: different architectures",
                "merge checkpoints of one architecture (mergekit refuses to mix them too), or "
                f"merge with {MIXED_ARCHITECTURES_FLAG} (mergekit: --allow-crimes)",
            )
            continue
        comparable[name] = checkpoint
    _compare_tensors(problems, reference, comparable)
    layer_ok = _check_layers(problems, checkpoints)

    complete = (
        spec is not None
        and layer_ok
        and len(comparable) == len(checkpoints) == len(used)
        and _plannable(recipe, checkpoints)
    )
    if not complete:
        return False
    assert spec is not None
    _check_every_tensor(problems, spec, checkpoints)
    return True


def _compare_tensors(
    problems: Problems, reference: str, checkpoints: dict[str, Checkpoint]
) -> None:
    from mergetui.checkpoints.layers import block_kind

    recipe = problems.recipe
    vocab_aligned = recipe.tokenizer_source is not None or recipe.tokenizer is not None
    for name, checkpoint in checkpoints.items():
        if name == reference:
            continue
        depth = min(len(checkpoint.layers), len(checkpoints[reference].layers))
        ref_names = _comparable(checkpoints[reference], depth)
        names = _comparable(checkpoint, depth)
        for lacking, having, keys, other in (
            (name, reference, sorted(set(ref_names) - set(names)), ref_names),
            (reference, name, sorted(set(names) - set(ref_names)), names),
        ):
            if not keys:
                continue
            lacking_checkpoint = checkpoints[lacking]
            tied_only = all(block_kind(k) == "head" for k in keys) and lacking_checkpoint.tied
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            if tied_only:
                problems.warning(
                    f"models.{lacking}.source",
                    f"'{lacking}' has no {other[keys[0]]} (its embeddings are tied) but '{having}' has one",
                    "fine for mergekit, which uses the embeddings in its place; check the output ties too",
                )
            else:
                problems.error(
                    f"models.{lacking}.source",
                    f"'{lacking}' has no tensor {other[keys[0]]}{more}, which '{having}' has",
                    "merge checkpoints with the same tensors (same architecture and options)",
                )
        mismatched: dict[bool, list[tuple[str, tuple, tuple]]] = {True: [], False: []}
        for key in sorted(set(ref_names) & set(names)):
            shape_a = tuple(checkpoints[reference].tensors[ref_names[key]].shape)
            shape_b = tuple(checkpoint.tensors[names[key]].shape)
            if shape_a != shape_b:
                vocabulary = block_kind(key) in ("embedding", "head")
                mismatched[vocabulary].append((names[key], shape_a, shape_b))
        for vocabulary, found in mismatched.items():
            if not found or (vocabulary and vocab_aligned):
                continue
            tensor, shape_a, shape_b = found[0]
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            problems.error(
                f"models.{name}.source",
                f"tensor {tensor} is {list(shape_b)} in '{name}' but {list(shape_a)} in "
                f"'{reference}'{more}",
                'set tokenizer_source = "union" (or "base") under [merge] to align the vocabularies'
                if vocabulary
                else "these checkpoints differ in size and cannot be merged",
            )


def _check_layers(problems: Problems, checkpoints: dict[str, Checkpoint]) -> bool:
    """Layer ranges against the models' depths (`walk.layer_problems`); True when all fit."""
    depths = {name: checkpoint.num_layers for name, checkpoint in checkpoints.items()}
    found = list(layer_problems(problems.recipe, depths))
    for where, message, fix in found:
        problems.error(where, message, fix)
    return not found


def _plannable(recipe: Recipe, checkpoints: dict[str, Checkpoint]) -> bool:
    """Whether the layer plan can be walked: known models, sane and equal-length ranges."""
    if recipe.slices is None:
        return bool(recipe.models) and all(name in checkpoints for name in recipe.models)
    if not recipe.slices:
        return False
    for slice_ in recipe.slices:
        if not slice_.sources or len({s.num_layers for s in slice_.sources}) > 1:
            return False
        for source in slice_.sources:
            checkpoint = checkpoints.get(source.model)
            start, end = source.layer_range
            if checkpoint is None or not 0 <= start < end <= min(
                checkpoint.num_layers, len(checkpoint.layers)
            ):
                return False
    return True


def _check_every_tensor(
    problems: Problems, spec: MethodSpec, checkpoints: dict[str, Checkpoint]
) -> None:
    """Resolve every parameter for every tensor the merge will visit, as the merge will.

    Finds required parameters that filters leave unset for some tensor, and (for DELLA) densities
    that epsilon pushes out of (0, 1).
    """
    recipe = problems.recipe
    slices = recipe.effective_slices({name: c.num_layers for name, c in checkpoints.items()})
    if not slices or not all(s.sources for s in slices):
        return
    reported: set[tuple[str, str | None]] = set()

    def visit(slice_: Slice, output: str, inputs: list[tuple[str, str]], t: float) -> None:
        try:
            _shared, per_model = resolve_tensor_params(recipe, spec, slice_, output, inputs, t)
        except MissingParameterError as exc:
            key = (exc.param, exc.model)
            if key not in reported:
                reported.add(key)
                problems.error(exc.where, exc.message, exc.fix)
            return
        except ParameterValueError:
            return  # reported by the recipe checks
        if spec.epsilon_window:
            for model, values in per_model.items():
                density, epsilon = values.get("density"), values.get("epsilon")
                if density is None or epsilon is None or not 0 < density < 1:
                    continue
                if not window_fits(density, epsilon):
                    key = ("epsilon", model)
                    if key not in reported:
                        reported.add(key)
                        problems.error(
                            f"models.{model}.parameters.epsilon",
                            f"density {density:g} ± epsilon {epsilon:g} leaves (0, 1) for model "
                            f"'{model}' at {output}",
                            "choose epsilon < min(density, 1 - density)",
                        )

    for step in walk_tensors(slices, checkpoints):
        visit(step.slice, step.name, list(step.inputs), step.t)

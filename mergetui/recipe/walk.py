"""The one walk over a recipe's models, layer ranges and output tensors.

The validator and the planner both need to know which models a merge reads, whether each slice's
layer ranges fit its models, and which output tensors the merge visits, from which inputs, at
which gradient position `t`. They ask here, so a recipe the validator passes is the recipe the
planner plans, and every problem found is named by the same dotted recipe path (which
`Recipe.line_of` turns into a line of the file).

The tensor order is mergekit's planner's: the pre-layer weights (embeddings) from the first
slice's models at t = 0, then each output slice's layers, renumbered consecutively (layer stacks
repeat or skip layers freely), then the post-layer weights (final norm, head) from the last
slice's models at t = 0. Buffers a model rebuilds on load are left out (`layers.is_skipped`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mergetui.checkpoints.layers import block_kind, is_skipped, with_layer_index
from mergetui.recipe.resolve import layer_t

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint
    from mergetui.recipe.model import Recipe, Slice

Section = Literal["pre", "layer", "post"]


def used_models(recipe: Recipe) -> list[str]:
    """The models the merge reads, in recipe order: every model in the `models` form; with
    slices, each slice's sources, then the base, then the slices' own bases. Names the recipe
    does not define are left out (the validator reports them)."""
    if recipe.slices is None:
        return list(recipe.models)
    used = [source.model for s in recipe.slices for source in s.sources]
    used += ([recipe.base] if recipe.base else []) + [s.base for s in recipe.slices if s.base]
    return [name for name in dict.fromkeys(used) if name in recipe.models]


def layer_problems(recipe: Recipe, depths: Mapping[str, int]) -> Iterator[tuple[str, str, str]]:
    """(where, message, fix) for each layer range the models cannot give, `depths` being the
    layer counts of the models known: in the `models` form, models of different depths; with
    slices, a range that runs past the end of its model."""
    if recipe.slices is None:
        first = next(iter(depths), None)
        for name, depth in depths.items():
            if first is not None and depth != depths[first]:
                yield (
                    f"models.{name}.source",
                    f"'{name}' has {depth} layers but '{first}' has {depths[first]}",
                    "merge models of the same depth, or use [[slices]] with equal-length layer ranges",
                )
        return
    for i, slice_ in enumerate(recipe.slices):
        for j, source in enumerate(slice_.sources):
            depth = depths.get(source.model)
            start, end = source.layer_range
            if depth is not None and end > depth:
                yield (
                    f"slices.{i}.sources.{j}.layers",
                    f"layers [{start}, {end}) go past the end of '{source.model}', which has "
                    f"{depth} layers",
                    f"use a range within [0, {depth}]",
                )


@dataclass(frozen=True)
class TensorStep:
    """One output tensor as the merge visits it."""

    name: str  # the output tensor's name
    inputs: tuple[tuple[str, str], ...]  # (model, that model's tensor name), in input order
    slice: Slice
    t: float  # position in the output slice, for gradients (0 for embeddings and head)
    section: Section
    layer: int | None = None  # output layer index


def walk_tensors(
    slices: Sequence[Slice], checkpoints: Mapping[str, Checkpoint]
) -> Iterator[TensorStep]:
    """Every output tensor of the merge, in mergekit's order (see the module docstring). The
    first source of a slice names the tensors; `checkpoints` holds every model of `slices`."""
    first, last = slices[0], slices[-1]
    for name in _edge_names(first, checkpoints, pre=True):
        yield TensorStep(name, tuple((s.model, name) for s in first.sources), first, 0.0, "pre")
    out_layer = 0
    for slice_ in slices:
        count = slice_.num_layers
        for offset in range(count):
            yield from _layer_steps(slice_, offset, out_layer, checkpoints)
            out_layer += 1
    for name in _edge_names(last, checkpoints, pre=False):
        yield TensorStep(name, tuple((s.model, name) for s in last.sources), last, 0.0, "post")


def layer_sources(slices: Sequence[Slice]) -> list[tuple[str, int]]:
    """(model, layer) each output layer comes from: its slice's first source."""
    return [
        (s.sources[0].model, s.sources[0].layer_range[0] + offset)
        for s in slices
        for offset in range(s.num_layers)
    ]


def _edge_names(slice_: Slice, checkpoints: Mapping[str, Checkpoint], *, pre: bool) -> list[str]:
    """Pre- or post-layer tensor names of the slice's first model; a head any of its models has
    is included too (mergekit: an optional weight present in any input)."""
    models = [s.model for s in slice_.sources]
    first = checkpoints[models[0]]
    names = [n for n in (first.pre_layer if pre else first.post_layer) if not is_skipped(n)]
    if not pre:
        for model in models[1:]:
            for n in checkpoints[model].post_layer:
                if n not in names and block_kind(n) == "head" and not is_skipped(n):
                    names.append(n)
    return names


def _layer_steps(
    slice_: Slice, offset: int, out_layer: int, checkpoints: Mapping[str, Checkpoint]
) -> Iterator[TensorStep]:
    """The tensors of one output layer: the first source's layer names, renumbered."""
    first = slice_.sources[0]
    layer = first.layer_range[0] + offset
    lead = checkpoints[first.model]
    if layer >= len(lead.layers):
        return  # the config counts more layers than the file holds: nothing to visit
    t = float(layer_t(offset, slice_.num_layers))
    for name in lead.layer_tensors(layer):
        if is_skipped(name):
            continue
        inputs = tuple(
            (s.model, with_layer_index(name, s.layer_range[0] + offset)) for s in slice_.sources
        )
        yield TensorStep(with_layer_index(name, out_layer), inputs, slice_, t, "layer", out_layer)


def input_groups(recipe: Recipe) -> list[tuple[str, list[str], str | None]]:
    """(where, input model names, base) for each output slice, without needing layer counts."""
    if recipe.slices is None:
        return [("models", list(recipe.models), recipe.base)]
    return [
        (f"slices.{i}", [source.model for source in s.sources], s.base or recipe.base)
        for i, s in enumerate(recipe.slices)
    ]

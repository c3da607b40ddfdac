"""The planner's output tensors: each one the merge writes, where its inputs' bytes are, its dtype,
and the parameters the method gets for it.

The tensors are those of the walk the validator follows too (`mergetui.recipe.walk`), in
mergekit's order. A head that is missing (tied embeddings) stays missing; a model that lacks the
head while another has it contributes its input embeddings instead (mergekit's `tied_names`).
Whatever cannot be merged (a missing tensor, shapes or dtypes that differ) is a `UserError`
naming the model and tensor. No torch import here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.layers import block_kind, layer_index
from mergetui.dtypes import FLOAT_CODES, compute_code
from mergetui.errors import UserError
from mergetui.recipe.walk import TensorStep, walk_tensors

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint
    from mergetui.checkpoints.lora import Adapter, LoraModule
    from mergetui.checkpoints.safetensors_io import TensorInfo
    from mergetui.merge.plan_models import PlannedModel
    from mergetui.recipe.methods import MethodSpec
    from mergetui.recipe.model import Recipe, Slice


@dataclass(frozen=True)
class PlannedInput:
    """One input of one output tensor: which model, which tensor there, and where its bytes are."""

    model: str
    tensor: str
    file: Path
    offset: int  # absolute; -1 for a pytorch .bin tensor
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    # The model's LoRA adapter's piece for this tensor, applied as it is read (merge/lora_apply):
    # a LoraModule (W + scale * B @ A) or the TensorInfo of a modules_to_save replacement.
    lora: LoraModule | TensorInfo | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor and everything needed to compute it."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # output safetensors dtype
    inputs: tuple[PlannedInput, ...]
    # Index into `inputs` of the base; None when there is none or the method ignores it.
    base_index: int | None
    shared: Mapping[str, Any]
    per_model: tuple[Mapping[str, Any], ...]  # aligned with inputs
    section: str  # "pre", "layer" or "post"
    layer: int | None = None  # output layer index
    copy_only: bool = False  # a non-floating buffer: copied (inputs must agree), never merged
    # Each output element depends only on the same element of the inputs, so the engine may
    # stream the tensor in pieces (bounded memory whatever the tensor's size).
    elementwise: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        from mergetui.merge.writer import tensor_nbytes

        return tensor_nbytes(self.dtype, self.shape)


def plan_tensors(
    recipe: Recipe, spec: MethodSpec, models: Mapping[str, PlannedModel], slices: Sequence[Slice]
) -> list[PlannedTensor]:
    """Every output tensor of the merge, in the walk's order."""
    checkpoints = {name: model.checkpoint for name, model in models.items()}
    adapters = {name: model.adapter for name, model in models.items()}
    tensors: list[PlannedTensor] = []
    for step in walk_tensors(slices, checkpoints):
        planned = _plan_tensor(recipe, spec, checkpoints, adapters, step, len(tensors))
        if planned is not None:
            tensors.append(planned)
    return tensors


def _plan_tensor(
    recipe: Recipe,
    spec: MethodSpec,
    checkpoints: Mapping[str, Checkpoint],
    adapters: Mapping[str, Adapter | None],
    step: TensorStep,
    index: int,
) -> PlannedTensor | None:
    """One output tensor, or None for a tied head nobody stores (mergekit skips the optional
    weight)."""
    present = _present_inputs(checkpoints, adapters, step)
    if not present:
        return None
    dtypes = {p.dtype for p in present}
    floating = dtypes <= FLOAT_CODES
    if not floating and len(dtypes) > 1:
        raise UserError(
            f"tensor {step.name} mixes dtypes across models: "
            + ", ".join(f"{p.model} {p.dtype}" for p in present),
            where=step.name,
        )
    if floating:
        out_dtype = recipe_dtype(recipe.out_dtype or recipe.dtype, "out_dtype") or _promote(dtypes)
    else:
        out_dtype = present[0].dtype
    base = step.slice.base if step.slice.base is not None else recipe.base
    shared, per_model = _parameters(recipe, spec, step, base)
    return PlannedTensor(
        index=index,
        name=step.name,
        shape=present[0].shape,
        dtype=out_dtype,
        inputs=tuple(present),
        base_index=_base_index(recipe, spec, step.name, [p.model for p in present], base),
        shared=shared,
        per_model=tuple(per_model),
        section=step.section,
        layer=step.layer,
        copy_only=not floating,
        elementwise=floating and _is_elementwise(spec, per_model),
    )


def _present_inputs(
    checkpoints: Mapping[str, Checkpoint],
    adapters: Mapping[str, Adapter | None],
    step: TensorStep,
) -> list[PlannedInput]:
    """The step's inputs that the models hold (none: a tied head nobody stores); a tensor some
    models lack, or of different shapes, cannot be merged."""
    planned = [
        _input(checkpoints[model], adapters.get(model), model, tensor)
        for model, tensor in step.inputs
    ]
    present = [p for p in planned if p is not None]
    if not present:
        return present
    missing = [model for (model, _), p in zip(step.inputs, planned, strict=True) if p is None]
    if missing:
        have = step.inputs[planned.index(present[0])][0]
        raise UserError(
            f"tensor {step.inputs[0][1]} is missing in model {missing[0]!r} (model {have!r} has it)",
            where=step.name,
            fix="merge models of the same architecture and size",
        )
    if len({p.shape for p in present}) > 1:
        detail = ", ".join(f"{p.model} {list(p.shape)}" for p in present)
        vocab_hint = ""
        if step.section != "layer" and block_kind(step.name) in ("embedding", "head"):
            vocab_hint = " (the vocabularies differ)"
        raise UserError(
            f"tensor {step.name} has different shapes in the models{vocab_hint}: {detail}",
            where=step.name,
            fix="merge models of the same architecture and size",
        )
    return present


def _input(
    checkpoint: Checkpoint, adapter: Adapter | None, model: str, tensor: str
) -> PlannedInput | None:
    info: TensorInfo | None = checkpoint.tensors.get(tensor)
    if info is None and block_kind(tensor) == "head" and layer_index(tensor) is None:
        tied = checkpoint.tied_embedding_name()
        info = checkpoint.tensors[tied] if tied is not None else None
    if info is None:
        return None
    lora = None
    if adapter is not None:
        lora = adapter.modules.get(info.name) or adapter.replaced.get(info.name)
    return PlannedInput(
        model=model,
        tensor=info.name,
        file=info.file,
        offset=info.offset,
        nbytes=info.nbytes,
        dtype=info.dtype,
        shape=tuple(info.shape),
        lora=lora,
    )


def _base_index(
    recipe: Recipe, spec: MethodSpec, name: str, model_names: list[str], base: str | None
) -> int | None:
    if base is None or spec.base == "ignored":
        return None
    if base not in model_names:
        raise UserError(
            f"the base {base!r} is not among the inputs of {name} ({', '.join(model_names)})",
            where="slices" if recipe.slices is not None else "merge.base",
            fix="add the base to every slice's sources, or drop the base",
        )
    return model_names.index(base)


def _parameters(
    recipe: Recipe, spec: MethodSpec, step: TensorStep, base: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Shared values (filters see the output name) and per-input values (filters see each
    input's own tensor name), exactly as mergekit resolves them."""
    from mergetui.recipe.resolve import resolve_tensor_params

    inputs = list(step.inputs)
    try:
        shared, per_model = resolve_tensor_params(
            recipe, spec, step.slice, step.name, inputs, step.t, base
        )
    except UserError as exc:
        if exc.where is None:
            exc.where = step.name
        raise
    return dict(shared), [dict(per_model.get(model, {})) for model, _ in inputs]


def _is_elementwise(spec: MethodSpec, per_model: Sequence[Mapping[str, Any]]) -> bool:
    """Whether each output element depends only on the same input element (the spec says so,
    or says so when nothing is sparsified and every density is >= 1)."""
    if spec.elementwise:
        return True
    if spec.elementwise_when_dense:
        densities = [p.get("density", 1.0) for p in per_model]
        return all(d is None or float(d) >= 1.0 for d in densities)
    return False


def recipe_dtype(name: str | None, where: str) -> str | None:
    """The safetensors code of a recipe's dtype name (None: none given)."""
    if not name:
        return None
    code = compute_code(name)
    if code is None:
        raise UserError(
            f"unknown dtype {name!r}",
            where=where,
            fix="use bfloat16, float16 or float32",
        )
    return code


def _promote(dtypes: set[str]) -> str:
    """torch.promote_types over float dtype codes, without torch."""
    if len(dtypes) == 1:
        return next(iter(dtypes))
    if "F64" in dtypes:
        return "F64"
    return "F32"

"""Can these checkpoints be merged? Architecture, tensor names and shapes, compared by header.

A merge of mismatched models fails late (or, worse, writes nonsense), so the app and the CLI check
first: every problem names the model and the tensor, with both shapes, so the fix is obvious (a
different vocabulary, an extra layer, another architecture). The checkpoints come opened (local
headers, or the Hub's); `recipe.models_compat` finds and opens the models a recipe names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mergetui.errors import UserError

# Architecture names that mergekit's definitions treat as one (a definition lists them together).
_ONE_ARCHITECTURE = (
    ("LlamaForCausalLM", "LLaMaForCausalLM"),
    ("BertForSequenceClassification", "BertForMultipleChoice", "BertForTokenClassification"),
)
_CANONICAL = {name: names[0] for names in _ONE_ARCHITECTURE for name in names}
# Names two of mergekit's definitions share, which it tells apart by the config's model_type.
_SPLIT_BY_MODEL_TYPE = frozenset({"PhiForCausalLM"})
MIXED_ARCHITECTURES_FLAG = "--allow-mixed-architectures"


@dataclass
class CompatProblem:
    model: str  # the model compared with the reference
    message: str
    tensor: str | None = None

    def __str__(self) -> str:
        return f"{self.model}: {self.message}"


@dataclass
class CompatReport:
    reference: str | None
    problems: list[CompatProblem]
    checked: list[str]  # models whose headers were compared
    skipped: dict[str, str]  # model -> why it could not be read

    @property
    def ok(self) -> bool:
        return not self.problems and not self.skipped


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def compare_checkpoints(
    checkpoints: dict[str, Any], reference: str | None = None
) -> list[CompatProblem]:
    """Problems of each checkpoint against `reference` (default: the first)."""
    if not checkpoints:
        return []
    names = list(checkpoints)
    ref_name = reference if reference in checkpoints else names[0]
    ref = checkpoints[ref_name]
    problems: list[CompatProblem] = []
    for name in names:
        if name == ref_name:
            continue
        other = checkpoints[name]
        if not same_architecture(ref, other):
            problems.append(
                CompatProblem(
                    name,
                    f"architecture {_short_architecture(other)}, but {ref_name} is "
                    f"{_short_architecture(ref)}",
                )
            )
        if ref.num_layers != other.num_layers:
            problems.append(
                CompatProblem(
                    name,
                    f"{other.num_layers} layers, but {ref_name} has {ref.num_layers} "
                    "(a slice recipe can still combine them)",
                )
            )
        for tensor, info in ref.tensors.items():
            theirs = other.tensors.get(tensor)
            if theirs is None:
                problems.append(
                    CompatProblem(name, f"{tensor}: in {ref_name}, missing in {name}", tensor)
                )
            elif tuple(theirs.shape) != tuple(info.shape):
                problems.append(
                    CompatProblem(
                        name,
                        f"{tensor}: {ref_name} {_shape(info.shape)} vs {name} {_shape(theirs.shape)}",
                        tensor,
                    )
                )
        for tensor in other.tensors:
            if tensor not in ref.tensors:
                problems.append(
                    CompatProblem(name, f"{tensor}: in {name}, missing in {ref_name}", tensor)
                )
    return problems


def _architecture_of(checkpoint: Any) -> tuple[str | None, str | None]:
    """(first `architectures` entry, model_type) of a checkpoint, each None when not a string."""
    name = getattr(checkpoint, "architecture", None)
    model_type = getattr(checkpoint, "model_type", None)
    return (
        name if isinstance(name, str) and name else None,
        model_type if isinstance(model_type, str) and model_type else None,
    )


def same_architecture(first: Any, second: Any) -> bool:
    """mergekit's rule: the first `architectures` entry names the architecture (names one of its
    definitions shares count as one; `PhiForCausalLM` is told apart by model_type). A config that
    names no architecture is compared by model_type; with neither, nothing can be told (True)."""
    name_a, type_a = _architecture_of(first)
    name_b, type_b = _architecture_of(second)
    if name_a and name_b:
        canonical_a, canonical_b = _CANONICAL.get(name_a, name_a), _CANONICAL.get(name_b, name_b)
        if canonical_a != canonical_b:
            return False
        return (
            canonical_a not in _SPLIT_BY_MODEL_TYPE or not (type_a and type_b) or type_a == type_b
        )
    return not (type_a and type_b) or type_a == type_b


def _short_architecture(checkpoint: Any) -> str:
    name, model_type = _architecture_of(checkpoint)
    return name or model_type or "unknown"


def describe_architecture(checkpoint: Any) -> str:
    """`LlamaForCausalLM (llama)`, or whichever of the two the config gives."""
    name, model_type = _architecture_of(checkpoint)
    if name and model_type:
        return f"{name} ({model_type})"
    return name or model_type or "an unknown architecture"


def check_architectures(
    models: Mapping[str, Any], reference: str, *, allow: bool = False
) -> list[str]:
    """Refuse models of another architecture than `reference` (whose config the output takes),
    unless `allow`; then return a notice per model that differs. `models` maps names to objects
    with a `checkpoint` (plan models) or to checkpoints."""
    checkpoints = {name: getattr(m, "checkpoint", m) for name, m in models.items()}
    ref = checkpoints[reference]
    others = [n for n, c in checkpoints.items() if n != reference and not same_architecture(ref, c)]
    if not others:
        return []
    listed = ", ".join(f"{name!r} is {describe_architecture(checkpoints[name])}" for name in others)
    message = (
        f"the models are of different architectures: {reference!r} is "
        f"{describe_architecture(ref)}, {listed}"
    )
    if not allow:
        raise UserError(
            message,
            where=f"models.{others[0]}.source",
            fix="merge models of one architecture; to mix them anyway (the output takes "
            f"{reference!r}'s config and name) pass {MIXED_ARCHITECTURES_FLAG} "
            "(mergekit: --allow-crimes)",
        )
    return [f"{message}; mixing them as asked: the output is a {describe_architecture(ref)}"]

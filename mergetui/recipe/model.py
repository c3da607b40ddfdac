"""The recipe: the single source of truth for a merge, as plain dataclasses.

A recipe names its models, so errors, the grid and the model card can say "merge14" rather than a
path. `slices` is None for the common case (every layer of every model, mergekit's `models:` form);
a list of slices describes layer stacks (mergekit's `slices:` form, passthrough frankenmerges).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Scalar = bool | int | float | str


@dataclass
class Conditional:
    """One `{filter, value}` entry: applies to tensors whose name contains `filter` (None: all)."""

    value: Scalar | list[Scalar]
    filter: str | None = None


# A parameter value: a number (or bool/str), a gradient (list of anchors, or one value per layer),
# or a list of Conditional entries where the first matching filter wins.
ParamValue = Scalar | list[Scalar] | list[Conditional] | Conditional
Parameters = dict[str, ParamValue]


def plain_value(value: ParamValue) -> Any:
    """A parameter value as the plain data a file holds: a `{filter, value}` entry becomes a dict
    (no `filter` key when it applies to every tensor). TOML and YAML write the same data."""
    if isinstance(value, Conditional):
        item: dict[str, Any] = {} if value.filter is None else {"filter": value.filter}
        item["value"] = list(value.value) if isinstance(value.value, list) else value.value
        return item
    if isinstance(value, list):
        return [plain_value(item) for item in value]
    return value


def plain_parameters(parameters: Parameters) -> dict[str, Any]:
    """`plain_value` of every parameter."""
    return {name: plain_value(value) for name, value in parameters.items()}


@dataclass
class ModelEntry:
    """A model the recipe uses: a local folder or a Hub id, with optional revision and parameters."""

    name: str
    source: str
    revision: str | None = None
    parameters: Parameters = field(default_factory=dict)
    # False for a base that a mergekit config names only as `base_model`, not under `models:`
    # (mergekit then adds it as the last input, as the recipe does). Only YAML export reads it, so
    # that YAML -> TOML -> YAML lists exactly the models the original listed.
    listed: bool = True
    # A PEFT LoRA adapter applied to this model's tensors as they are read (docs/lora.md): a
    # folder or a Hub id, optionally `@revision`. mergekit writes it `source+lora`.
    lora: str | None = None

    @property
    def reference(self) -> str:
        """mergekit's `path@revision` form, with `+adapter` when the model carries one."""
        model = f"{self.source}@{self.revision}" if self.revision else self.source
        return f"{model}+{self.lora}" if self.lora else model


@dataclass
class SliceSource:
    """Layers [start, end) of one model feeding an output slice."""

    model: str
    layer_range: tuple[int, int]
    parameters: Parameters = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


@dataclass
class Slice:
    """A run of output layers, merged from equally long layer ranges of its sources."""

    sources: list[SliceSource]
    parameters: Parameters = field(default_factory=dict)
    base: str | None = None

    @property
    def num_layers(self) -> int:
        return self.sources[0].num_layers if self.sources else 0


@dataclass
class Recipe:
    """A whole merge. `models` keeps insertion order: it is the input order of the merge."""

    method: str
    models: dict[str, ModelEntry] = field(default_factory=dict)
    base: str | None = None
    output: str | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    # "base", "union" or a model name; mergekit's `tokenizer_source`.
    tokenizer_source: str | None = None
    # mergekit's `tokenizer:` block (source, tokens, pad_to_multiple_of), kept as data.
    tokenizer: dict[str, Any] | None = None
    chat_template: str | None = None
    seed: int | None = None
    parameters: Parameters = field(default_factory=dict)
    slices: list[Slice] | None = None
    description: str | None = None
    # The `[search]` table (`mergetui evolve`, the app's Search screen) as the file wrote it: plain
    # data, read and checked by `mergetui.search.spec`. The merge ignores it; saving keeps it.
    search: dict[str, Any] | None = None
    # Where each key was written (dotted recipe path -> 1-based line), so problems can point at it.
    # Bookkeeping only: it takes no part in equality, so a recipe read from TOML equals one from YAML.
    locations: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    source_path: str | None = field(default=None, compare=False, repr=False)

    def model(self, name: str) -> ModelEntry:
        return self.models[name]

    def line_of(self, path: str) -> int | None:
        """The line a dotted recipe path was written on, or that of its nearest written parent.

        A value written inline (`sources = [{ model = "a", ... }]`) has no line of its own, so the
        line of the key holding it is the best place to point at.
        """
        while path:
            if path in self.locations:
                return self.locations[path]
            path = path.rpartition(".")[0]
        return None

    def effective_slices(self, layer_counts: Mapping[str, int]) -> list[Slice]:
        """The recipe as output slices, whatever form it was written in.

        In the `models` form every model contributes all its layers to a single slice, in recipe order
        (mergekit adds the base as an input when it is not listed; here the base is always a model).
        """
        if self.slices is not None:
            return self.slices
        sources = [
            SliceSource(name, (0, layer_counts[name]), entry.parameters)
            for name, entry in self.models.items()
        ]
        return [Slice(sources=sources)]

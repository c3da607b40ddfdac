"""The per-layer grid as plain data: rows, columns, the values the merge will use, and the edits.

Rows are the output stack: embeddings, every output layer, final norm/head. Columns are the method's
float parameters (per-model ones once per model, shared ones once), each either whole or split by
filter into attention / mlp / rest. A cell's value is never computed here: it is the core's
resolution (`mergetui.recipe.resolve`) for a representative tensor of that row and group, so the grid
shows exactly what the merge will use.

Edits write back to the recipe through the document (one undo step each): an edited column becomes an
explicit per-layer list for each slice it touches (a list as long as the slice, which the gradient
rule maps exactly onto its layers); a split column becomes `[{filter="self_attn", value=[...]},
{filter="mlp", value=[...]}, {value=[...]}]`. Columns nobody edits keep whatever form they had.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mergetui.checkpoints.layers import block_kind, layer_index, with_layer_index
from mergetui.editing.document import RecipeDocument
from mergetui.errors import UserError
from mergetui.merge.analysis import (
    KINDS,
    METRIC_TITLES,
    PER_MODEL_METRICS,
    Analysis,
    GroupMetrics,
    format_metric,
)
from mergetui.recipe.methods import METHODS, ParamSpec
from mergetui.recipe.model import Conditional, Recipe, Slice

Group = Literal["all", "attention", "mlp", "rest"]
ALL: Group = "all"
ATTENTION: Group = "attention"
MLP: Group = "mlp"
REST: Group = "rest"
SPLIT_GROUPS: tuple[Group, ...] = (ATTENTION, MLP, REST)
GROUP_LABELS: dict[str, str] = {ALL: "", ATTENTION: "attn", MLP: "mlp", REST: "rest"}
# The filters an edited split column writes (mergekit's usual spelling for Llama-family names).
DEFAULT_FILTERS: dict[str, str] = {ATTENTION: "self_attn", MLP: "mlp"}

DEFAULT_ASSUMED_LAYERS = 32
SIGNIFICANT_DIGITS = 6
STEP_LADDER = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_STEP = 0.05

PRESETS: dict[str, str] = {
    "flat": "every cell = high",
    "ramp_up": "straight from low to high",
    "ramp_down": "straight from high to low",
    "v": "high at the ends, low mid",
    "lambda": "low at the ends, high mid",
    # The two S-curves differ by at most 1% of high-low: no preview can tell them apart, so the
    # description says so (a user who sees the same picture twice knows it is not a fault).
    "cosine": "(1-cos πx)/2: S-curve, ≈ smoothstep (±1%)",
    "smoothstep": "3x²-2x³: S-curve, ≈ cosine (±1%)",
    "step": "low, then high from a layer",
    "random": "uniform in [low, high], seeded",
}
PRESET_TITLES: dict[str, str] = {
    "flat": "Flat",
    "ramp_up": "Ramp up",
    "ramp_down": "Ramp down",
    "v": "V",
    "lambda": "Λ (lambda)",
    "cosine": "Cosine",
    "smoothstep": "Smoothstep",
    "step": "Step at a layer",
    "random": "Seeded random",
}


class _NotApplicable:
    """A cell that does not exist for the merge (a model absent from a slice, attention at the head)."""

    def __repr__(self) -> str:
        return "NA"

    def __bool__(self) -> bool:
        return False


NA: Any = _NotApplicable()
CellValue = Any  # float | None (no value) | NA


class GridError(Exception):
    """An edit the grid cannot make; the message is meant for the person editing."""


# ---------------------------------------------------------------------------------------------------
# Tensor names that stand for a row and group


@dataclass(frozen=True)
class TensorNames:
    """Representative tensor names: what the grid asks the core to resolve for each row and group.

    Layer names are layer 0's; other layers are renumbered with `with_layer_index`. Taken from a real
    checkpoint when one can be read, so filters resolve against the architecture's real names.
    """

    embed: str
    head: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    rest: tuple[str, ...]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> TensorNames | None:
        """Pick the representatives from a checkpoint's tensor names; None if there is no layer 0."""
        names = sorted(names)
        groups: dict[str, list[str]] = {ATTENTION: [], MLP: [], REST: []}
        embed = head = final_norm = None
        for name in names:
            kind = block_kind(name)
            index = layer_index(name)
            if index is None:
                if kind == "embedding" and embed is None:
                    embed = name
                elif kind == "head" and head is None:
                    head = name
                elif kind == "norm" and final_norm is None:
                    final_norm = name
                continue
            if index != 0:
                continue
            if kind == "attention":
                groups[ATTENTION].append(name)
            elif kind == "mlp":
                groups[MLP].append(name)
            else:
                groups[REST].append(name)
        if not (groups[ATTENTION] or groups[MLP] or groups[REST]):
            return None
        fallback = groups[REST] or groups[MLP] or groups[ATTENTION]
        return cls(
            embed=embed or LLAMA_NAMES.embed,
            head=head or final_norm or LLAMA_NAMES.head,
            attention=tuple(groups[ATTENTION] or fallback),
            mlp=tuple(groups[MLP] or fallback),
            rest=tuple(groups[REST] or fallback),
        )

    def group_names(self, group: Group) -> tuple[str, ...]:
        return {ATTENTION: self.attention, MLP: self.mlp, REST: self.rest, ALL: self.rest}[group]

    def layer_name(self, group: Group, layer: int) -> str:
        return with_layer_index(self.group_names(group)[0], layer)

    def template(self, group: Group) -> str:
        """The group's representative name with `{i}` for the layer (the core's template form)."""
        marker = 987654321
        return with_layer_index(self.group_names(group)[0], marker).replace(str(marker), "{i}")

    def all_layer_names(self) -> tuple[str, ...]:
        return self.attention + self.mlp + self.rest


LLAMA_NAMES = TensorNames(
    embed="model.embed_tokens.weight",
    head="lm_head.weight",
    attention=tuple(
        f"model.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    ),
    mlp=tuple(f"model.layers.0.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")),
    rest=(
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
    ),
)


# ---------------------------------------------------------------------------------------------------
# Rows and columns


@dataclass(frozen=True)
class GridRow:
    """One output row. `layer` is the output layer index (None for embeddings and head)."""

    kind: Literal["embed", "layer", "head"]
    slice_index: int
    layer: int | None = None
    local: int = 0
    length: int = 1
    # (model, source layer) pairs feeding this output layer, for labels in layer stacks.
    sources: tuple[tuple[str, int], ...] = ()

    @property
    def t(self) -> float:
        """mergekit's gradient position: i/(n-1) in the slice, 1 for a one-layer slice, 0 outside."""
        if self.kind != "layer":
            return 0.0
        return self.local / (self.length - 1) if self.length > 1 else 1.0


@dataclass(frozen=True)
class GridColumn:
    """One column: a parameter, for one model (None: shared), for a group of tensors."""

    param: str
    model: str | None
    group: Group = ALL
    read_only: str | None = None  # why the column cannot be edited here, if it cannot
    # A metric overlay column (see `GridModel.metric`): `param` is the metric's name.
    metric: bool = False

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.param, self.model)

    @property
    def title(self) -> str:
        name = METRIC_TITLES.get(self.param, self.param) if self.metric else self.param
        return name if self.model is None else f"{name}·{self.model}"


@dataclass(frozen=True)
class CellRange:
    """A rectangle of cells, inclusive on both ends, in grid coordinates (row, column)."""

    top: int
    left: int
    bottom: int
    right: int

    @classmethod
    def spanning(cls, a: tuple[int, int], b: tuple[int, int]) -> CellRange:
        return cls(min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1]))

    @property
    def rows(self) -> range:
        return range(self.top, self.bottom + 1)

    @property
    def columns(self) -> range:
        return range(self.left, self.right + 1)

    def cells(self) -> Iterable[tuple[int, int]]:
        for row in self.rows:
            for col in self.columns:
                yield row, col

    def __contains__(self, cell: object) -> bool:
        if not isinstance(cell, tuple) or len(cell) != 2:
            return False
        return self.top <= cell[0] <= self.bottom and self.left <= cell[1] <= self.right

    @property
    def size(self) -> int:
        return (self.bottom - self.top + 1) * (self.right - self.left + 1)


@dataclass
class Block:
    """Copied cells: rows of values (None where a cell had no value or could not be copied)."""

    values: list[list[float | None]] = field(default_factory=list)

    @property
    def height(self) -> int:
        return len(self.values)

    @property
    def width(self) -> int:
        return max((len(row) for row in self.values), default=0)

    def to_text(self) -> str:
        """Tab-separated, one line per row: pastes into a spreadsheet and back."""
        return "\n".join(
            "\t".join("" if v is None else format_number(v, precise=True) for v in row)
            for row in self.values
        )

    @classmethod
    def from_text(cls, text: str) -> Block:
        """Parse numbers separated by tabs, commas or spaces, one row per line."""
        rows: list[list[float | None]] = []
        for line in text.strip().splitlines():
            cells = [c for c in line.replace(",", "\t").replace(";", "\t").split() if c]
            row: list[float | None] = []
            for cell in cells:
                try:
                    row.append(float(cell))
                except ValueError:
                    raise GridError(f"cannot paste {cell!r}: not a number") from None
            if row:
                rows.append(row)
        if not rows:
            raise GridError("nothing to paste: the clipboard holds no numbers")
        return cls(rows)


SUGGEST_STRENGTH = 0.5


def suggest_rule_lines(method: str, reference: str) -> list[str]:
    """The rule in three short lines, as the preview shows it for this method."""
    goal = (
        f"g = 0: t leans toward the base ({reference}), which moved 0 from itself"
        if method == "slerp"
        else "g = the layer's total weight shared by 1/distance (distance 0 takes all)"
    )
    return [
        f"Where the models disagree most, lean toward the one that moved less from {reference}.",
        "d = 1 - sign agreement (1 - cosine for one model), rescaled to 0..1 over the "
        "layers; v becomes v + s·d·(g - v)",
        goal,
    ]


@dataclass
class Suggestion:
    """Proposed cell values (not yet written) and what they came from."""

    changes: dict[tuple[int, int], float]
    strength: float
    disagreement: dict[tuple[int, str], float]  # (row, group) -> raw disagreement
    columns: list[int]

    @property
    def empty(self) -> bool:
        return not self.changes


# ---------------------------------------------------------------------------------------------------
# Numbers


def round_value(value: float) -> float:
    """Keep stored values readable in the recipe file (0.30000000000000004 -> 0.3)."""
    if value == 0 or not math.isfinite(value):
        return 0.0 if value == 0 else value
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def format_number(value: float, precise: bool = False) -> str:
    """Short text for a cell (at most 6 characters where possible); `precise` for the status line."""
    if precise:
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e4:
        for digits in (4, 3, 2, 1):
            text = f"{value:.{digits}g}"
            if len(text) <= 6:
                return text
        return text
    return f"{value:.0e}"


def preset_values(
    name: str,
    count: int,
    low: float,
    high: float,
    *,
    layers: Sequence[int] | None = None,
    at_layer: int | None = None,
    seed: int | None = None,
) -> list[float]:
    """The curve `name` over `count` cells, position x = i/(count-1) (0 for a single cell).

    `layers` are the output layer numbers of the cells (for "step", which switches from low to high
    at `at_layer`); "random" draws uniformly in [low, high] from `seed`.
    """
    if name not in PRESETS:
        raise GridError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    if count <= 0:
        return []
    xs = [i / (count - 1) if count > 1 else 0.0 for i in range(count)]
    span = high - low
    if name == "flat":
        values = [high] * count
    elif name == "ramp_up":
        values = [low + span * x for x in xs]
    elif name == "ramp_down":
        values = [high - span * x for x in xs]
    elif name == "v":
        values = [low + span * abs(2 * x - 1) for x in xs]
    elif name == "lambda":
        values = [high - span * abs(2 * x - 1) for x in xs]
    elif name == "cosine":
        values = [low + span * (1 - math.cos(math.pi * x)) / 2 for x in xs]
    elif name == "smoothstep":
        values = [low + span * (3 * x * x - 2 * x * x * x) for x in xs]
    elif name == "step":
        if at_layer is None:
            raise GridError("the step preset needs the layer where it switches from low to high")
        numbers = list(layers) if layers is not None else list(range(count))
        values = [low if number < at_layer else high for number in numbers]
    else:  # random
        rng = random.Random(seed)
        lo, hi = min(low, high), max(low, high)
        values = [rng.uniform(lo, hi) for _ in range(count)]
    return [round_value(v) for v in values]


def next_step(step: float, direction: int) -> float:
    """The next step on the ladder up (+1) or down (-1) from `step`."""
    if direction > 0:
        return next((s for s in STEP_LADDER if s > step * (1 + 1e-9)), STEP_LADDER[-1])
    return next((s for s in reversed(STEP_LADDER) if s < step * (1 - 1e-9)), STEP_LADDER[0])


# ---------------------------------------------------------------------------------------------------
# The model


def guess_layer_count(recipe: Recipe) -> int | None:
    """The longest per-layer list in the recipe: a saved grid column is as long as the stack."""
    longest = 0

    def visit(value: Any) -> None:
        nonlocal longest
        if isinstance(value, Conditional):
            visit(value.value)
        elif isinstance(value, list):
            if value and all(isinstance(v, Conditional) for v in value):
                for entry in value:
                    visit(entry.value)
            else:
                longest = max(longest, len(value))

    for params in _all_parameter_dicts(recipe):
        for value in params.values():
            visit(value)
    return longest or None


def _all_parameter_dicts(recipe: Recipe) -> Iterable[dict]:
    yield recipe.parameters
    for entry in recipe.models.values():
        yield entry.parameters
    for slice_ in recipe.slices or ():
        yield slice_.parameters
        for source in slice_.sources:
            yield source.parameters


def _conditionals(value: Any) -> list[Conditional]:
    if isinstance(value, Conditional):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, Conditional) for v in value):
        return list(value)
    return []


class GridModel:
    """Rows, columns and values of the grid for a document's recipe, and every edit on them."""

    def __init__(
        self,
        document: RecipeDocument,
        *,
        layer_counts: Mapping[str, int] | None = None,
        assumed_layers: int | None = None,
        names: TensorNames | None = None,
        split: bool = False,
        step: float = DEFAULT_STEP,
    ) -> None:
        self.document = document
        self.layer_counts: dict[str, int] = dict(layer_counts or {})
        self.assumed_layers = assumed_layers
        self.names = names or LLAMA_NAMES
        self.split = split
        self.step = step
        self.rows: list[GridRow] = []
        self.columns: list[GridColumn] = []
        self.problem: str | None = None  # why there is no grid, if there is none
        self.layer_note: str | None = None  # how the layer count was found, when it is a guess
        self._values: dict[tuple[int, int], CellValue] = {}
        self._slices: list[Slice] = []
        self._ranges: dict[str, tuple[float, float]] = {}
        # The metric overlay: the analysis the metric columns show, and which metric (None: off).
        self.insight: Analysis | None = None
        self.metric: str | None = None
        self._groups: dict[tuple[Any, str], GroupMetrics | None] = {}
        self.rebuild()

    @property
    def recipe(self) -> Recipe:
        return self.document.recipe

    # -- building ------------------------------------------------------------------------------

    def model_layers(self) -> tuple[int, str | None]:
        """Layer count of the models in the `models` form, and a note when it is not measured."""
        known = [self.layer_counts[m] for m in self.recipe.models if m in self.layer_counts]
        if known:
            return max(known), None
        if self.assumed_layers:
            return (
                self.assumed_layers,
                f"{self.assumed_layers} layers, set by hand (checkpoints not found)",
            )
        # A saved grid column is as long as the stack; shorter lists are gradient anchors.
        guess = max(guess_layer_count(self.recipe) or 0, DEFAULT_ASSUMED_LAYERS)
        return guess, (f"checkpoints not found: assuming {guess} layers (ctrl+p › Set layer count)")

    def rebuild(self) -> None:
        """Recompute rows, columns and values from the recipe (after any change to it)."""
        self._ranges = {}
        self.problem = None
        self.layer_note = None
        spec = METHODS.get(self.recipe.method)
        if spec is None:
            self._clear(f"unknown method {self.recipe.method!r}: pick one on the Setup tab")
            return
        if not self.recipe.models:
            self._clear("no models yet: add some on the Setup tab")
            return
        self._counts: dict[str, int] = {}
        if self.recipe.slices is not None:
            slices = self.recipe.slices
            if not slices or any(not s.sources for s in slices):
                self._clear("a slice has no sources: fix it on the Slices tab")
                return
        else:
            count, self.layer_note = self.model_layers()
            self._counts = {name: count for name in self.recipe.models}
            slices = self.recipe.effective_slices(self._counts)
        self._slices = slices
        self.rows = self._build_rows(slices)
        whole = self._build_columns(spec)
        if not whole:
            self.columns, self._values = [], {}
            self.problem = f"{spec.pretty_name} has no per-layer parameters: nothing to shape here"
            return
        self._resolve_series(spec, whole)
        self.columns = [self._with_errors(c) for c in self._split_columns(whole)]
        self.columns = self._with_metric_columns(self.columns)
        self._values = {
            (r, c): self._cell(r, column)
            for c, column in enumerate(self.columns)
            for r in range(len(self.rows))
        }

    def _clear(self, problem: str) -> None:
        self.rows, self.columns, self._values, self._slices = [], [], {}, []
        self._series = {}
        self.problem = problem

    def _build_rows(self, slices: Sequence[Slice]) -> list[GridRow]:
        rows = [GridRow("embed", 0)]
        layer = 0
        for index, slice_ in enumerate(slices):
            length = slice_.num_layers
            for local in range(length):
                sources = tuple((s.model, s.layer_range[0] + local) for s in slice_.sources)
                rows.append(GridRow("layer", index, layer, local, length, sources))
                layer += 1
        rows.append(GridRow("head", len(slices) - 1))
        return rows

    def grid_params(self, spec: Any) -> list[ParamSpec]:
        """The parameters that get columns: every float one (per-model first, as in the spec)."""
        return [p for p in spec.per_model_params if p.type == "float"] + [
            p for p in spec.shared_params if p.type == "float"
        ]

    def column_models(self, param: ParamSpec) -> list[str]:
        """Models that get a column for a per-model parameter (the base only for scope `input`)."""
        names: list[str] = []
        if self.recipe.slices is None:
            names = list(self.recipe.models)
        else:
            for slice_ in self.recipe.slices:
                for source in slice_.sources:
                    if source.model not in names:
                        names.append(source.model)
        if param.scope == "non_base":
            bases = {self.recipe.base} | {s.base for s in self.recipe.slices or () if s.base}
            names = [n for n in names if n not in bases]
        return names

    def _build_columns(self, spec: Any) -> list[GridColumn]:
        columns: list[GridColumn] = []
        for param in self.grid_params(spec):
            models: list[str | None] = (
                list(self.column_models(param)) if param.per_model else [None]
            )
            for model in models:
                columns.append(
                    GridColumn(param.name, model, ALL, self._read_only_reason(param.name, model))
                )
        return columns

    def _split_columns(self, columns: list[GridColumn]) -> list[GridColumn]:
        """Split a column into attention / mlp / rest when asked to, or when its groups differ."""
        out: list[GridColumn] = []
        for column in columns:
            if self.split or self._groups_differ(column.key):
                out.extend(
                    GridColumn(column.param, column.model, g, column.read_only)
                    for g in SPLIT_GROUPS
                )
            else:
                out.append(column)
        return out

    def _groups_differ(self, key: tuple[str, str | None]) -> bool:
        series = [self._series.get((key, g)) for g in SPLIT_GROUPS]
        layer_rows = [r for r, row in enumerate(self.rows) if row.kind == "layer"]
        return any(len({repr(s[r]) if s else None for s in series}) > 1 for r in layer_rows)

    def _with_errors(self, column: GridColumn) -> GridColumn:
        error = self._errors.get(column.key)
        if error and not column.read_only:
            return GridColumn(column.param, column.model, column.group, error)
        return column

    def _value_sources(self, param: str, model: str | None) -> list[Any]:
        """Every value the recipe holds for this parameter at any level that can reach the column."""
        found: list[Any] = []
        dicts: list[dict] = [self.recipe.parameters]
        if model is not None and model in self.recipe.models:
            dicts.append(self.recipe.models[model].parameters)
        for slice_ in self.recipe.slices or ():
            dicts.append(slice_.parameters)
            for source in slice_.sources:
                if model is not None and source.model == model:
                    dicts.append(source.parameters)
        for params in dicts:
            if param in params:
                found.append(params[param])
        return found

    def _read_only_reason(self, param: str, model: str | None) -> str | None:
        """Columns whose filters cut across the attention / mlp / rest groups are left to the file."""
        layer_names = self.names.all_layer_names()
        groups = {
            ATTENTION: set(self.names.attention),
            MLP: set(self.names.mlp),
        }
        outside = {self.names.embed, self.names.head}
        for value in self._value_sources(param, model):
            for entry in _conditionals(value):
                if entry.filter is None:
                    continue
                matched = {n for n in layer_names if entry.filter in n}
                if any(entry.filter in n for n in outside) or matched not in groups.values():
                    return (
                        f"filter {entry.filter!r} does not split layers into attention / mlp / rest; "
                        "edit this parameter in the recipe file"
                    )
        return None

    # -- resolution (the core's) ---------------------------------------------------------------

    def _resolve_series(self, spec: Any, columns: list[GridColumn]) -> None:
        """Ask the core for every (parameter, model, group) down the whole stack."""
        from mergetui.recipe import resolve

        self._series: dict[tuple[tuple[str, str | None], str], list[CellValue]] = {}
        self._errors: dict[tuple[str, str | None], str] = {}
        for column in columns:
            # Without filter entries every group resolves alike: ask once, share the answer.
            filtered = any(
                _conditionals(v) for v in self._value_sources(column.param, column.model)
            )
            for group in SPLIT_GROUPS:
                if not filtered and group != SPLIT_GROUPS[0]:
                    self._series[(column.key, group)] = self._series[(column.key, SPLIT_GROUPS[0])]
                    continue
                try:
                    found = resolve.resolve_layer_values(
                        self.recipe,
                        self._counts,
                        column.param,
                        column.model,
                        self.names.template(group),
                        pre_tensor=self.names.embed,
                        post_tensor=self.names.head,
                    )
                except UserError as exc:
                    self._errors[column.key] = f"cannot show {column.title}: {exc}"
                    self._series[(column.key, group)] = [None] * len(self.rows)
                    continue
                series = [
                    _as_cell(found.embed),
                    *(_as_cell(v) for v in found.layers),
                    _as_cell(found.head),
                ]
                self._series[(column.key, group)] = [
                    NA if not self._applies(row, column) else value
                    for row, value in zip(self.rows, series, strict=True)
                ]

    def _applies(self, row: GridRow, column: GridColumn) -> bool:
        """Whether the merge uses this column's parameter at this row at all."""
        if column.model is None:
            return True
        slice_ = self._slices[row.slice_index]
        if all(source.model != column.model for source in slice_.sources):
            return False
        spec = METHODS[self.recipe.method].param(column.param)
        base = slice_.base or self.recipe.base
        return not (spec is not None and spec.scope == "non_base" and column.model == base)

    def _cell(self, r: int, column: GridColumn) -> CellValue:
        row = self.rows[r]
        if row.kind != "layer" and column.group in (ATTENTION, MLP):
            return NA
        if column.metric:
            return self._metric_cell(row, column)
        group = REST if column.group == ALL else column.group
        return self._series[(column.key, group)][r]

    # -- the metric overlay --------------------------------------------------------------------

    @property
    def overlay(self) -> bool:
        """Whether metric columns are shown (a metric is chosen and its analysis is known)."""
        return self.metric is not None and self.insight is not None

    def set_overlay(self, insight: Analysis | None, metric: str | None) -> None:
        """Show `metric` of `insight` beside the parameters (None hides the overlay)."""
        self.insight = insight
        self.metric = metric
        self._groups = {}
        self.rebuild()

    def metric_models(self) -> list[str]:
        """Models that get a column for a per-model metric: the compared ones in the recipe."""
        if self.insight is None:
            return []
        return [m for m in self.insight.others if m in self.recipe.models or m == "output"]

    def _with_metric_columns(self, columns: list[GridColumn]) -> list[GridColumn]:
        """Insert the overlay's columns: a per-model metric right after that model's column of
        the first per-model parameter (same split), agreement after all of that parameter's
        columns; models without such a column (and methods without one) at the end."""
        if not self.overlay:
            return columns
        metric = self.metric
        assert metric is not None and self.insight is not None
        reason = f"{METRIC_TITLES[metric]} is a metric of the checkpoints (read-only; o hides it)"
        any_split = self.split or any(c.group != ALL for c in columns)
        end_groups: tuple[Group, ...] = SPLIT_GROUPS if any_split else (ALL,)

        def metric_columns(model: str | None, groups: Iterable[Group]) -> list[GridColumn]:
            return [GridColumn(metric, model, g, reason, metric=True) for g in groups]

        first = next((c.param for c in columns if c.model is not None), None)
        if metric not in PER_MODEL_METRICS:
            if not self.insight.has_agreement:
                return columns
            # One set for all the models, right after the first per-model parameter's columns.
            last = max((i for i, c in enumerate(columns) if c.param == first), default=None)
            if last is None:
                return columns + metric_columns(None, end_groups)
            return columns[: last + 1] + metric_columns(None, end_groups) + columns[last + 1 :]
        wanted = self.metric_models()
        out: list[GridColumn] = []
        placed: set[str] = set()
        for index, column in enumerate(columns):
            out.append(column)
            following = columns[index + 1] if index + 1 < len(columns) else None
            if (
                column.param == first
                and column.model in wanted
                and (following is None or following.key != column.key)
            ):
                groups = [c.group for c in columns if c.key == column.key]
                out.extend(metric_columns(column.model, groups))
                placed.add(column.model)
        for model in wanted:
            if model not in placed:
                out.extend(metric_columns(model, end_groups))
        return out

    def _metric_group(self, key: Any, group: Group) -> GroupMetrics | None:
        cached_key = (key, group)
        if cached_key not in self._groups:
            assert self.insight is not None
            if group == ALL or not isinstance(key, int):
                kinds = None
            elif group == REST:
                kinds = [k for k in KINDS if k not in ("attention", "mlp")]
            else:
                kinds = [group]
            self._groups[cached_key] = self.insight.group(key, kinds)
        return self._groups[cached_key]

    def _metric_cell(self, row: GridRow, column: GridColumn) -> CellValue:
        """A metric for a row: the layer the row's model comes from (its first source for
        agreement), the embeddings or the head; NA where the analysis has nothing."""
        if self.insight is None:
            return NA
        key: Any
        if row.kind in ("embed", "head"):
            key = row.kind
        else:
            sources = dict(row.sources)
            if column.model is not None and column.model in self.recipe.models:
                if column.model not in sources:
                    return NA
                key = sources[column.model]
            else:
                key = row.sources[0][1] if row.sources else row.layer
        metrics = self._metric_group(key, column.group)
        value = metrics.get(column.param, column.model) if metrics is not None else None
        return NA if value is None else float(value)

    def metric_range(self, metric: str) -> tuple[float, float]:
        """The heat map's scale for a metric: its values over the layer rows."""
        cached = self._ranges.get("\0" + metric)
        if cached is None:
            numbers = [
                v
                for (r, c), v in self._values.items()
                if self.columns[c].metric
                and self.columns[c].param == metric
                and self.rows[r].kind == "layer"
                and isinstance(v, float)
                and math.isfinite(v)
            ]
            cached = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
            self._ranges["\0" + metric] = cached
        return cached

    # -- reading -------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.columns)

    def value(self, row: int, col: int) -> CellValue:
        return self._values.get((row, col), NA)

    def spec_of(self, col: int) -> ParamSpec:
        spec = METHODS[self.recipe.method].param(self.columns[col].param)
        assert spec is not None
        return spec

    def editable(self, row: int, col: int) -> bool:
        return (
            self.rows[row].kind == "layer"
            and self.columns[col].read_only is None
            and self.value(row, col) is not NA
        )

    def why_not_editable(self, row: int, col: int) -> str | None:
        if self.editable(row, col):
            return None
        kind = self.rows[row].kind
        column = self.columns[col]
        if column.read_only:
            return column.read_only
        if kind == "embed":
            return "embeddings follow the first layer's value (mergekit resolves them at t = 0)"
        if kind == "head":
            return "final norm and head follow the first layer of the last slice (t = 0)"
        return f"{column.model} is not an input of this slice"

    def text(self, row: int, col: int) -> str:
        value = self.value(row, col)
        if value is NA:
            return "·"
        if self.columns[col].metric:
            return format_metric(self.columns[col].param, value)
        if value is None:
            return "?" if self.spec_of(col).required else "—"
        return format_number(value)

    def param_range(self, param: str) -> tuple[float, float]:
        """The heat map's scale for a parameter: its declared range, else 0..1 widened to its values.

        Weights have no declared range; scaling them to their own min..max would paint 0.3 and 0.4
        as opposite ends, so the scale always spans at least 0..1.
        """
        cached = self._ranges.get(param)
        if cached is None:
            cached = self._ranges[param] = self._param_range(param)
        return cached

    def _param_range(self, param: str) -> tuple[float, float]:
        spec = METHODS[self.recipe.method].param(param)
        if spec is not None and spec.minimum is not None and spec.maximum is not None:
            return float(spec.minimum), float(spec.maximum)
        numbers = [
            v
            for (r, c), v in self._values.items()
            if self.columns[c].param == param and isinstance(v, float)
        ]
        low = min([0.0, *numbers])
        high = max([1.0, *numbers])
        if spec is not None and spec.minimum is not None:
            low = float(spec.minimum)
        if spec is not None and spec.maximum is not None:
            high = float(spec.maximum)
        return low, high

    def heat(self, row: int, col: int) -> float | None:
        """Where the cell sits in its parameter's range, 0..1; None when it has no number."""
        value = self.value(row, col)
        if value is NA or value is None:
            return None
        column = self.columns[col]
        if column.metric:
            # Hot where the models part ways: low cosine or agreement, high distance.
            low, high = self.metric_range(column.param)
            if not math.isfinite(value):
                return 1.0
            where = (value - low) / (high - low) if high > low else 0.0
            return where if column.param == "distance" else 1.0 - where
        low, high = self.param_range(column.param)
        return (value - low) / (high - low) if high > low else 0.5

    def column_values(self, col: int) -> list[float | None]:
        """The column over the layer rows (for the curve preview)."""
        out: list[float | None] = []
        for r, row in enumerate(self.rows):
            if row.kind == "layer":
                value = self.value(r, col)
                out.append(None if value is NA else value)
        return out

    def row_label(self, row: int) -> str:
        item = self.rows[row]
        if item.kind == "embed":
            return "embed"
        if item.kind == "head":
            return "head"
        if self.recipe.slices is not None and len(item.sources) == 1:
            model, source_layer = item.sources[0]
            return f"{item.layer} {model[:5]}:{source_layer}"
        return str(item.layer)

    def describe(self, row: int, col: int) -> str:
        """One line about a cell for the status bar: what it is and its exact value."""
        column = self.columns[col]
        where = self.row_label(row)
        group = f" ({GROUP_LABELS[column.group]})" if column.group != ALL else ""
        value = self.value(row, col)
        if value is NA:
            shown = "n/a"
        elif column.metric:
            reference = self.insight.reference if self.insight is not None else "?"
            shown = f"{format_metric(column.param, value)} (against {reference})"
        elif value is None:
            shown = "no value" + (" (required)" if self.spec_of(col).required else "")
        else:
            shown = format_number(value, precise=True)
        return f"{column.title}{group} @ {where} = {shown}"

    def layer_rows(self, rows: Iterable[int]) -> list[int]:
        return [r for r in rows if 0 <= r < len(self.rows) and self.rows[r].kind == "layer"]

    # -- editing -------------------------------------------------------------------------------

    def _clamp(self, col: int, value: float) -> float:
        spec = self.spec_of(col)
        if spec.minimum is not None:
            value = max(float(spec.minimum), value)
        if spec.maximum is not None:
            value = min(float(spec.maximum), value)
        return round_value(value)

    def apply(self, changes: Mapping[tuple[int, int], float], label: str) -> int:
        """Write new values for cells; returns how many cells changed. One undo step."""
        edits = {
            cell: self._clamp(cell[1], float(v))
            for cell, v in changes.items()
            if self.editable(*cell) and math.isfinite(float(v))
        }
        edits = {cell: v for cell, v in edits.items() if self.value(*cell) != v}
        if not edits:
            return 0
        touched: dict[tuple[tuple[str, str | None], int], dict[tuple[int, str], float]] = {}
        for (r, c), v in edits.items():
            column = self.columns[c]
            groups = SPLIT_GROUPS if column.group == ALL else (column.group,)
            segment = touched.setdefault((column.key, self.rows[r].slice_index), {})
            for group in groups:
                segment[(r, group)] = v
        with self.document.edit(label):
            for (key, slice_index), segment in touched.items():
                self._write_segment(key, slice_index, segment)
        self.rebuild()
        return len(edits)

    def _write_segment(
        self, key: tuple[str, str | None], slice_index: int, edits: Mapping[tuple[int, str], float]
    ) -> None:
        """Write one column over one slice as explicit per-layer lists (split when its groups differ)."""
        rows = [
            r
            for r, row in enumerate(self.rows)
            if row.kind == "layer" and row.slice_index == slice_index
        ]
        lists: dict[str, list[float | None]] = {}
        for group in SPLIT_GROUPS:
            series = self._series[(key, group)]
            current = [edits.get((r, group), series[r]) for r in rows]
            current = [None if v is NA else v for v in current]
            lists[group] = [None if v is None else round_value(v) for v in _fill_gaps(current)]
        present = {g: v for g, v in lists.items() if any(x is not None for x in v)}
        if not present:
            return
        filters = self._write_filters(key)
        if len(present) == 3 and lists[ATTENTION] == lists[MLP] == lists[REST]:
            value: Any = list(lists[REST])
        else:
            value = [
                Conditional(value=list(present[g]), filter=filters.get(g))
                for g in SPLIT_GROUPS
                if g in present
            ]
        self._target_parameters(key, slice_index)[key[0]] = value

    def _write_filters(self, key: tuple[str, str | None]) -> dict[str, str]:
        """Keep the recipe's own spelling of the group filters (e.g. `attn` for GPT-2 names)."""
        filters = dict(DEFAULT_FILTERS)
        for value in self._value_sources(*key):
            for entry in _conditionals(value):
                if entry.filter is None:
                    continue
                if all(entry.filter in n for n in self.names.attention):
                    filters[ATTENTION] = entry.filter
                elif all(entry.filter in n for n in self.names.mlp):
                    filters[MLP] = entry.filter
        return filters

    def _target_parameters(self, key: tuple[str, str | None], slice_index: int) -> dict:
        """The most specific place in the recipe for a column's values over one slice."""
        param, model = key
        if self.recipe.slices is None:
            if model is None:
                return self.recipe.parameters
            return self.recipe.models[model].parameters
        slice_ = self.recipe.slices[slice_index]
        if model is None:
            return slice_.parameters
        for source in slice_.sources:
            if source.model == model:
                return source.parameters
        raise GridError(f"{model} is not an input of slice {slice_index + 1}")

    # -- operations over a selection -----------------------------------------------------------

    def editable_cells(self, area: CellRange) -> list[tuple[int, int]]:
        return [cell for cell in area.cells() if self.editable(*cell)]

    def set_value(self, area: CellRange, value: float) -> int:
        return self.apply(
            {cell: value for cell in self.editable_cells(area)}, f"set {_n(area)} to {value:g}"
        )

    def add(self, area: CellRange, delta: float) -> int:
        changes = {
            cell: self.value(*cell) + delta
            for cell in self.editable_cells(area)
            if self.value(*cell) is not None
        }
        return self.apply(changes, f"add {delta:g}")

    def multiply(self, area: CellRange, factor: float) -> int:
        changes = {
            cell: self.value(*cell) * factor
            for cell in self.editable_cells(area)
            if self.value(*cell) is not None
        }
        return self.apply(changes, f"multiply by {factor:g}")

    def nudge(self, area: CellRange, direction: int) -> int:
        return self.add(area, self.step * direction)

    def preset(
        self,
        area: CellRange,
        name: str,
        low: float,
        high: float,
        *,
        at_layer: int | None = None,
        seed: int | None = None,
    ) -> int:
        """Fill each selected column with the curve over the selected layer rows."""
        rows = self.layer_rows(area.rows)
        changes: dict[tuple[int, int], float] = {}
        rng_seed = seed
        for offset, col in enumerate(area.columns):
            if name == "random" and seed is not None:
                rng_seed = seed + offset  # each column its own reproducible draw
            values = preset_values(
                name,
                len(rows),
                low,
                high,
                layers=[self.rows[r].layer for r in rows],
                at_layer=at_layer,
                seed=rng_seed,
            )
            for r, v in zip(rows, values, strict=True):
                if self.editable(r, col):
                    changes[(r, col)] = v
        return self.apply(changes, f"preset {PRESET_TITLES.get(name, name)}")

    def interpolate(self, area: CellRange) -> int:
        """Straight line in each column from the first selected layer's value to the last's."""
        rows = self.layer_rows(area.rows)
        if len(rows) < 3:
            raise GridError("select at least three layer rows to interpolate between the ends")
        changes: dict[tuple[int, int], float] = {}
        for col in area.columns:
            first, last = self.value(rows[0], col), self.value(rows[-1], col)
            if first is NA or last is NA or first is None or last is None:
                continue
            for i, r in enumerate(rows):
                changes[(r, col)] = first + (last - first) * i / (len(rows) - 1)
        if not changes:
            raise GridError("the first and last selected rows need values to interpolate between")
        return self.apply(changes, "interpolate")

    def copy(self, area: CellRange) -> Block:
        rows: list[list[float | None]] = []
        for r in area.rows:
            row = []
            for c in area.columns:
                value = self.value(r, c)
                row.append(None if value is NA or value is None else value)
            rows.append(row)
        return Block(rows)

    def paste(self, block: Block, at: tuple[int, int]) -> int:
        """Paste with the block's top-left at `at`; cells past the grid's edge are dropped."""
        changes: dict[tuple[int, int], float] = {}
        n_rows, n_cols = self.shape
        for i, row in enumerate(block.values):
            for j, value in enumerate(row):
                cell = (at[0] + i, at[1] + j)
                if value is None or cell[0] >= n_rows or cell[1] >= n_cols:
                    continue
                changes[cell] = value
        return self.apply(changes, "paste")

    def toggle_split(self) -> bool:
        self.split = not self.split
        self.rebuild()
        return self.split

    def mixed_columns(self) -> list[str]:
        """Columns shown split because their groups differ (they stay split with the toggle off)."""
        titles: list[str] = []
        for column in self.columns:
            if column.metric:
                continue
            if column.group == ATTENTION and column.title not in titles:
                titles.append(column.title)
        return titles if not self.split else []

    # -- suggest from the metrics --------------------------------------------------------------

    def suggest(self, insight: Analysis, strength: float = SUGGEST_STRENGTH) -> Suggestion:
        """Proposed values from the metrics by SUGGEST_RULE; nothing is written (see `apply`).

        Each layer is looked at in *contexts*: the whole layer, plus attention / mlp / rest for
        the columns shown split. A column gets its proposal from its own context; a whole-layer
        column takes part in the split contexts with its value, and a split model takes part in
        the whole-layer context with the mean of its group values.
        """
        if not 0 < strength <= 1:
            raise GridError("the strength of a suggestion is above 0 and at most 1")
        method = self.recipe.method
        if method == "slerp":
            targets = [
                c for c, col in enumerate(self.columns) if not col.metric and col.param == "t"
            ]
            if self.recipe.base is None or insight.reference != self.recipe.base:
                raise GridError("slerp suggestions need the base (t = 0) as the reference")
        else:
            targets = [
                c
                for c, col in enumerate(self.columns)
                if not col.metric and col.param == "weight" and col.model is not None
            ]
        if not targets:
            raise GridError(f"suggest shapes slerp's t or per-model weights; {method} has neither")
        single = None if insight.has_agreement else insight.others[0]
        raw: dict[tuple[int, str], float] = {}
        contexts: dict[tuple[int, str], GroupMetrics] = {}
        for r, row in enumerate(self.rows):
            if row.kind != "layer":
                continue
            cells = [
                c for c in targets if self.editable(r, c) and isinstance(self.value(r, c), float)
            ]
            for group in dict.fromkeys(self.columns[c].group for c in cells):
                metrics = self._suggest_group(insight, row, group)
                if metrics is None:
                    continue
                if single is None:
                    assert metrics.agreement is not None
                    raw[(r, group)] = 1.0 - metrics.agreement
                else:
                    raw[(r, group)] = 1.0 - metrics.cosine[single]
                contexts[(r, group)] = metrics
        if not raw:
            raise GridError("no layer has both a value to change and metrics to go by")
        low, high = min(raw.values()), max(raw.values())
        spread = {key: (v - low) / (high - low) if high > low else 0.0 for key, v in raw.items()}
        changes: dict[tuple[int, int], float] = {}
        for (r, group), metrics in contexts.items():
            pull = strength * spread[(r, group)]
            if pull <= 0:
                continue
            written = [
                c
                for c in targets
                if self.columns[c].group == group
                and self.editable(r, c)
                and isinstance(self.value(r, c), float)
            ]
            if method == "slerp":
                goals = {c: 0.0 for c in written}  # t = 0 is the base, which moved 0 from itself
            else:
                goals = self._weight_goals(insight, metrics, r, group, targets, written)
            for c, goal in goals.items():
                current = self.value(r, c)
                # Four significant digits: a proposal, not a measurement.
                proposed = self._clamp(c, float(f"{current + pull * (goal - current):.4g}"))
                if proposed != current:
                    changes[(r, c)] = proposed
        return Suggestion(
            changes=changes,
            strength=strength,
            disagreement=dict(raw),
            columns=sorted({c for _, c in changes}),
        )

    def _suggest_group(self, insight: Analysis, row: GridRow, group: str) -> GroupMetrics | None:
        layer = row.sources[0][1] if row.sources else row.layer
        if group == ALL:
            kinds = None
        elif group == REST:
            kinds = [k for k in KINDS if k not in ("attention", "mlp")]
        else:
            kinds = [group]
        return insight.group(layer, kinds)

    def _weight_goals(
        self,
        insight: Analysis,
        metrics: GroupMetrics,
        r: int,
        group: str,
        targets: list[int],
        written: list[int],
    ) -> dict[int, float]:
        """Goals for the `written` columns: each model's share of the context's total weight,
        inversely to how far it moved from the reference (distance 0 takes it all)."""
        weights: dict[str, float] = {}
        own: dict[str, int] = {}
        by_model: dict[str, list[int]] = {}
        for c in targets:
            if self.editable(r, c) and isinstance(self.value(r, c), float):
                by_model.setdefault(str(self.columns[c].model), []).append(c)
        for model, columns in by_model.items():
            mine = [c for c in columns if self.columns[c].group == group]
            whole = [c for c in columns if self.columns[c].group == ALL]
            if mine:
                weights[model] = self.value(r, mine[0])
                own[model] = mine[0]
            elif whole:
                weights[model] = self.value(r, whole[0])
            else:  # a split model in the whole-layer context
                weights[model] = sum(self.value(r, c) for c in columns) / len(columns)
        distances = {
            m: 0.0 if m == insight.reference else metrics.distance[m]
            for m in weights
            if m == insight.reference or m in metrics.distance
        }
        if len(distances) < 2:
            return {}
        total = sum(weights[m] for m in distances)
        still = [m for m, d in distances.items() if d <= 0]
        if still:
            shares = {m: (1.0 / len(still) if m in still else 0.0) for m in distances}
        else:
            inverse = {m: 1.0 / d for m, d in distances.items() if math.isfinite(d)}
            norm = sum(inverse.values())
            shares = {m: inverse.get(m, 0.0) / norm for m in distances}
        return {c: total * shares[m] for m, c in own.items() if c in written and m in shares}

    def apply_suggestion(self, suggestion: Suggestion) -> int:
        """Write a confirmed suggestion: one undo step."""
        return self.apply(suggestion.changes, "suggest from metrics")


def _as_cell(value: Any) -> CellValue:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _fill_gaps(values: list[float | None]) -> list[float | None]:
    """Give cells without a value the nearest value in the column (a list cannot have holes)."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known or len(known) == len(values):
        return values
    return [
        v if v is not None else values[min(known, key=lambda k: abs(k - i))]
        for i, v in enumerate(values)
    ]


def _n(area: CellRange) -> str:
    return "1 cell" if area.size == 1 else f"{area.size} cells"

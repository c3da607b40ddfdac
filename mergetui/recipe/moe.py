"""Mixture-of-experts recipes: mergekit-moe's YAML as it is, and mergetui's TOML form of it.

A mergekit-moe config is told from a merge config by its keys: `base_model` and `experts`, and no
`merge_method`. mergetui's TOML form is one `[moe]` table with `[[moe.experts]]` (and at most one
`[[moe.shared_experts]]`) tables; see docs/moe.md. Both are read into one `MoeRecipe` by one
builder (`_build`), so a shape error names the file's own key and line whichever form it came in.
What needs the checkpoints (architectures, shapes) is checked by `merge.moe_plan`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergetui.dtypes import ALIASES, MERGEKIT_NAMES
from mergetui.errors import UserError

# mergekit-moe's gate modes: "hidden" is the last token's hidden state, "hidden_avg" the mean over
# the sequence ("hidden_last" is the same as "hidden"); the random ones need no prompts.
GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
RANDOM_GATE_MODES = ("random", "uniform_random")
# What `architecture:` may ask for (mergekit matches it as a prefix of the output's name).
OUTPUT_ARCHITECTURES = {"mixtral": "Mixtral", "qwen": "Qwen MoE"}
_EXPERT_KEYS = ("source", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")
_MOE_KEYS = (
    "base",
    "experts",
    "shared_experts",
    "gate_mode",
    "experts_per_token",
    "dtype",
    "architecture",
    "output",
    "seed",
)
# mergekit-moe's key -> ours (the rest are the same in both forms).
_YAML_KEYS = {"base_model": "base", "source_model": "source"}


@dataclass
class MoeExpert:
    """One expert (or shared expert): the model whose MLPs it gives, and what routes to it."""

    source: str
    positive_prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    noise_scale: float | None = None
    residual_scale: float | None = None
    where: str = ""  # file:line of its table or list item


@dataclass
class MoeRecipe:
    """An MoE assembly: the base's attention and embeddings, each expert's MLPs, gates from
    prompts. `locations` maps our key names ("experts.1.source") to lines of `source_path`."""

    base: str
    experts: list[MoeExpert]
    shared_experts: list[MoeExpert] = field(default_factory=list)
    gate_mode: str = "hidden"
    experts_per_token: int = 2
    dtype: str | None = None
    architecture: str | None = None
    output: str | None = None
    seed: int | None = None
    source_path: str | None = None
    locations: dict[str, int] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """`file:line` of a key (or of the nearest enclosing one), for error messages."""
        source = self.source_path or "<recipe>"
        parts = key.split(".")
        while parts:
            line = self.locations.get(".".join(parts))
            if line is not None:
                return f"{source}:{line}"
            parts.pop()
        return source

    def all_experts(self) -> list[tuple[str, MoeExpert]]:
        """(key, expert) for every expert then every shared expert: the order gates are made."""
        return [(f"experts.{i}", e) for i, e in enumerate(self.experts)] + [
            (f"shared_experts.{i}", e) for i, e in enumerate(self.shared_experts)
        ]


def is_moe_yaml(data: Any) -> bool:
    """A mergekit-moe config rather than a mergekit-yaml one."""
    return (
        isinstance(data, dict)
        and "experts" in data
        and "base_model" in data
        and "merge_method" not in data
    )


def load_moe(path: str | Path) -> MoeRecipe | None:
    """The MoE recipe in a file, or None when it holds a plain merge recipe."""
    from mergetui.recipe.io import read_recipe_text, recipe_format

    return loads_moe(read_recipe_text(path), recipe_format(path), str(path))


def loads_moe(text: str, fmt: str, source: str | None = None) -> MoeRecipe | None:
    """`load_moe` of a text ("toml" or "yaml")."""
    if fmt == "toml":
        from mergetui.recipe.toml_read import read_toml_data

        data, locations = read_toml_data(text, source)
        if "moe" not in data:
            return None
        others = [key for key in data if key != "moe"]
        if others:
            raise UserError(
                f"an MoE recipe holds only the [moe] table, not '{others[0]}'",
                where=f"{source or '<recipe>'}:{locations.get(others[0], 1)}",
                fix="put every key in [moe] or [[moe.experts]] (see docs/moe.md)",
            )
        table = data["moe"]
        if not isinstance(table, dict):
            raise UserError("'moe' must be a table", where=f"{source}:{locations.get('moe', 1)}")
        own = {k[4:]: v for k, v in locations.items() if k.startswith("moe.")}
        return _build(table, own, source, yaml=False)
    from mergetui.recipe.yaml_syntax import yaml_compose

    data, locations = yaml_compose(text, source)
    if not is_moe_yaml(data):
        return None
    return _build(data, locations, source, yaml=True)


def is_moe_text(text: str, fmt: str, source: str | None = None) -> bool:
    """Whether a recipe text is an MoE recipe by its keys (one that does not parse is not)."""
    try:
        if fmt == "toml":
            from mergetui.recipe.toml_read import read_toml_data

            return "moe" in read_toml_data(text, source)[0]
        from mergetui.recipe.yaml_syntax import yaml_compose

        return is_moe_yaml(yaml_compose(text, source)[0])
    except UserError:
        return False


# ----------------------------------------------------------------------------------------------
# The one builder


class _Reader:
    """Reads values of the data with their place; `yaml` says which key names the file uses."""

    def __init__(self, locations: dict[str, int], source: str | None, yaml: bool) -> None:
        self.locations = locations
        self.source = source or "<recipe>"
        self.yaml = yaml

    def name(self, key: str) -> str:
        """Our dotted key as the file spells it (for messages)."""
        if not self.yaml:
            return key
        back = {ours: theirs for theirs, ours in _YAML_KEYS.items()}
        return ".".join(back.get(part, part) for part in key.split("."))

    def where(self, key: str) -> str:
        parts = self.name(key).split(".")
        while parts:
            line = self.locations.get(".".join(parts))
            if line is not None:
                return f"{self.source}:{line}"
            parts.pop()
        return self.source

    def error(self, key: str, message: str, fix: str | None = None) -> UserError:
        return UserError(f"'{self.name(key)}' {message}", where=self.where(key), fix=fix)

    def table(self, data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        """The table's entries under our key names; unknown keys are located errors."""
        result = {}
        for raw, value in data.items():
            ours = _YAML_KEYS.get(raw, raw) if self.yaml else raw
            if ours not in allowed or (self.yaml and raw in _YAML_KEYS.values()):
                place = f"{key}.{raw}" if key else str(raw)
                shown = ", ".join(self.name(a) for a in allowed)
                raise UserError(
                    f"unknown key '{raw}'", where=self.where(place), fix=f"use one of: {shown}"
                )
            result[ours] = value
        return result

    def text(self, value: Any, key: str, *, required: bool = False) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return value

    def number(self, value: Any, key: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, "must be a number")
        if not math.isfinite(value):
            raise self.error(key, "must be a finite number")
        return float(value)

    def integer(self, value: Any, key: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "must be a whole number")
        return value

    def prompts(self, value: Any, key: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise self.error(key, "must be a list of prompt strings")
        return list(value)


def _build(
    data: dict[str, Any], locations: dict[str, int], source: str | None, *, yaml: bool
) -> MoeRecipe:
    """The MoeRecipe of either form's data, every shape checked with its place."""
    reader = _Reader(locations, source, yaml)
    table = reader.table(data, "", _MOE_KEYS)
    base = _source(reader, table.get("base"), "base")
    experts = _experts(reader, table.get("experts"), "experts")
    shared = _experts(reader, table.get("shared_experts"), "shared_experts", optional=True)
    gate_mode = table.get("gate_mode", "hidden")
    if gate_mode not in GATE_MODES:
        raise reader.error(
            "gate_mode",
            f"is {gate_mode!r}, not a gate mode",
            fix=f"use one of: {', '.join(GATE_MODES)}",
        )
    per_token = reader.integer(table.get("experts_per_token", 2), "experts_per_token")
    dtype = reader.text(table.get("dtype"), "dtype")
    if dtype is not None and ALIASES.get(dtype, dtype) not in MERGEKIT_NAMES[:3]:
        raise reader.error("dtype", f"is {dtype!r}", fix="use bfloat16, float16 or float32")
    architecture = reader.text(table.get("architecture"), "architecture")
    seed = reader.integer(table.get("seed"), "seed")
    recipe = MoeRecipe(
        base=str(base),
        experts=experts,
        shared_experts=shared,
        gate_mode=str(gate_mode),
        experts_per_token=int(per_token or 0),
        dtype=ALIASES.get(dtype, dtype) if dtype else None,
        architecture=architecture,
        output=reader.text(table.get("output"), "output"),
        seed=seed,
        source_path=source,
        locations={_ours(k, reader): v for k, v in locations.items()},
    )
    _check(recipe, reader)
    return recipe


def _ours(key: str, reader: _Reader) -> str:
    if not reader.yaml:
        return key
    return ".".join(_YAML_KEYS.get(part, part) for part in key.split("."))


def _source(reader: _Reader, value: Any, key: str) -> str:
    """A model: a folder or a Hub id, optionally `@revision` (mergekit's `path@revision`)."""
    from mergetui.recipe.yaml_import import split_reference

    source = str(reader.text(value, key, required=True))
    try:
        split_reference(source)
    except ValueError as exc:
        raise reader.error(key, str(exc), fix="write MODEL or MODEL@REVISION") from None
    return source


def _experts(reader: _Reader, value: Any, key: str, optional: bool = False) -> list[MoeExpert]:
    if value is None and optional:
        return []
    if not isinstance(value, list) or not value:
        raise reader.error(
            key,
            "must list at least one expert" if not optional else "must be a list of experts",
            fix="give each expert a source model and its prompts (see docs/moe.md)",
        )
    experts = []
    for index, item in enumerate(value):
        place = f"{key}.{index}"
        if not isinstance(item, dict):
            raise reader.error(place, "must be a table with a source model and its prompts")
        entry = reader.table(item, place, _EXPERT_KEYS)
        source = _source(reader, entry.get("source"), f"{place}.source")
        if "+" in source:
            raise reader.error(
                f"{place}.source",
                f"is {source!r}: an expert cannot carry a LoRA adapter here",
                fix="merge the adapter into a folder first (mergetui merge), then name that",
            )
        experts.append(
            MoeExpert(
                source=source,
                positive_prompts=reader.prompts(
                    entry.get("positive_prompts"), f"{place}.positive_prompts"
                ),
                negative_prompts=reader.prompts(
                    entry.get("negative_prompts"), f"{place}.negative_prompts"
                ),
                noise_scale=reader.number(entry.get("noise_scale"), f"{place}.noise_scale"),
                residual_scale=reader.number(
                    entry.get("residual_scale"), f"{place}.residual_scale"
                ),
                where=reader.where(place),
            )
        )
    return experts


def _check(recipe: MoeRecipe, reader: _Reader) -> None:
    """What mergekit-moe's `is_bad_config` and its output selection refuse, before any checkpoint
    is opened (each a located error)."""
    count = len(recipe.experts)
    if not 1 <= recipe.experts_per_token <= count:
        raise reader.error(
            "experts_per_token",
            f"is {recipe.experts_per_token}, and there are {count} experts",
            fix=f"use a number from 1 to {count}",
        )
    if recipe.architecture is not None:
        key = recipe.architecture.lower()
        if not any(name.lower().startswith(key) for name in OUTPUT_ARCHITECTURES.values()):
            raise reader.error(
                "architecture",
                f"is {recipe.architecture!r}: mergetui writes Mixtral and Qwen MoE outputs",
                fix="use mixtral or qwen (or leave it out to pick from the experts)",
            )
    if len(recipe.shared_experts) > 1:
        raise reader.error(
            "shared_experts.1",
            "is a second shared expert; Qwen2-MoE has one",
            fix="keep one shared expert",
        )
    if recipe.gate_mode in RANDOM_GATE_MODES:
        return
    for key, expert in recipe.all_experts():
        if not expert.positive_prompts:
            raise reader.error(
                f"{key}.positive_prompts",
                f"is missing: gate mode {recipe.gate_mode!r} routes by prompts",
                fix='give this expert positive_prompts (or use gate_mode = "random")',
            )
    first = (recipe.experts[0].positive_prompts, recipe.experts[0].negative_prompts)
    if count > 1 and all((e.positive_prompts, e.negative_prompts) == first for e in recipe.experts):
        raise reader.error(
            "experts",
            "all have the same prompts: the gates could not tell the experts apart",
            fix="give each expert prompts of what should be routed to it",
        )


# ----------------------------------------------------------------------------------------------
# Writing


def moe_data(recipe: MoeRecipe, *, yaml: bool) -> dict[str, Any]:
    """The recipe as plain data in mergekit-moe's key names (`yaml`) or ours (the `[moe]` table)."""

    def expert(e: MoeExpert) -> dict[str, Any]:
        out: dict[str, Any] = {"source_model" if yaml else "source": e.source}
        if e.positive_prompts:
            out["positive_prompts"] = list(e.positive_prompts)
        if e.negative_prompts:
            out["negative_prompts"] = list(e.negative_prompts)
        if e.noise_scale is not None:
            out["noise_scale"] = e.noise_scale
        if e.residual_scale is not None:
            out["residual_scale"] = e.residual_scale
        return out

    data: dict[str, Any] = {"base_model" if yaml else "base": recipe.base}
    data["gate_mode"] = recipe.gate_mode
    data["experts_per_token"] = recipe.experts_per_token
    for key in ("dtype", "architecture") + (() if yaml else ("output", "seed")):
        value = getattr(recipe, key)
        if value is not None:
            data[key] = value
    data["experts"] = [expert(e) for e in recipe.experts]
    if recipe.shared_experts:
        data["shared_experts"] = [expert(e) for e in recipe.shared_experts]
    return data


def dumps_moe(recipe: MoeRecipe, fmt: str) -> str:
    """The recipe as mergetui TOML ("toml") or a mergekit-moe config ("yaml"); a YAML loses only
    `output` and `seed`, which mergekit-moe takes on its command line."""
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(moe_data(recipe, yaml=True), sort_keys=False, allow_unicode=True)
    import tomlkit

    return tomlkit.dumps({"moe": moe_data(recipe, yaml=False)})


def rebase_moe_paths(
    recipe: MoeRecipe, from_folder: Path, to_folder: Path
) -> list[tuple[str, str, str]]:
    """Rewrite the recipe's relative local paths (models that exist, the output) so they point
    at the same places from `to_folder` (`mergetui convert`); Hub ids stay. Returns (what, old,
    new) for each change."""
    from mergetui.recipe.paths import local_model_path, recipe_path

    moved: list[tuple[str, str, str]] = []

    def rebase(what: str, value: str, *, must_exist: bool) -> str:
        if Path(os.path.expanduser(value)).is_absolute():
            return value
        here = (
            local_model_path(value, from_folder) if must_exist else recipe_path(value, from_folder)
        )
        if must_exist and not here.is_dir():
            return value  # a Hub id
        new = os.path.relpath(here, Path(to_folder).resolve())
        if new != value:
            moved.append((what, value, new))
        return new

    recipe.base = rebase("base", recipe.base, must_exist=True)
    for key, expert in recipe.all_experts():
        expert.source = rebase(key, expert.source, must_exist=True)
    if recipe.output:
        recipe.output = rebase("output", recipe.output, must_exist=False)
    return moved

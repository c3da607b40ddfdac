"""The one recipe builder: TOML-shaped data (what tomllib gives for a recipe file) to a `Recipe`.

Every shape check lives here once: known keys, tables, strings, whole numbers, layer ranges, parameter
values, slices and the tokenizer block. The TOML reader hands its data over as it is; the mergekit
YAML importer first translates a config into the same shape (model references become names,
`layer_range` becomes `layers`) and records where each translated key came from, so an error still
names the YAML key and line that was written (`models.0.parameters.weight`, `c.yaml:5`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe import limits
from mergetui.recipe.model import (
    Conditional,
    ModelEntry,
    Parameters,
    ParamValue,
    Recipe,
    Slice,
    SliceSource,
)

# Model names are TOML keys, grid column titles and error subjects: keep them plain.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# `tokenizer_source` words that are not model names (mergekit's meaning).
TOKENIZER_KEYWORDS = ("base", "union")

TOP_KEYS = ("description", "merge", "models", "parameters", "slices", "search")
MERGE_KEYS = (
    "method",
    "base",
    "dtype",
    "out_dtype",
    "output",
    "seed",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
)
_MODEL_KEYS = ("source", "revision", "lora", "listed", "parameters")
_SLICE_KEYS = ("sources", "base", "parameters")
_SOURCE_KEYS = ("model", "layers", "parameters")
_CONDITIONAL_KEYS = ("filter", "value")
TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
TOKEN_KEYS = ("source", "force")
TOKEN_SOURCE_KEYS = ("kind", "model", "token_id", "token")

KeyPath = tuple[Any, ...]


def dotted(path: KeyPath) -> str:
    """The dotted form of a key path (`("models", "b", "parameters")` -> `models.b.parameters`)."""
    return ".".join(str(part) for part in path)


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """A "did you mean" hint from the closest valid word, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


class RecipeReader:
    """Raises errors that say where: file and line when known, else the dotted key.

    `origins` maps a recipe key path to the key path the file wrote it under (the YAML importer's
    translation); the longest matching prefix wins, and a path with none is its own spelling.
    """

    def __init__(
        self,
        source: str | None,
        locations: dict[str, int],
        origins: Mapping[KeyPath, KeyPath] | None = None,
    ) -> None:
        self.source = source
        self.locations = locations
        self.origins = origins or {}

    def spelled(self, path: KeyPath) -> KeyPath:
        """`path` as the file wrote it."""
        for end in range(len(path), 0, -1):
            origin = self.origins.get(path[:end])
            if origin is not None:
                return origin + path[end:]
        return path

    def name(self, path: KeyPath) -> str:
        """The dotted key an error message names: the file's spelling of `path`."""
        return dotted(self.spelled(path))

    def line(self, path: KeyPath) -> int | None:
        parts = list(self.spelled(path))
        while parts:
            key = dotted(parts)
            if key in self.locations:
                return self.locations[key]
            parts.pop()
        return None

    def where(self, path: KeyPath) -> str:
        line = self.line(path)
        name = self.source or "<recipe>"
        return f"{name}:{line}" if line is not None else name

    def fail(self, path: KeyPath, message: str, fix: str | None = None) -> UserError:
        return UserError(message, where=self.where(path), fix=fix)

    def check_keys(
        self, table: Mapping[str, Any], allowed: tuple[str, ...], path: KeyPath, what: str
    ) -> None:
        for key in table:
            if key not in allowed:
                fix = did_you_mean(str(key), allowed) or f"{what} takes: {', '.join(allowed)}"
                raise self.fail(path + (key,), f"unknown key '{self.name(path + (key,))}'", fix)

    def table(self, value: Any, path: KeyPath, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"'{self.name(path)}' must be a table ({what})")
        return self.sized(value, path)

    def sized(self, value: Any, path: KeyPath) -> Any:
        """`value` itself, unless it is a list or table of more than limits.MAX_ENTRIES entries."""
        if isinstance(value, (list, dict)) and len(value) > limits.MAX_ENTRIES:
            message, fix = limits.entries_error(f"'{self.name(path)}'", len(value))
            raise self.fail(path, message, fix)
        return value

    def string(self, value: Any, path: KeyPath, *, required: bool = False) -> str | None:
        if value is None:
            if required:
                raise self.fail(path, f"'{self.name(path)}' is missing", f"set {self.name(path)}")
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"'{self.name(path)}' must be a string, got {value!r}")
        return value

    def integer(self, value: Any, path: KeyPath) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"'{self.name(path)}' must be a whole number, got {value!r}")
        return value

    def boolean(self, value: Any, path: KeyPath) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"'{self.name(path)}' must be true or false")
        return value

    def layer_range(self, value: Any, path: KeyPath) -> tuple[int, int]:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise self.fail(
                path,
                f"'{self.name(path)}' must be two whole numbers [start, end), got {value!r}",
                "write it like [0, 16]: layers 0 to 15",
            )
        return (value[0], value[1])

    # Parameter values -------------------------------------------------------------------------

    def parameters(self, raw: Any, path: KeyPath) -> Parameters:
        if raw is None:
            return {}
        table = self.table(raw, path, "parameter name = value")
        return {str(name): self.param_value(value, path + (name,)) for name, value in table.items()}

    def param_value(self, raw: Any, path: KeyPath) -> ParamValue:
        if is_scalar(raw):
            return raw
        if isinstance(raw, dict):
            return self.conditional(raw, path)
        if isinstance(raw, list):
            self.sized(raw, path)
            if all(is_scalar(item) for item in raw):
                return list(raw)
            if all(isinstance(item, dict) for item in raw):
                return [self.conditional(item, path + (i,)) for i, item in enumerate(raw)]
            raise self.fail(
                path,
                f"'{self.name(path)}' mixes plain values and {{filter, value}} entries",
                "use either a list of numbers (a gradient) or a list of {filter, value} entries",
            )
        raise self.fail(
            path,
            f"'{self.name(path)}' has an unsupported value {raw!r}",
            "use a number, true/false, a list of numbers, or {filter, value} entries",
        )

    def conditional(self, raw: dict[str, Any], path: KeyPath) -> Conditional:
        self.check_keys(raw, _CONDITIONAL_KEYS, path, "a {filter, value} entry")
        if "value" not in raw:
            raise self.fail(
                path, f"'{self.name(path)}' has a filter but no value", "add value = <number>"
            )
        value = self.sized(raw["value"], path + ("value",))
        if not (is_scalar(value) or (isinstance(value, list) and all(map(is_scalar, value)))):
            raise self.fail(
                path + ("value",),
                f"'{self.name(path + ('value',))}' must be a number or a list of numbers, "
                f"got {value!r}",
            )
        filter_ = raw.get("filter")
        if filter_ is not None and not isinstance(filter_, str):
            raise self.fail(
                path + ("filter",),
                f"'{self.name(path + ('filter',))}' must be a string (part of a tensor name)",
            )
        return Conditional(value=list(value) if isinstance(value, list) else value, filter=filter_)


# ----------------------------------------------------------------------------------------------
# The builder


def build_recipe(data: dict[str, Any], reader: RecipeReader) -> Recipe:
    """The `Recipe` that TOML-shaped `data` describes, or a located UserError for the first
    thing in it that is not a recipe. `Recipe.locations` and `source_path` are the caller's."""
    reader.check_keys(data, TOP_KEYS, (), "a recipe")
    if "merge" not in data:
        raise reader.fail((), "the recipe has no [merge] table", 'add [merge] with method = "..."')
    merge = reader.table(data["merge"], ("merge",), "method, base, dtype, ...")
    reader.check_keys(merge, MERGE_KEYS, ("merge",), "[merge]")
    method = reader.string(merge.get("method"), ("merge", "method"), required=True)
    assert method is not None
    raw_models = reader.table(data.get("models", {}), ("models",), "one [models.<name>] per model")
    models = {name: _model(name, raw, reader) for name, raw in raw_models.items()}

    slices: list[Slice] | None = None
    if "slices" in data:
        raw_slices = reader.sized(data["slices"], ("slices",))
        if not isinstance(raw_slices, list):
            raise reader.fail(("slices",), "'slices' must be an array of tables ([[slices]])")
        slices = [_slice(raw, ("slices", i), reader) for i, raw in enumerate(raw_slices)]

    tokenizer = merge.get("tokenizer")
    if tokenizer is not None:
        tokenizer = _tokenizer_block(tokenizer, ("merge", "tokenizer"), reader)

    description = reader.string(data.get("description"), ("description",))
    search = None
    if "search" in data:  # its keys are `mergetui.search.spec`'s to check
        search = reader.table(data["search"], ("search",), "the search settings: docs/evolve.md")

    def merge_string(key: str) -> str | None:
        return reader.string(merge.get(key), ("merge", key))

    return Recipe(
        method=method,
        models=models,
        base=merge_string("base"),
        output=merge_string("output"),
        dtype=merge_string("dtype"),
        out_dtype=merge_string("out_dtype"),
        tokenizer_source=merge_string("tokenizer_source"),
        tokenizer=tokenizer,
        chat_template=merge_string("chat_template"),
        seed=reader.integer(merge.get("seed"), ("merge", "seed")),
        parameters=reader.parameters(data.get("parameters"), ("parameters",)),
        slices=slices,
        description=description,
        search=search,
    )


def _model(name: str, raw: Any, reader: RecipeReader) -> ModelEntry:
    path = ("models", name)
    if not MODEL_NAME_RE.match(name):
        raise reader.fail(
            path,
            f"model name '{name}' must start with a letter or digit and use only letters, "
            "digits, '.', '_' and '-'",
        )
    entry = reader.table(raw, path, "source, revision, lora, parameters")
    reader.check_keys(entry, _MODEL_KEYS, path, f"[models.{name}]")
    source = reader.string(entry.get("source"), path + ("source",), required=True)
    assert source is not None
    listed = reader.boolean(entry.get("listed", True), path + ("listed",))
    return ModelEntry(
        name=name,
        source=source,
        revision=reader.string(entry.get("revision"), path + ("revision",)),
        parameters=reader.parameters(entry.get("parameters"), path + ("parameters",)),
        listed=listed,
        lora=_lora(entry.get("lora"), path + ("lora",), reader),
    )


def _lora(raw: Any, path: KeyPath, reader: RecipeReader) -> str | None:
    """A model's adapter: a folder or Hub id (`@revision` allowed), never empty nor `+`-joined."""
    lora = reader.string(raw, path)
    if lora is None:
        return None
    if not lora.strip() or "+" in lora or lora.count("@") > 1:
        raise reader.fail(
            path,
            f"lora must name one adapter (a folder or a Hub id, optionally @revision), not {lora!r}",
            'write lora = "org/adapter" or lora = "adapters/mine"',
        )
    return lora


def _slice(raw: Any, path: KeyPath, reader: RecipeReader) -> Slice:
    table = reader.table(raw, path, "sources, base, parameters")
    reader.check_keys(table, _SLICE_KEYS, path, "a slice")
    raw_sources = reader.sized(table.get("sources"), path + ("sources",))
    if not isinstance(raw_sources, list):
        raise reader.fail(
            path,
            f"'{reader.name(path)}' needs sources = [...]",
            'add sources = [{ model = "name", layers = [0, 8] }]',
        )
    sources = []
    for j, raw_source in enumerate(raw_sources):
        spath = path + ("sources", j)
        source = reader.table(raw_source, spath, "model, layers, parameters")
        reader.check_keys(source, _SOURCE_KEYS, spath, "a slice source")
        model = reader.string(source.get("model"), spath + ("model",), required=True)
        if "layers" not in source:
            raise reader.fail(
                spath, f"'{reader.name(spath)}' has no layers", "add layers = [start, end]"
            )
        assert model is not None
        sources.append(
            SliceSource(
                model=model,
                layer_range=reader.layer_range(source["layers"], spath + ("layers",)),
                parameters=reader.parameters(source.get("parameters"), spath + ("parameters",)),
            )
        )
    return Slice(
        sources=sources,
        parameters=reader.parameters(table.get("parameters"), path + ("parameters",)),
        base=reader.string(table.get("base"), path + ("base",)),
    )


def _tokenizer_block(raw: Any, path: KeyPath, reader: RecipeReader) -> dict[str, Any]:
    """mergekit's `tokenizer:` block, checked for shape and kept as plain data (None dropped)."""
    block = reader.table(raw, path, "source, tokens, pad_to_multiple_of")
    reader.check_keys(block, TOKENIZER_KEYS, path, "the tokenizer block")
    result: dict[str, Any] = {}
    if block.get("source") is not None:
        result["source"] = reader.string(block["source"], path + ("source",))
    if block.get("pad_to_multiple_of") is not None:
        result["pad_to_multiple_of"] = reader.integer(
            block["pad_to_multiple_of"], path + ("pad_to_multiple_of",)
        )
    if block.get("tokens") is not None:
        tokens = reader.table(block["tokens"], path + ("tokens",), "token = { source, force }")
        result["tokens"] = {
            str(token): _token(raw_token, path + ("tokens", token), reader)
            for token, raw_token in tokens.items()
        }
    return result


def _token(raw: Any, path: KeyPath, reader: RecipeReader) -> dict[str, Any]:
    entry = reader.table(raw, path, "source, force")
    reader.check_keys(entry, TOKEN_KEYS, path, "a token entry")
    kept: dict[str, Any] = {}
    source = entry.get("source")
    if isinstance(source, dict):
        reader.check_keys(source, TOKEN_SOURCE_KEYS, path + ("source",), "a token source")
        kept["source"] = {k: v for k, v in source.items() if v is not None}
    elif source is not None:
        kept["source"] = reader.string(source, path + ("source",))
    if entry.get("force") is not None:
        kept["force"] = reader.boolean(entry["force"], path + ("force",))
    return kept

"""Reading and writing recipes: mergetui's TOML, and mergekit's YAML in both directions.

TOML is the native form (see docs/recipe-format.md); mergekit YAML is what people already have,
copied from model cards, so it is imported key for key and exported whenever it can say what the
recipe says. Both readers record the line of every key (`Recipe.locations`) so that validation can
point at `recipe.toml:12` rather than at a dotted path alone.

mergekit YAML cannot name models or hold `seed`, `output` and `description`: the exporter keeps them
in one `# mergetui: {...}` JSON comment, which mergekit ignores and the importer reads back, so
TOML -> YAML -> TOML gives the same recipe.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import tempfile
from bisect import bisect_right
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mergetui import bounded_yaml
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

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOML_SUFFIXES = (".toml",)
YAML_SUFFIXES = (".yaml", ".yml")

# Model names are TOML keys, grid column titles and error subjects: keep them plain.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# `tokenizer_source` words that are not model names (mergekit's meaning).
TOKENIZER_KEYWORDS = ("base", "union")

_TOP_KEYS = ("description", "merge", "models", "parameters", "slices")
_MERGE_KEYS = (
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
_MODEL_KEYS = ("source", "revision", "listed", "parameters")
_SLICE_KEYS = ("sources", "base", "parameters")
_SOURCE_KEYS = ("model", "layers", "parameters")
_CONDITIONAL_KEYS = ("filter", "value")
_TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
_TOKEN_KEYS = ("source", "force")
_TOKEN_SOURCE_KEYS = ("kind", "model", "token_id", "token")

_YAML_TOP_KEYS = (
    "models",
    "slices",
    "merge_method",
    "base_model",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "parameters",
)
_YAML_UNSUPPORTED = {
    "modules": (
        "per-module merges (`modules:`) are not supported",
        "merge single-module (text) models with `models:` or `slices:`",
    ),
    "residual_weight": (
        "`residual_weight` is not supported",
        "remove it; mergekit 0.1.5 does not use it either",
    ),
}
_YAML_MODEL_KEYS = ("model", "parameters")
_YAML_SLICE_KEYS = ("sources", "base_model", "parameters", "residual_weight")
_YAML_SOURCE_KEYS = ("model", "layer_range", "parameters")

_META_RE = re.compile(r"^#\s*mergetui:\s*(.*?)\s*$", re.MULTILINE)

Path_ = tuple[Any, ...]


# ----------------------------------------------------------------------------------------------
# Shared helpers


def dotted(path: Path_) -> str:
    """The dotted form of a key path (`("models", "b", "parameters")` -> `models.b.parameters`)."""
    return ".".join(str(part) for part in path)


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """A "did you mean" hint from the closest valid word, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class _Reader:
    """Raises errors that say where: file and line when known, else the dotted key."""

    def __init__(self, source: str | None, locations: dict[str, int]) -> None:
        self.source = source
        self.locations = locations

    def line(self, path: Path_) -> int | None:
        parts = list(path)
        while parts:
            key = dotted(parts)
            if key in self.locations:
                return self.locations[key]
            parts.pop()
        return None

    def where(self, path: Path_) -> str:
        line = self.line(path)
        name = self.source or "<recipe>"
        return f"{name}:{line}" if line is not None else name

    def fail(self, path: Path_, message: str, fix: str | None = None) -> UserError:
        return UserError(message, where=self.where(path), fix=fix)

    def check_keys(
        self, table: Mapping[str, Any], allowed: tuple[str, ...], path: Path_, what: str
    ) -> None:
        for key in table:
            if key not in allowed:
                fix = did_you_mean(str(key), allowed) or f"{what} takes: {', '.join(allowed)}"
                raise self.fail(path + (key,), f"unknown key '{dotted(path + (key,))}'", fix)

    def table(self, value: Any, path: Path_, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"'{dotted(path)}' must be a table ({what})")
        return self.sized(value, path)

    def sized(self, value: Any, path: Path_) -> Any:
        """`value` itself, unless it is a list or table of more than limits.MAX_ENTRIES entries."""
        if isinstance(value, (list, dict)) and len(value) > limits.MAX_ENTRIES:
            message, fix = limits.entries_error(f"'{dotted(path)}'", len(value))
            raise self.fail(path, message, fix)
        return value

    def string(self, value: Any, path: Path_, *, required: bool = False) -> str | None:
        if value is None:
            if required:
                raise self.fail(path, f"'{dotted(path)}' is missing", f"set {dotted(path)}")
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"'{dotted(path)}' must be a string, got {value!r}")
        return value

    def integer(self, value: Any, path: Path_) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"'{dotted(path)}' must be a whole number, got {value!r}")
        return value

    def layer_range(self, value: Any, path: Path_) -> tuple[int, int]:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise self.fail(
                path,
                f"'{dotted(path)}' must be two whole numbers [start, end), got {value!r}",
                "write it like [0, 16]: layers 0 to 15",
            )
        return (value[0], value[1])

    # Parameter values -------------------------------------------------------------------------

    def parameters(self, raw: Any, path: Path_) -> Parameters:
        if raw is None:
            return {}
        table = self.table(raw, path, "parameter name = value")
        return {str(name): self.param_value(value, path + (name,)) for name, value in table.items()}

    def param_value(self, raw: Any, path: Path_) -> ParamValue:
        if _is_scalar(raw):
            return raw
        if isinstance(raw, dict):
            return self.conditional(raw, path)
        if isinstance(raw, list):
            self.sized(raw, path)
            if all(_is_scalar(item) for item in raw):
                return list(raw)
            if all(isinstance(item, dict) for item in raw):
                return [self.conditional(item, path + (i,)) for i, item in enumerate(raw)]
            raise self.fail(
                path,
                f"'{dotted(path)}' mixes plain values and {{filter, value}} entries",
                "use either a list of numbers (a gradient) or a list of {filter, value} entries",
            )
        raise self.fail(
            path,
            f"'{dotted(path)}' has an unsupported value {raw!r}",
            "use a number, true/false, a list of numbers, or {filter, value} entries",
        )

    def conditional(self, raw: dict[str, Any], path: Path_) -> Conditional:
        self.check_keys(raw, _CONDITIONAL_KEYS, path, "a {filter, value} entry")
        if "value" not in raw:
            raise self.fail(
                path, f"'{dotted(path)}' has a filter but no value", "add value = <number>"
            )
        value = self.sized(raw["value"], path + ("value",))
        if not (_is_scalar(value) or (isinstance(value, list) and all(map(_is_scalar, value)))):
            raise self.fail(
                path + ("value",),
                f"'{dotted(path + ('value',))}' must be a number or a list of numbers, got {value!r}",
            )
        filter_ = raw.get("filter")
        if filter_ is not None and not isinstance(filter_, str):
            raise self.fail(
                path + ("filter",),
                f"'{dotted(path + ('filter',))}' must be a string (part of a tensor name)",
            )
        return Conditional(value=list(value) if isinstance(value, list) else value, filter=filter_)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _line_finder(text: str) -> Callable[[int], int]:
    newlines = [i for i, char in enumerate(text) if char == "\n"]
    return lambda offset: bisect_right(newlines, offset - 1) + 1


# ----------------------------------------------------------------------------------------------
# TOML: where each key sits


class _TomlScanner:
    """Finds the line of every key and array element of a TOML document tomllib has accepted.

    tomllib gives values but no positions; this walks the text once with just enough of TOML's
    grammar (headers, dotted and quoted keys, strings, arrays, inline tables) to know where each
    dotted path starts.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line_at = _line_finder(text)
        self.found: dict[str, int] = {}
        self.array_tables: dict[Path_, int] = {}

    def run(self) -> dict[str, int]:
        table: Path_ = ()
        while True:
            self.skip_space(newlines=True)
            if self.pos >= len(self.text):
                return self.found
            start = self.pos
            if self.text.startswith("[[", self.pos):
                self.pos += 2
                keys = self.key()
                self.pos = self.text.index("]]", self.pos) + 2
                parent = self.resolve(keys[:-1])
                array = parent + (keys[-1],)
                index = self.array_tables.get(array, 0)
                self.array_tables[array] = index + 1
                table = array + (index,)
                self.record(array, start)
                self.record(table, start)
            elif self.text[self.pos] == "[":
                self.pos += 1
                keys = self.key()
                self.pos = self.text.index("]", self.pos) + 1
                table = self.resolve(keys)
                self.record(table, start)
            else:
                keys = self.key()
                self.skip_space()
                self.pos += 1  # "="
                self.skip_space()
                path = table + keys
                self.record(path, start)
                self.value(path)

    def resolve(self, keys: Path_) -> Path_:
        path: Path_ = ()
        for key in keys:
            path += (key,)
            if path in self.array_tables:
                path += (self.array_tables[path] - 1,)
        return path

    def record(self, path: Path_, offset: int) -> None:
        line = self.line_at(offset)
        for end in range(1, len(path) + 1):
            self.found.setdefault(dotted(path[:end]), line)

    def skip_space(self, newlines: bool = False) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def key(self) -> Path_:
        parts: list[str] = []
        while True:
            self.skip_space()
            char = self.text[self.pos]
            if char in "\"'":
                start = self.pos
                self.string()
                raw = self.text[start : self.pos]
                parts.append(next(iter(tomllib.loads(f"{raw} = 0"))))
            else:
                match = re.compile(r"[A-Za-z0-9_-]+").match(self.text, self.pos)
                if match is None:
                    raise ValueError(f"no key at offset {self.pos}")
                parts.append(match.group(0))
                self.pos = match.end()
            self.skip_space()
            if self.pos < len(self.text) and self.text[self.pos] == ".":
                self.pos += 1
                continue
            return tuple(parts)

    def string(self) -> None:
        text = self.text
        quote = text[self.pos]
        if text.startswith(quote * 3, self.pos):
            end = text.index(quote * 3, self.pos + 3)
            if quote == '"':
                while text[end - 1] == "\\" and not _escaped_backslash(text, end - 1):
                    end = text.index(quote * 3, end + 1)
            self.pos = end + 3
            while self.pos < len(text) and text[self.pos] == quote:  # up to two quotes may close
                self.pos += 1
            return
        self.pos += 1
        while text[self.pos] != quote:
            if quote == '"' and text[self.pos] == "\\":
                self.pos += 1
            self.pos += 1
        self.pos += 1

    def value(self, path: Path_) -> None:
        char = self.text[self.pos]
        if char in "\"'":
            self.string()
        elif char == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip_space(newlines=True)
                if self.text[self.pos] == "]":
                    self.pos += 1
                    return
                self.record(path + (index,), self.pos)
                self.value(path + (index,))
                self.skip_space(newlines=True)
                if self.text[self.pos] == ",":
                    self.pos += 1
                    index += 1
        elif char == "{":
            self.pos += 1
            while True:
                self.skip_space()
                if self.text[self.pos] == "}":
                    self.pos += 1
                    return
                start = self.pos
                keys = self.key()
                self.skip_space()
                self.pos += 1  # "="
                self.skip_space()
                self.record(path + keys, start)
                self.value(path + keys)
                self.skip_space()
                if self.text[self.pos] == ",":
                    self.pos += 1
        else:
            match = re.compile(r"[^,\]}\n#]+").match(self.text, self.pos)
            if match is None:
                raise ValueError(f"no value at offset {self.pos}")
            self.pos = match.end()


def _escaped_backslash(text: str, index: int) -> bool:
    """Whether the backslash at `index` is itself escaped (preceded by an odd run of backslashes)."""
    run = 0
    while index - 1 - run >= 0 and text[index - 1 - run] == "\\":
        run += 1
    return run % 2 == 1


def toml_locations(text: str) -> dict[str, int]:
    """Line of every dotted key path in a valid TOML document (best effort: never raises)."""
    scanner = _TomlScanner(text)
    try:
        return scanner.run()
    except (ValueError, IndexError, AssertionError, tomllib.TOMLDecodeError):
        return scanner.found


# ----------------------------------------------------------------------------------------------
# TOML: reading


def loads_toml(text: str, source: str | None = None) -> Recipe:
    """A recipe from mergetui TOML. `source` (the file name) goes into error messages."""
    limits.check_text_size(text, source)
    try:
        limits.check_toml_text(text)
        data = tomllib.loads(text)
    except bounded_yaml.LimitExceeded as exc:
        raise exc.located(source) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = source or "<recipe>"
        if match:
            where = f"{where}:{match.group(1)}"
            message = message[: match.start()].strip()
        raise UserError(
            f"not valid TOML: {message}", where=where, fix="fix the syntax at that line"
        ) from None
    except ValueError as exc:  # what the scan above missed (tomllib's int() limits)
        raise UserError(f"not valid TOML: {exc}", where=source or "<recipe>") from None
    reader = _Reader(source, toml_locations(text))
    recipe = _recipe_from_toml_data(data, reader)
    recipe.locations = reader.locations
    recipe.source_path = source
    return recipe


def _recipe_from_toml_data(data: dict[str, Any], reader: _Reader) -> Recipe:
    reader.check_keys(data, _TOP_KEYS, (), "a recipe")
    if "merge" not in data:
        raise reader.fail((), "the recipe has no [merge] table", 'add [merge] with method = "..."')
    merge = reader.table(data["merge"], ("merge",), "method, base, dtype, ...")
    reader.check_keys(merge, _MERGE_KEYS, ("merge",), "[merge]")
    method = reader.string(merge.get("method"), ("merge", "method"), required=True)
    assert method is not None

    models: dict[str, ModelEntry] = {}
    raw_models = reader.table(data.get("models", {}), ("models",), "one [models.<name>] per model")
    for name, raw in raw_models.items():
        path = ("models", name)
        if not MODEL_NAME_RE.match(name):
            raise reader.fail(
                path,
                f"model name '{name}' must start with a letter or digit and use only letters, "
                "digits, '.', '_' and '-'",
            )
        entry = reader.table(raw, path, "source, revision, parameters")
        reader.check_keys(entry, _MODEL_KEYS, path, f"[models.{name}]")
        source = reader.string(entry.get("source"), path + ("source",), required=True)
        assert source is not None
        listed = entry.get("listed", True)
        if not isinstance(listed, bool):
            raise reader.fail(path + ("listed",), f"'{dotted(path)}.listed' must be true or false")
        models[name] = ModelEntry(
            name=name,
            source=source,
            revision=reader.string(entry.get("revision"), path + ("revision",)),
            parameters=reader.parameters(entry.get("parameters"), path + ("parameters",)),
            listed=listed,
        )

    slices: list[Slice] | None = None
    if "slices" in data:
        raw_slices = reader.sized(data["slices"], ("slices",))
        if not isinstance(raw_slices, list):
            raise reader.fail(("slices",), "'slices' must be an array of tables ([[slices]])")
        slices = [_toml_slice(raw, ("slices", i), reader) for i, raw in enumerate(raw_slices)]

    tokenizer = merge.get("tokenizer")
    if tokenizer is not None:
        tokenizer = _tokenizer_block(tokenizer, ("merge", "tokenizer"), reader)

    description = reader.string(data.get("description"), ("description",))
    return Recipe(
        method=method,
        models=models,
        base=reader.string(merge.get("base"), ("merge", "base")),
        output=reader.string(merge.get("output"), ("merge", "output")),
        dtype=reader.string(merge.get("dtype"), ("merge", "dtype")),
        out_dtype=reader.string(merge.get("out_dtype"), ("merge", "out_dtype")),
        tokenizer_source=reader.string(
            merge.get("tokenizer_source"), ("merge", "tokenizer_source")
        ),
        tokenizer=tokenizer,
        chat_template=reader.string(merge.get("chat_template"), ("merge", "chat_template")),
        seed=reader.integer(merge.get("seed"), ("merge", "seed")),
        parameters=reader.parameters(data.get("parameters"), ("parameters",)),
        slices=slices,
        description=description,
    )


def _toml_slice(raw: Any, path: Path_, reader: _Reader) -> Slice:
    table = reader.table(raw, path, "sources, base, parameters")
    reader.check_keys(table, _SLICE_KEYS, path, "a slice")
    raw_sources = reader.sized(table.get("sources"), path + ("sources",))
    if not isinstance(raw_sources, list):
        raise reader.fail(
            path,
            f"'{dotted(path)}' needs sources = [...]",
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
                spath, f"'{dotted(spath)}' has no layers", "add layers = [start, end]"
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


def _tokenizer_block(raw: Any, path: Path_, reader: _Reader) -> dict[str, Any]:
    """mergekit's `tokenizer:` block, checked for shape and kept as plain data (None dropped)."""
    block = reader.table(raw, path, "source, tokens, pad_to_multiple_of")
    reader.check_keys(block, _TOKENIZER_KEYS, path, "the tokenizer block")
    result: dict[str, Any] = {}
    if block.get("source") is not None:
        result["source"] = reader.string(block["source"], path + ("source",))
    if block.get("pad_to_multiple_of") is not None:
        result["pad_to_multiple_of"] = reader.integer(
            block["pad_to_multiple_of"], path + ("pad_to_multiple_of",)
        )
    if block.get("tokens") is not None:
        tokens = reader.table(block["tokens"], path + ("tokens",), "token = { source, force }")
        result["tokens"] = {}
        for token, raw_token in tokens.items():
            tpath = path + ("tokens", token)
            entry = reader.table(raw_token, tpath, "source, force")
            reader.check_keys(entry, _TOKEN_KEYS, tpath, "a token entry")
            kept: dict[str, Any] = {}
            source = entry.get("source")
            if isinstance(source, dict):
                reader.check_keys(source, _TOKEN_SOURCE_KEYS, tpath + ("source",), "a token source")
                kept["source"] = {k: v for k, v in source.items() if v is not None}
            elif source is not None:
                kept["source"] = reader.string(source, tpath + ("source",))
            if entry.get("force") is not None:
                if not isinstance(entry["force"], bool):
                    raise reader.fail(
                        tpath + ("force",), f"'{dotted(tpath)}.force' must be true or false"
                    )
                kept["force"] = entry["force"]
            result["tokens"][token] = kept
    return result


# ----------------------------------------------------------------------------------------------
# TOML: writing


_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Conditional):
        items = [] if value.filter is None else [f"filter = {_toml_string(value.filter)}"]
        items.append(f"value = {_toml_value(value.value, path)}")
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item, path) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v, path)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise UserError(f"cannot write {value!r} in TOML", where=path)


def _toml_assignment(key: str, value: Any, path: str) -> list[str]:
    """`key = value`, spreading long arrays and lists of {filter, value} entries over lines."""
    head = f"{_toml_key(key)} = "
    one_line = head + _toml_value(value, path)
    is_list = isinstance(value, (list, tuple))
    if not is_list or (len(one_line) <= 100 and not any(isinstance(v, Conditional) for v in value)):
        return [one_line]
    if any(isinstance(v, Conditional) for v in value):
        return [head + "["] + [f"  {_toml_value(v, path)}," for v in value] + ["]"]
    lines = [head + "["]
    row: list[str] = []
    for item in value:
        text = _toml_value(item, path)
        if row and len("  " + ", ".join(row + [text]) + ",") > 100:
            lines.append("  " + ", ".join(row) + ",")
            row = []
        row.append(text)
    if row:
        lines.append("  " + ", ".join(row) + ",")
    return lines + ["]"]


def _toml_table(header: str, table: Mapping[str, Any], lines: list[str]) -> None:
    """A [header] table: plain keys first, then its sub-tables (nested dicts) as their own headers."""
    plain = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    if plain or not nested:
        lines.append("")
        lines.append(f"[{header}]")
        for key, value in plain.items():
            lines.extend(_toml_assignment(key, value, f"{header}.{key}"))
    for key, value in nested.items():
        _toml_table(f"{header}.{_toml_key(key)}", value, lines)


def dumps_toml(recipe: Recipe) -> str:
    """The recipe as mergetui TOML; the same recipe always gives the same text."""
    lines: list[str] = []
    if recipe.description is not None:
        lines.append(f"description = {_toml_string(recipe.description)}")
    merge = {
        "method": recipe.method,
        "base": recipe.base,
        "dtype": recipe.dtype,
        "out_dtype": recipe.out_dtype,
        "output": recipe.output,
        "seed": recipe.seed,
        "tokenizer_source": recipe.tokenizer_source,
        "chat_template": recipe.chat_template,
    }
    lines.append("")
    lines.append("[merge]")
    for key, value in merge.items():
        if value is not None:
            lines.extend(_toml_assignment(key, value, f"merge.{key}"))
    if recipe.tokenizer is not None:
        _toml_table("merge.tokenizer", recipe.tokenizer, lines)

    for name, entry in recipe.models.items():
        header = f"models.{_toml_key(name)}"
        lines.append("")
        lines.append(f"[{header}]")
        lines.append(f"source = {_toml_string(entry.source)}")
        if entry.revision is not None:
            lines.append(f"revision = {_toml_string(entry.revision)}")
        if not entry.listed:
            lines.append("listed = false")
        if entry.parameters:
            lines.append("")
            lines.append(f"[{header}.parameters]")
            for key, value in entry.parameters.items():
                lines.extend(_toml_assignment(key, value, f"{header}.parameters.{key}"))

    if recipe.parameters:
        lines.append("")
        lines.append("[parameters]")
        for key, value in recipe.parameters.items():
            lines.extend(_toml_assignment(key, value, f"parameters.{key}"))

    for index, slice_ in enumerate(recipe.slices or []):
        lines.append("")
        lines.append("[[slices]]")
        if slice_.base is not None:
            lines.append(f"base = {_toml_string(slice_.base)}")
        lines.append("sources = [")
        for source in slice_.sources:
            items = [
                f"model = {_toml_string(source.model)}",
                f"layers = [{source.layer_range[0]}, {source.layer_range[1]}]",
            ]
            if source.parameters:
                items.append(
                    f"parameters = {_toml_value(dict(source.parameters), f'slices.{index}')}"
                )
            lines.append("  { " + ", ".join(items) + " },")
        lines.append("]")
        if slice_.parameters:
            lines.append("")
            lines.append("[slices.parameters]")
            for key, value in slice_.parameters.items():
                lines.extend(_toml_assignment(key, value, f"slices.{index}.parameters.{key}"))

    return "\n".join(lines).lstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# mergekit YAML: reading


def _yaml_classes() -> tuple[type, type]:
    """A SafeLoader/SafeDumper pair that also reads `1e-5` as a number (YAML 1.2 style).

    PyYAML follows YAML 1.1, where a float needs a dot, so mergekit receives "1e-5" as a string and
    pydantic turns it into 1e-05 for numeric parameters. Reading it as a number up front gives the
    same merge and a recipe without numbers in quotes; the dumper quotes such strings to match.
    """
    import yaml

    pattern = re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    )

    class Loader(bounded_yaml.bounded_loader(yaml.SafeLoader)):  # type: ignore[misc]
        pass

    class Dumper(yaml.SafeDumper):
        def represent_list(self, data: list[Any]) -> Any:
            flow = all(isinstance(item, (bool, int, float)) for item in data)
            return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

        def represent_str(self, data: str) -> Any:
            style = "|" if "\n" in data else None
            return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)

        def ignore_aliases(self, data: Any) -> bool:
            return True

        def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
            # Indent list items under their key, as mergekit's examples are written.
            return super().increase_indent(flow, False)

    for cls in (Loader, Dumper):
        cls.add_implicit_resolver("tag:yaml.org,2002:float", pattern, list("-+0123456789."))
    Dumper.add_representer(list, Dumper.represent_list)
    Dumper.add_representer(str, Dumper.represent_str)
    return Loader, Dumper


def _yaml_compose(text: str, source: str | None) -> tuple[Any, dict[str, int]]:
    """Parse YAML into plain Python data plus the line of every key and list item."""
    import yaml

    limits.check_text_size(text, source)
    loader_cls, _ = _yaml_classes()
    loader = loader_cls(text)
    where = source or "<recipe>"
    try:
        node = loader.get_single_node()
        locations: dict[str, int] = {}
        data = _yaml_node(loader, node, (), locations, where) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise UserError(
            f"not valid YAML: {problem}", where=f"{where}{line}", fix="fix the syntax at that line"
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML: {exc}", where=where) from None
    except bounded_yaml.LimitExceeded as exc:
        raise exc.located(source) from None
    finally:
        loader.dispose()
    return data, locations


def _yaml_node(loader: Any, node: Any, path: Path_, locations: dict[str, int], where: str) -> Any:
    import yaml

    if isinstance(node, yaml.MappingNode):
        own = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)
        merged = len(node.value) - own  # entries pulled in by `<<:` come first; own keys override
        result: dict[Any, Any] = {}
        own_keys: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                raise UserError(
                    f"unsupported key {key!r}", where=f"{where}:{key_node.start_mark.line + 1}"
                )
            if index >= merged:
                if key in own_keys:
                    raise UserError(
                        f"key '{dotted(path + (key,))}' is given twice",
                        where=f"{where}:{key_node.start_mark.line + 1}",
                        fix="keep one of them (YAML would silently use the last)",
                    )
                own_keys.add(key)
                locations[dotted(path + (key,))] = key_node.start_mark.line + 1
            else:
                locations.setdefault(dotted(path + (key,)), key_node.start_mark.line + 1)
            result[key] = _yaml_node(loader, value_node, path + (key,), locations, where)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            locations.setdefault(dotted(path + (index,)), item.start_mark.line + 1)
            items.append(_yaml_node(loader, item, path + (index,), locations, where))
        return items
    return loader.construct_object(node, deep=True)


class _YamlImport:
    """Builds a Recipe from mergekit YAML data, naming models and mapping key lines to recipe paths."""

    def __init__(self, data: dict[str, Any], reader: _Reader, meta: dict[str, Any]) -> None:
        self.data = data
        self.reader = reader
        self.raw_lines = dict(reader.locations)
        self.lines: dict[str, int] = {}
        self.models: dict[str, ModelEntry] = {}
        self.by_reference: dict[tuple[str, str | None], str] = {}
        meta_models = meta.get("models") if isinstance(meta.get("models"), list) else []
        self.meta_names: dict[tuple[str, str | None], str] = {}
        self.meta_order: list[tuple[str, str | None]] = []
        for item in meta_models:
            if (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(x, str) for x in item)
                and MODEL_NAME_RE.match(item[0])
            ):
                try:
                    key = _split_reference(item[1])
                except ValueError:
                    continue
                if key not in self.meta_names and item[0] not in self.meta_names.values():
                    self.meta_names[key] = item[0]
                    self.meta_order.append(key)

    def relocate(self, raw: Path_, recipe: Path_) -> None:
        """Give the recipe path (and everything under it) the lines of the YAML path."""
        prefix = dotted(raw)
        target = dotted(recipe)
        for key, line in self.raw_lines.items():
            if key == prefix:
                self.lines.setdefault(target, line)
            elif key.startswith(prefix + "."):
                self.lines.setdefault(target + key[len(prefix) :], line)

    def reference(self, raw: Any, path: Path_) -> tuple[str, str | None]:
        if isinstance(raw, dict):
            self.reader.check_keys(raw, ("model", "lora", "override_architecture"), path, "a model")
            if raw.get("lora") is not None:
                raise self.lora_error(path + ("lora",))
            if raw.get("override_architecture") is not None:
                raise self.reader.fail(
                    path + ("override_architecture",),
                    "'override_architecture' is not supported",
                    "remove it; mergetui reads the architecture from config.json",
                )
            inner = raw.get("model")
            if isinstance(inner, dict):
                self.reader.check_keys(
                    inner, ("path", "revision"), path + ("model",), "a model path"
                )
                text = self.reader.string(
                    inner.get("path"), path + ("model", "path"), required=True
                )
                revision = self.reader.string(inner.get("revision"), path + ("model", "revision"))
                assert text is not None
                return (text, revision)
            raw = inner
        text = self.reader.string(raw, path, required=True)
        assert text is not None
        if "+" in text:
            raise self.lora_error(path)
        try:
            return _split_reference(text)
        except ValueError as exc:
            raise self.reader.fail(path, str(exc), "write path or path@revision") from None

    def lora_error(self, path: Path_) -> UserError:
        return self.reader.fail(
            path,
            "LoRA references (model+lora) are not supported",
            "merge the adapter into its model first (peft's merge_and_unload) and use that folder",
        )

    def name_for(self, key: tuple[str, str | None], path: Path_) -> str:
        """The recipe name for a model reference, registering the model on first sight."""
        if key in self.by_reference:
            return self.by_reference[key]
        taken = set(self.models) | set(self.by_reference.values())
        name = self.meta_names.get(key)
        if name is None or name in taken:
            name = _unique_name(
                derive_model_name(key[0]), taken | set(self.reserved_meta_names(key))
            )
        self.by_reference[key] = name
        self.models[name] = ModelEntry(name=name, source=key[0], revision=key[1])
        self.relocate(path, ("models", name))
        self.relocate(path, ("models", name, "source"))
        return name

    def reserved_meta_names(self, key: tuple[str, str | None]) -> list[str]:
        return [name for other, name in self.meta_names.items() if other != key]

    def tokenizer_reference(self, raw: Any, path: Path_) -> str:
        """A tokenizer source: 'base'/'union', a model's name, or the path as written."""
        if isinstance(raw, str) and raw in TOKENIZER_KEYWORDS:
            return raw
        key = self.reference(raw, path)
        if key in self.by_reference:
            return self.by_reference[key]
        return f"{key[0]}@{key[1]}" if key[1] else key[0]

    def build(self) -> Recipe:
        data, reader = self.data, self.reader
        for key in data:
            if key in _YAML_UNSUPPORTED:
                message, fix = _YAML_UNSUPPORTED[key]
                raise reader.fail((key,), message, fix)
        reader.check_keys(data, _YAML_TOP_KEYS, (), "a mergekit config")
        method = reader.string(data.get("merge_method"), ("merge_method",), required=True)
        assert method is not None
        has_models = bool(data.get("models"))
        has_slices = bool(data.get("slices"))
        if has_models == has_slices:
            raise reader.fail(
                (),
                "a mergekit config needs exactly one of 'models' or 'slices'",
                "list the models to merge under models:, or layer ranges under slices:",
            )
        base_key = None
        if data.get("base_model") is not None:
            base_key = self.reference(data["base_model"], ("base_model",))

        slices: list[Slice] | None = None
        if has_models:
            raw_models = reader.sized(data["models"], ("models",))
            if not isinstance(raw_models, list):
                raise reader.fail(("models",), "'models' must be a list of - model: entries")
            for i, raw in enumerate(raw_models):
                path = ("models", i)
                item = reader.table(raw, path, "model, parameters")
                reader.check_keys(item, _YAML_MODEL_KEYS, path, "a models entry")
                if "model" not in item:
                    raise reader.fail(path, f"'{dotted(path)}' has no model", "add model: <path>")
                key = self.reference(item["model"], path + ("model",))
                if key in self.by_reference:
                    raise reader.fail(
                        path,
                        f"model '{item['model']}' is listed twice",
                        "list each model once (mergekit refuses duplicate inputs)",
                    )
                name = self.name_for(key, path + ("model",))
                self.models[name].parameters = reader.parameters(
                    item.get("parameters"), path + ("parameters",)
                )
                self.relocate(path + ("parameters",), ("models", name, "parameters"))
                self.relocate(path, ("models", name))
        else:
            raw_slices = reader.sized(data["slices"], ("slices",))
            if not isinstance(raw_slices, list):
                raise reader.fail(("slices",), "'slices' must be a list of - sources: entries")
            slices = [self.slice(raw, ("slices", i)) for i, raw in enumerate(raw_slices)]

        base = None
        if base_key is not None:
            unlisted = has_models and base_key not in self.by_reference
            base = self.name_for(base_key, ("base_model",))
            self.models[base].listed = not unlisted
            self.relocate(("base_model",), ("merge", "base"))

        if slices is not None:
            self.apply_meta_order()

        tokenizer_source = None
        if data.get("tokenizer_source") is not None:
            tokenizer_source = self.tokenizer_reference(
                data["tokenizer_source"], ("tokenizer_source",)
            )
        tokenizer = None
        if data.get("tokenizer") is not None:
            tokenizer = self.tokenizer(data["tokenizer"], ("tokenizer",))
        if tokenizer_source is not None and tokenizer is not None:
            raise reader.fail(
                ("tokenizer",),
                "both 'tokenizer_source' and 'tokenizer' are set",
                "keep one: tokenizer.source does what tokenizer_source does",
            )

        for raw_key, recipe_key in (
            ("merge_method", "method"),
            ("dtype", "dtype"),
            ("out_dtype", "out_dtype"),
            ("tokenizer_source", "tokenizer_source"),
            ("chat_template", "chat_template"),
        ):
            self.relocate((raw_key,), ("merge", recipe_key))
        self.relocate(("tokenizer",), ("merge", "tokenizer"))
        self.relocate(("parameters",), ("parameters",))

        return Recipe(
            method=method,
            models=self.models,
            base=base,
            dtype=reader.string(data.get("dtype"), ("dtype",)),
            out_dtype=reader.string(data.get("out_dtype"), ("out_dtype",)),
            tokenizer_source=tokenizer_source,
            tokenizer=tokenizer,
            chat_template=reader.string(data.get("chat_template"), ("chat_template",)),
            parameters=reader.parameters(data.get("parameters"), ("parameters",)),
            slices=slices,
        )

    def slice(self, raw: Any, path: Path_) -> Slice:
        reader = self.reader
        table = reader.table(raw, path, "sources, base_model, parameters")
        for key in table:
            if key in _YAML_UNSUPPORTED:
                message, fix = _YAML_UNSUPPORTED[key]
                raise reader.fail(path + (key,), message, fix)
        reader.check_keys(table, _YAML_SLICE_KEYS, path, "a slice")
        raw_sources = reader.sized(table.get("sources"), path + ("sources",))
        if not isinstance(raw_sources, list) or not raw_sources:
            raise reader.fail(path, f"'{dotted(path)}' needs a list of sources")
        sources = []
        for j, raw_source in enumerate(raw_sources):
            spath = path + ("sources", j)
            item = reader.table(raw_source, spath, "model, layer_range, parameters")
            reader.check_keys(item, _YAML_SOURCE_KEYS, spath, "a slice source")
            if "model" not in item or "layer_range" not in item:
                raise reader.fail(
                    spath, f"'{dotted(spath)}' needs model and layer_range", "add both"
                )
            name = self.name_for(
                self.reference(item["model"], spath + ("model",)), spath + ("model",)
            )
            sources.append(
                SliceSource(
                    model=name,
                    layer_range=reader.layer_range(item["layer_range"], spath + ("layer_range",)),
                    parameters=reader.parameters(item.get("parameters"), spath + ("parameters",)),
                )
            )
            self.relocate(spath + ("layer_range",), spath + ("layers",))
        base = None
        if table.get("base_model") is not None:
            base = self.name_for(
                self.reference(table["base_model"], path + ("base_model",)), path + ("base_model",)
            )
            self.relocate(path + ("base_model",), path + ("base",))
        self.relocate(path, path)
        return Slice(
            sources=sources,
            parameters=reader.parameters(table.get("parameters"), path + ("parameters",)),
            base=base,
        )

    def apply_meta_order(self) -> None:
        """Slices form: restore the recipe's model order (and unused models) from the meta comment."""
        ordered: dict[str, ModelEntry] = {}
        for key in self.meta_order:
            name = self.by_reference.get(key)
            if name is None:
                name = self.name_for(key, ())
            ordered[name] = self.models[name]
        for name, entry in self.models.items():
            ordered.setdefault(name, entry)
        self.models = ordered

    def tokenizer(self, raw: Any, path: Path_) -> dict[str, Any]:
        reader = self.reader
        block = reader.table(raw, path, "source, tokens, pad_to_multiple_of")
        reader.check_keys(block, _TOKENIZER_KEYS, path, "the tokenizer block")
        result: dict[str, Any] = {}
        if block.get("source") is not None:
            result["source"] = self.tokenizer_reference(block["source"], path + ("source",))
        if block.get("pad_to_multiple_of") is not None:
            result["pad_to_multiple_of"] = reader.integer(
                block["pad_to_multiple_of"], path + ("pad_to_multiple_of",)
            )
        if block.get("tokens") is not None:
            tokens = reader.table(block["tokens"], path + ("tokens",), "token: {source, force}")
            result["tokens"] = {}
            for token, raw_token in tokens.items():
                tpath = path + ("tokens", token)
                entry = reader.table(raw_token, tpath, "source, force")
                reader.check_keys(entry, _TOKEN_KEYS, tpath, "a token entry")
                kept: dict[str, Any] = {}
                source = entry.get("source")
                if isinstance(source, dict):
                    reader.check_keys(
                        source, _TOKEN_SOURCE_KEYS, tpath + ("source",), "a token source"
                    )
                    kept["source"] = {k: v for k, v in source.items() if v is not None}
                    if "model" in kept["source"]:
                        kept["source"]["model"] = self.tokenizer_reference(
                            source["model"], tpath + ("source", "model")
                        )
                elif source is not None:
                    kept["source"] = self.tokenizer_reference(source, tpath + ("source",))
                if entry.get("force") is not None:
                    if not isinstance(entry["force"], bool):
                        raise reader.fail(
                            tpath + ("force",), f"'{dotted(tpath)}.force' must be true or false"
                        )
                    kept["force"] = entry["force"]
                result["tokens"][str(token)] = kept
        return result


def _split_reference(text: str) -> tuple[str, str | None]:
    """mergekit's `path@revision` (at most one '@')."""
    if text.count("@") > 1:
        raise ValueError(f"invalid model reference '{text}': more than one '@'")
    if "@" in text:
        path, revision = text.split("@")
        return (path, revision or None)
    return (text, None)


def derive_model_name(path: str) -> str:
    """A short recipe name from a model path: its last component, lower-case, safe characters."""
    last = re.split(r"[\\/]+", path.strip().rstrip("/\\"))[-1] if path.strip() else ""
    name = re.sub(r"[^a-z0-9._-]+", "-", last.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-._")
    return name or "model"


def _unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


def loads_yaml(text: str, source: str | None = None) -> Recipe:
    """A recipe from a mergekit YAML config (as `mergekit-yaml` reads it)."""
    data, raw_locations = _yaml_compose(text, source)
    reader = _Reader(source, raw_locations)
    if not isinstance(data, dict):
        raise reader.fail((), "a mergekit config must be a mapping (merge_method:, models: ...)")
    meta: dict[str, Any] = {}
    matches = list(_META_RE.finditer(text))
    match = matches[-1] if matches else None
    if match:
        try:
            parsed = json.loads(match.group(1))
        except json.JSONDecodeError as exc:
            line = text.count("\n", 0, match.start()) + 1
            raise UserError(
                f"the '# mergetui:' comment is not valid JSON ({exc.msg})",
                where=f"{source or '<recipe>'}:{line}",
                fix="repair it or delete the line (model names, seed and output are kept there)",
            ) from None
        if isinstance(parsed, dict):
            meta = parsed
    importer = _YamlImport(data, reader, meta)
    recipe = importer.build()
    if isinstance(meta.get("description"), str):
        recipe.description = meta["description"]
    if isinstance(meta.get("output"), str):
        recipe.output = meta["output"]
    if isinstance(meta.get("seed"), int) and not isinstance(meta.get("seed"), bool):
        recipe.seed = meta["seed"]
    recipe.locations = importer.lines
    recipe.source_path = source
    return recipe


# ----------------------------------------------------------------------------------------------
# mergekit YAML: writing


def _yaml_param_value(value: ParamValue) -> Any:
    if isinstance(value, Conditional):
        item: dict[str, Any] = {} if value.filter is None else {"filter": value.filter}
        item["value"] = list(value.value) if isinstance(value.value, list) else value.value
        return item
    if isinstance(value, list):
        return [_yaml_param_value(v) for v in value]
    return value


def _yaml_params(parameters: Parameters) -> dict[str, Any]:
    return {name: _yaml_param_value(value) for name, value in parameters.items()}


def yaml_problems(recipe: Recipe) -> list[tuple[str, str, str]]:
    """Why the recipe cannot be written as mergekit YAML: (where, what, fix) for each reason."""
    problems = []
    if not recipe.models:
        problems.append(("models", "the recipe has no models", "add at least one model"))
    seen: dict[str, str] = {}
    for name, entry in recipe.models.items():
        reference = entry.reference
        if reference in seen:
            problems.append(
                (
                    f"models.{name}.source",
                    f"models '{seen[reference]}' and '{name}' are the same checkpoint ({reference}); "
                    "mergekit cannot tell them apart",
                    f"use one name for {reference}",
                )
            )
        seen.setdefault(reference, name)
        if "+" in entry.source or entry.source.count("@") or (entry.revision or "").count("@"):
            problems.append(
                (
                    f"models.{name}.source",
                    f"'{entry.source}' contains '+' or '@', which mergekit reads as LoRA or revision",
                    "rename the folder",
                )
            )
    names = set(recipe.models)
    for path, name in _referenced_names(recipe):
        if name not in names:
            problems.append(
                (path, f"'{name}' is not one of the recipe's models", "add it under [models]")
            )
    if recipe.slices is not None:
        if not recipe.slices:
            problems.append(
                ("slices", "the recipe has an empty slice list", "add slices or remove the key")
            )
        for name, entry in recipe.models.items():
            if entry.parameters:
                problems.append(
                    (
                        f"models.{name}.parameters",
                        "model parameters cannot be written with slices (mergekit has no such level)",
                        "move them into the slice sources or [parameters]",
                    )
                )
    if recipe.tokenizer is not None and recipe.tokenizer_source is not None:
        problems.append(
            (
                "merge.tokenizer",
                "both tokenizer_source and tokenizer are set",
                "keep one: tokenizer.source does what tokenizer_source does",
            )
        )
    return problems


def _referenced_names(recipe: Recipe) -> list[tuple[str, str]]:
    """Every place the recipe names a model: (dotted path, name)."""
    found = []
    if recipe.base is not None:
        found.append(("merge.base", recipe.base))
    for i, slice_ in enumerate(recipe.slices or []):
        if slice_.base is not None:
            found.append((f"slices.{i}.base", slice_.base))
        for j, source in enumerate(slice_.sources):
            found.append((f"slices.{i}.sources.{j}.model", source.model))
    return found


def _unlisted_base(recipe: Recipe, entry: ModelEntry) -> bool:
    """Whether YAML names `entry` only as `base_model`: it was written so, and leaving it out of
    `models:` still means the same merge (the base, last, without parameters of its own)."""
    names = list(recipe.models)
    return (
        not entry.listed
        and entry.name == recipe.base
        and not entry.parameters
        and bool(names)
        and names[-1] == entry.name
    )


def dumps_yaml(recipe: Recipe) -> str:
    """The recipe as a mergekit YAML config (mergekit-yaml runs it as it is).

    Raises UserError naming what YAML cannot express. Model names, seed, output and description go
    into the `# mergetui:` comment line that `loads_yaml` reads back.
    """
    problems = yaml_problems(recipe)
    if problems:
        where, what, fix = problems[0]
        raise UserError(f"cannot write as mergekit YAML: {what}", where=where, fix=fix)

    import yaml

    _, dumper = _yaml_classes()

    def reference(name: str) -> str:
        return recipe.models[name].reference

    def tokenizer_reference(value: str) -> str:
        return (
            reference(value)
            if value in recipe.models and value not in TOKENIZER_KEYWORDS
            else value
        )

    data: dict[str, Any] = {}
    if recipe.slices is not None:
        slices = []
        for slice_ in recipe.slices:
            item: dict[str, Any] = {"sources": []}
            for source in slice_.sources:
                entry: dict[str, Any] = {
                    "model": reference(source.model),
                    "layer_range": [source.layer_range[0], source.layer_range[1]],
                }
                if source.parameters:
                    entry["parameters"] = _yaml_params(source.parameters)
                item["sources"].append(entry)
            if slice_.base is not None:
                item["base_model"] = reference(slice_.base)
            if slice_.parameters:
                item["parameters"] = _yaml_params(slice_.parameters)
            slices.append(item)
        data["slices"] = slices
    else:
        models = []
        for entry in recipe.models.values():
            if _unlisted_base(recipe, entry):
                continue  # mergekit adds the base as the last input, where the recipe has it
            item = {"model": entry.reference}
            if entry.parameters:
                item["parameters"] = _yaml_params(entry.parameters)
            models.append(item)
        data["models"] = models
    data["merge_method"] = recipe.method
    if recipe.base is not None:
        data["base_model"] = reference(recipe.base)
    if recipe.parameters:
        data["parameters"] = _yaml_params(recipe.parameters)
    if recipe.dtype is not None:
        data["dtype"] = recipe.dtype
    if recipe.out_dtype is not None:
        data["out_dtype"] = recipe.out_dtype
    if recipe.tokenizer_source is not None:
        data["tokenizer_source"] = tokenizer_reference(recipe.tokenizer_source)
    if recipe.tokenizer is not None:
        block = json.loads(json.dumps(recipe.tokenizer))
        if isinstance(block.get("source"), str):
            block["source"] = tokenizer_reference(block["source"])
        for token in (block.get("tokens") or {}).values():
            source = token.get("source") if isinstance(token, dict) else None
            if isinstance(source, str):
                token["source"] = tokenizer_reference(source)
            elif isinstance(source, dict) and isinstance(source.get("model"), str):
                source["model"] = tokenizer_reference(source["model"])
        data["tokenizer"] = block
    if recipe.chat_template is not None:
        data["chat_template"] = recipe.chat_template

    meta: dict[str, Any] = {"models": [[name, e.reference] for name, e in recipe.models.items()]}
    for key in ("description", "output", "seed"):
        value = getattr(recipe, key)
        if value is not None:
            meta[key] = value
    header = ["# mergekit config written by mergetui."]
    if recipe.description:
        header.extend(f"# {line}".rstrip() for line in recipe.description.splitlines())
    if recipe.seed is not None:
        header.append(
            f"# Random draws are seeded: run mergekit-yaml with --random-seed {recipe.seed}"
        )
    header.append("# The next line keeps what mergekit's YAML cannot say; mergekit ignores it.")
    header.append("# mergetui: " + json.dumps(meta, ensure_ascii=False, separators=(", ", ": ")))
    body = yaml.dump(
        data,
        Dumper=dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return "\n".join(header) + "\n" + body


# ----------------------------------------------------------------------------------------------
# Files


def recipe_format(path: str | os.PathLike[str]) -> str:
    """'toml' or 'yaml' from the file extension; UserError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in TOML_SUFFIXES:
        return "toml"
    if suffix in YAML_SUFFIXES:
        return "yaml"
    raise UserError(
        f"unknown recipe extension '{suffix or '(none)'}'",
        where=str(path),
        fix="use .toml for mergetui recipes, .yaml or .yml for mergekit configs",
    )


def loads_recipe(text: str, fmt: str, source: str | None = None) -> Recipe:
    return loads_toml(text, source) if fmt == "toml" else loads_yaml(text, source)


def dumps_recipe(recipe: Recipe, fmt: str) -> str:
    return dumps_toml(recipe) if fmt == "toml" else dumps_yaml(recipe)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read a recipe file: .toml is mergetui's form, .yaml/.yml mergekit's."""
    fmt = recipe_format(path)
    _check_recipe_file(Path(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("recipe file not found", where=str(path), fix="check the path") from None
    except IsADirectoryError:
        raise UserError("expected a recipe file, got a folder", where=str(path)) from None
    except UnicodeDecodeError:
        raise UserError("the recipe is not UTF-8 text", where=str(path)) from None
    return loads_recipe(text, fmt, str(path))


def _check_recipe_file(path: Path) -> None:
    """Refuse, before reading, what is not a plain file of recipe size (a FIFO would block)."""
    import stat

    try:
        info = path.stat()
    except FileNotFoundError:
        return  # reading says so
    except OSError as exc:
        raise UserError(f"cannot read the recipe: {exc.strerror}", where=str(path)) from None
    if stat.S_ISDIR(info.st_mode):
        return
    if not stat.S_ISREG(info.st_mode):
        raise UserError(
            "the recipe is not a regular file",
            where=str(path),
            fix="point at a .toml or .yaml file",
        )
    if info.st_size > limits.MAX_RECIPE_BYTES:
        raise UserError(
            f"the recipe is {info.st_size:,} bytes; recipes are limited to "
            f"{limits.MAX_RECIPE_BYTES // 1024} KiB",
            where=str(path),
            fix="is this the right file? recipes are a few kilobytes of settings",
        )


def save_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> None:
    """Write a recipe by extension, atomically: a crash leaves the old file or the new, never half."""
    target = Path(path)
    text = dumps_recipe(recipe, recipe_format(target))
    write_text_atomic(target, text)


def write_text_atomic(target: Path, text: str) -> None:
    """Write to a temporary file beside `target`, then rename it into place.

    A folder that cannot be written (read-only, no permission, disk full) is a UserError naming it.
    """
    from mergetui.checkpoints.files import os_error

    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, folder, "create this folder") from None
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise os_error(exc, target, "write this file") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException as exc:
        Path(temp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise os_error(exc, target, "write this file") from None
        raise

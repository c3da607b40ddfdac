"""Writing mergetui TOML: a recipe as the plain data of its file, and that data in one fixed layout.

`toml_data` is what tomllib reads back from the file (the shape `recipe.reader.build_recipe` takes);
`dumps_toml` lays it out the same way every time (so a new recipe, a snapshot or a fingerprint is
stable). Saving over a recipe read from a file keeps that file's comments and layout instead:
`recipe.toml_update` changes only what differs, using the pieces this module lays out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe.model import ModelEntry, Recipe, Slice, plain_parameters

# Lines longer than this spread an array over several lines.
LINE_WIDTH = 100

_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_data(recipe: Recipe) -> dict[str, Any]:
    """The recipe as the plain data of its TOML file, in the order `dumps_toml` writes it."""
    data: dict[str, Any] = {}
    if recipe.description is not None:
        data["description"] = recipe.description
    merge = {
        "method": recipe.method,
        "base": recipe.base,
        "dtype": recipe.dtype,
        "out_dtype": recipe.out_dtype,
        "output": recipe.output,
        "seed": recipe.seed,
        "tokenizer_source": recipe.tokenizer_source,
        "chat_template": recipe.chat_template,
        "tokenizer": recipe.tokenizer,
    }
    data["merge"] = {key: value for key, value in merge.items() if value is not None}
    if recipe.models:
        data["models"] = {name: _model_data(entry) for name, entry in recipe.models.items()}
    if recipe.parameters:
        data["parameters"] = plain_parameters(recipe.parameters)
    if recipe.slices:
        data["slices"] = [_slice_data(slice_) for slice_ in recipe.slices]
    if recipe.search is not None:
        data["search"] = recipe.search
    return data


def _model_data(entry: ModelEntry) -> dict[str, Any]:
    data: dict[str, Any] = {"source": entry.source}
    if entry.revision is not None:
        data["revision"] = entry.revision
    if entry.lora is not None:
        data["lora"] = entry.lora
    if not entry.listed:
        data["listed"] = False
    if entry.parameters:
        data["parameters"] = plain_parameters(entry.parameters)
    return data


def _slice_data(slice_: Slice) -> dict[str, Any]:
    data: dict[str, Any] = {} if slice_.base is None else {"base": slice_.base}
    data["sources"] = []
    for source in slice_.sources:
        item: dict[str, Any] = {
            "model": source.model,
            "layers": [source.layer_range[0], source.layer_range[1]],
        }
        if source.parameters:
            item["parameters"] = plain_parameters(source.parameters)
        data["sources"].append(item)
    if slice_.parameters:
        data["parameters"] = plain_parameters(slice_.parameters)
    return data


def dumps_toml(recipe: Recipe) -> str:
    """The recipe as mergetui TOML; the same recipe always gives the same text."""
    return render_toml(toml_data(recipe))


def render_toml(data: Mapping[str, Any]) -> str:
    """`toml_data` laid out: [merge], then [models.<name>], [parameters], [[slices]], [search]."""
    lines: list[str] = []
    if "description" in data:
        lines.extend(toml_assignment("description", data["description"], "description"))
    merge = data["merge"]
    lines += ["", "[merge]"]
    for key, value in merge.items():
        if key != "tokenizer":
            lines.extend(toml_assignment(key, value, f"merge.{key}"))
    if "tokenizer" in merge:
        _toml_table("merge.tokenizer", merge["tokenizer"], lines)
    for name, entry in data.get("models", {}).items():
        header = f"models.{toml_key(name)}"
        lines += ["", f"[{header}]"]
        for key, value in entry.items():
            if key != "parameters":
                lines.extend(toml_assignment(key, value, f"{header}.{key}"))
        if "parameters" in entry:
            _assignments(f"{header}.parameters", entry["parameters"], lines)
    if "parameters" in data:
        _assignments("parameters", data["parameters"], lines)
    for index, slice_ in enumerate(data.get("slices", [])):
        lines += ["", "[[slices]]"]
        if "base" in slice_:
            lines.extend(toml_assignment("base", slice_["base"], f"slices.{index}.base"))
        lines.append("sources = [")
        for source in slice_["sources"]:
            lines.append(f"  {toml_value(source, f'slices.{index}')},")
        lines.append("]")
        if "parameters" in slice_:
            path = f"slices.{index}.parameters"
            _assignments("slices.parameters", slice_["parameters"], lines, path)
    if "search" in data:
        _search_table(data["search"], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _search_table(search: Mapping[str, Any], lines: list[str]) -> None:
    """[search]: its values (tables inline), then each list of tables as [[search.<key>]]."""
    lines += ["", "[search]"]
    for key, value in search.items():
        if not _is_list_of_tables(value):
            lines.extend(toml_assignment(key, value, f"search.{key}"))
    for key, value in search.items():
        if _is_list_of_tables(value):
            for index, table in enumerate(value):
                lines += ["", f"[[search.{toml_key(key)}]]"]
                for name, item in table.items():
                    lines.extend(toml_assignment(name, item, f"search.{key}.{index}.{name}"))


def _is_list_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _assignments(
    header: str, table: Mapping[str, Any], lines: list[str], path: str | None = None
) -> None:
    """A [header] table of `key = value` lines (values that are tables are written inline)."""
    lines += ["", f"[{header}]"]
    for key, value in table.items():
        lines.extend(toml_assignment(key, value, f"{path or header}.{key}"))


def _toml_table(header: str, table: Mapping[str, Any], lines: list[str]) -> None:
    """A [header] table: plain keys first, then its sub-tables (nested dicts) as their own headers."""
    plain = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    if plain or not nested:
        lines += ["", f"[{header}]"]
        for key, value in plain.items():
            lines.extend(toml_assignment(key, value, f"{header}.{key}"))
    for key, value in nested.items():
        _toml_table(f"{header}.{toml_key(key)}", value, lines)


# ----------------------------------------------------------------------------------------------
# Keys and values


def toml_key(key: str) -> str:
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


def toml_value(value: Any, path: str) -> str:
    """`value` on one line; UserError naming `path` for what TOML cannot hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item, path) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{toml_key(k)} = {toml_value(v, path)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise UserError(f"cannot write {value!r} in TOML", where=path)


def toml_assignment(key: str, value: Any, path: str) -> list[str]:
    """`key = value`, spreading long arrays and lists of {filter, value} entries over lines."""
    head = f"{toml_key(key)} = "
    one_line = head + toml_value(value, path)
    if not isinstance(value, (list, tuple)):
        return [one_line]
    if any(isinstance(item, dict) for item in value):
        return [head + "["] + [f"  {toml_value(item, path)}," for item in value] + ["]"]
    if len(one_line) <= LINE_WIDTH:
        return [one_line]
    lines = [head + "["]
    row: list[str] = []
    for item in value:
        text = toml_value(item, path)
        if row and len("  " + ", ".join(row + [text]) + ",") > LINE_WIDTH:
            lines.append("  " + ", ".join(row) + ",")
            row = []
        row.append(text)
    if row:
        lines.append("  " + ", ".join(row) + ",")
    return lines + ["]"]

"""Reading mergetui TOML: limits first, then tomllib, then the one builder (`recipe.reader`).

tomllib gives values but no positions, so a light scanner finds the line of every key and array
element (`toml_locations`); validation uses them to point at `recipe.toml:12` rather than at a
dotted path alone.
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from mergetui import bounded_yaml
from mergetui.errors import UserError
from mergetui.recipe import limits
from mergetui.recipe.model import Recipe
from mergetui.recipe.reader import KeyPath, RecipeReader, build_recipe, dotted

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def loads_toml(text: str, source: str | None = None) -> Recipe:
    """A recipe from mergetui TOML. `source` (the file name) goes into error messages."""
    data, locations = read_toml_data(text, source)
    return recipe_from_toml_data(data, locations, source)


def read_toml_data(text: str, source: str | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """TOML text as plain data and the line of every key, within the recipe limits: the syntax
    and limit errors located at a line of `source`. A multi-stage file (`recipe.stages`) is read
    through it before each stage is built."""
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
    return data, toml_locations(text)


def recipe_from_toml_data(
    data: dict[str, Any], locations: dict[str, int], source: str | None
) -> Recipe:
    """The recipe the one builder makes of TOML data whose keys were written at `locations`."""
    reader = RecipeReader(source, locations)
    recipe = build_recipe(data, reader)
    recipe.locations = reader.locations
    recipe.source_path = source
    return recipe


# ----------------------------------------------------------------------------------------------
# Where each key sits


def _line_finder(text: str) -> Callable[[int], int]:
    """The 1-based line of a character offset in `text`."""
    newlines = [i for i, char in enumerate(text) if char == "\n"]
    return lambda offset: bisect_right(newlines, offset - 1) + 1


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
        self.array_tables: dict[KeyPath, int] = {}

    def run(self) -> dict[str, int]:
        table: KeyPath = ()
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

    def resolve(self, keys: KeyPath) -> KeyPath:
        path: KeyPath = ()
        for key in keys:
            path += (key,)
            if path in self.array_tables:
                path += (self.array_tables[path] - 1,)
        return path

    def record(self, path: KeyPath, offset: int) -> None:
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

    def key(self) -> KeyPath:
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

    def value(self, path: KeyPath) -> None:
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

"""What a recipe may ask for: size, nesting, list lengths and number sizes, checked while reading.

A recipe is a few kilobytes of settings. Hostile or broken files must not make the reader or the
validator do unbounded work: a YAML alias bomb expands without end, a thousand nested brackets
exhaust Python's recursion, a number of five thousand digits stops `int()`, a gradient of millions
of anchors is walked for every tensor. Each limit below is far above any real recipe; crossing one is
a `UserError` that names the file and line. docs/recipe-format.md lists them.
"""

from __future__ import annotations

import re
from typing import Any

from mergetui.errors import UserError

# A recipe file: real ones are a few kilobytes (a long inline chat template is tens).
MAX_RECIPE_BYTES = 1024 * 1024
# Nested lists and tables (brackets, YAML levels, dotted key parts): real recipes use under ten.
MAX_NESTING = 32
# Values in a YAML document once its aliases are expanded: real configs hold a few hundred.
MAX_YAML_NODES = 100_000
# Entries in one list or table (gradient anchors, {filter, value} entries, models, slices):
# a per-layer column of the deepest models needs a few hundred.
MAX_ENTRIES = 1024
# Characters in one number literal (Python refuses to read integers of over 4300 digits).
MAX_NUMBER_CHARS = 100
# Magnitude of any numeric parameter: real weights, lambdas and scales are near 1.
MAX_PARAMETER = 1000.0
# Highest layer number in a layer range: the deepest checkpoints have a few hundred layers.
MAX_LAYER = 100_000


class LimitExceeded(Exception):
    """A limit crossed at a known line; the reader turns it into a located `UserError`."""

    def __init__(self, message: str, line: int | None, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.fix = fix

    def located(self, source: str | None) -> UserError:
        where = source or "<recipe>"
        return UserError(
            self.message, where=f"{where}:{self.line}" if self.line else where, fix=self.fix
        )


def check_text_size(text: str, source: str | None) -> None:
    """Refuse a recipe text larger than MAX_RECIPE_BYTES before parsing it."""
    if len(text) > MAX_RECIPE_BYTES:
        raise UserError(
            f"the recipe is {len(text):,} characters; recipes are limited to "
            f"{MAX_RECIPE_BYTES // 1024} KiB",
            where=source or "<recipe>",
            fix="is this the right file? recipes are a few kilobytes of settings",
        )


def nesting_error(line: int | None) -> LimitExceeded:
    return LimitExceeded(
        f"values are nested more than {MAX_NESTING} levels deep",
        line,
        "recipes need a few levels (a table, a list of {filter, value} entries, a gradient)",
    )


def number_error(line: int | None) -> LimitExceeded:
    return LimitExceeded(
        f"a number written with more than {MAX_NUMBER_CHARS} characters",
        line,
        "write the number with fewer digits",
    )


def entries_error(what: str, count: int) -> tuple[str, str]:
    """(message, fix) for a list or table longer than MAX_ENTRIES."""
    return (
        f"{what} has {count:,} entries; at most {MAX_ENTRIES:,} are allowed",
        "a gradient needs a few anchors (values between them are interpolated); "
        "a per-layer list needs one per layer",
    )


# ----------------------------------------------------------------------------------------------
# TOML: nesting and number sizes, before tomllib (which recurses once per level)

_WORD = r"[A-Za-z0-9_-]"
_KEY_PART = r"""(?:[A-Za-z0-9_-]++|"(?:[^"\\\n]|\\[^\n])*+"|'[^'\n]*+')"""
_KEY_PART_RE = re.compile(_KEY_PART)
_TOML_TOKEN = re.compile(
    # Strings and comments are skipped whole; their bodies are possessive (*+), an unclosed one
    # runs to the end of its line (or of the text), and a key or number starts only at a word's
    # start: no text is scanned more than twice, so the scan stays linear in the text's length.
    r'(?P<skip>"""(?:[^"\\]|\\.|""?(?!"))*+(?:"{3,5}|\Z)'
    r"|'''(?:[^']|''?(?!'))*+(?:'{3,5}|\Z))"
    rf"|(?P<chain>(?<!{_WORD}){_KEY_PART}(?:[ \t]*+\.[ \t]*+{_KEY_PART})++)"  # a.b.c (or 0.5)
    r'|(?P<string>"(?:[^"\\\n]|\\[^\n])*+"?'
    r"|'[^'\n]*+'?"
    r"|#[^\n]*+)"
    r"|(?P<open>[\[{])|(?P<close>[\]}])"
    rf"|(?P<number>(?<!{_WORD})[0-9][0-9_]{{{MAX_NUMBER_CHARS},}})",
    re.DOTALL,
)


def check_toml_text(text: str) -> None:
    """Refuse brackets and dotted keys nested past MAX_NESTING, and overlong numbers.

    A light scan that runs before tomllib, which would hit Python's recursion limit or `int()`'s
    digit limit with a traceback. Raises LimitExceeded with the line. Dotted key parts count as
    levels (as tables do); a float's dot counts too, which only matters past 30 levels.
    """
    depth = 0
    for match in _TOML_TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "open":
            depth += 1
            levels = depth
        elif kind == "close":
            depth -= 1
            continue
        elif kind == "chain":
            token = match.group(0)
            dots = token.count(".")
            if "'" in token or '"' in token:  # dots inside quoted key parts are not levels
                dots = len(_KEY_PART_RE.findall(token)) - 1
            levels = depth + dots
        elif kind == "number":
            raise number_error(text.count("\n", 0, match.start()) + 1)
        else:
            continue
        if levels > MAX_NESTING:
            raise nesting_error(text.count("\n", 0, match.start()) + 1)


# ----------------------------------------------------------------------------------------------
# YAML: a loader that counts while it composes


def bounded_loader(base: type) -> type:
    """A subclass of the PyYAML loader `base` that refuses, while composing and before anything is
    built: more than MAX_YAML_NODES values with aliases expanded (alias bombs), an alias inside its
    own anchor (a loop), nesting past MAX_NESTING, and number literals past MAX_NUMBER_CHARS.

    Composing shares an anchored node between its aliases, so the count is cheap: each node's
    expanded size is computed once, and an alias adds the size of the node it names.
    """
    import yaml

    class BoundedLoader(base):  # type: ignore[misc,valid-type]
        def compose_document(self) -> Any:
            self._sizes: dict[int, int] = {}
            self._total = 0
            self._depth = 0
            return super().compose_document()

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                node = super().compose_node(parent, index)
                size = self._sizes.get(id(node))
                if size is None:
                    raise LimitExceeded(
                        f"the alias *{event.anchor} is inside the value it names (a loop)",
                        line,
                        "recipes cannot refer to themselves; write the values out",
                    )
                self._add(size, line)
                return node
            self._depth += 1
            if self._depth > MAX_NESTING:
                raise nesting_error(line)
            self._add(1, line)
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            self._sizes[id(node)] = 1 + self._children_size(node)
            if (
                isinstance(node, yaml.ScalarNode)
                and node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
                and len(node.value) > MAX_NUMBER_CHARS
            ):
                raise number_error(line)
            return node

        def _children_size(self, node: Any) -> int:
            if isinstance(node, yaml.SequenceNode):
                return sum(self._sizes[id(item)] for item in node.value)
            if isinstance(node, yaml.MappingNode):
                return sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
            return 0

        def _add(self, size: int, line: int) -> None:
            self._total += size
            if self._total > MAX_YAML_NODES:
                raise LimitExceeded(
                    f"the document expands to more than {MAX_YAML_NODES:,} values "
                    "(aliases repeat what they name)",
                    line,
                    "write the values out instead of nesting aliases; recipes hold a few hundred",
                )

    return BoundedLoader

"""What a recipe may ask for: size, nesting, list lengths and number sizes, checked while reading.

A recipe is a few kilobytes of settings. Hostile or broken files must not make the reader or the
validator do unbounded work: a YAML alias bomb expands without end, a thousand nested brackets
exhaust Python's recursion, a number of five thousand digits stops `int()`, a gradient of millions
of anchors is walked for every tensor. Each limit below is far above any real recipe; crossing one is
a `UserError` that names the file and line. docs/recipe-format.md lists them.
"""

from __future__ import annotations

import re

# The YAML limits (alias expansion, nesting, number length) are in mergetui.bounded_yaml, shared
# with the other YAML mergetui reads; TOML's nesting and number limits below are the same.
from mergetui.bounded_yaml import MAX_NESTING, MAX_NUMBER_CHARS, nesting_error, number_error
from mergetui.errors import UserError

# A recipe file: real ones are a few kilobytes (a long inline chat template is tens).
MAX_RECIPE_BYTES = 1024 * 1024
# Entries in one list or table (gradient anchors, {filter, value} entries, models, slices):
# a per-layer column of the deepest models needs a few hundred.
MAX_ENTRIES = 1024
# Magnitude of any numeric parameter: real weights, lambdas and scales are near 1.
MAX_PARAMETER = 1000.0
# Highest layer number in a layer range: the deepest checkpoints have a few hundred layers.
MAX_LAYER = 100_000


def check_text_size(text: str, source: str | None) -> None:
    """Refuse a recipe text larger than MAX_RECIPE_BYTES before parsing it."""
    if len(text) > MAX_RECIPE_BYTES:
        raise UserError(
            f"the recipe is {len(text):,} characters; recipes are limited to "
            f"{MAX_RECIPE_BYTES // 1024} KiB",
            where=source or "<recipe>",
            fix="is this the right file? recipes are a few kilobytes of settings",
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

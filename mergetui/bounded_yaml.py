"""A PyYAML loader with limits, for every YAML file mergetui reads (recipes, model-card front matter).

A few hundred bytes of nested aliases expand without end, a thousand nested levels exhaust Python's
recursion, and a number of five thousand digits stops `int()`. The loader refuses each while it
composes, before anything is built, with the line. It lives below the recipe and checkpoint packages
so both can use it; docs/recipe-format.md lists the limits.
"""

from __future__ import annotations

from typing import Any

from mergetui.errors import UserError

# Nested lists and tables (brackets, YAML levels, dotted key parts): real recipes use under ten.
MAX_NESTING = 32
# Values in a YAML document once its aliases are expanded: real configs hold a few hundred.
MAX_YAML_NODES = 100_000
# Characters in one number literal (Python refuses to read integers of over 4300 digits).
MAX_NUMBER_CHARS = 100


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

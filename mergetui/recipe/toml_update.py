"""Saving over a recipe file: change only what the recipe changed, through tomlkit.

A recipe read from TOML and saved again should look as the person left it: their comments, the order
they wrote keys in, a gradient written `[0, 0.5, 1]`. `update_toml` reads the file with tomlkit and
walks it beside the recipe's data (`toml_data`): a value that is the same is left as written, a
changed one is replaced (written as `dumps_toml` writes it, keeping the comment after it), a new key
or table is added, a deleted one removed. Whatever the walk cannot keep is checked at the end: the
text must read back as the recipe, or the recipe is written fresh in `dumps_toml`'s layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergetui.recipe.model import Recipe
from mergetui.recipe.toml_write import render_toml, toml_assignment, toml_data


class _CannotKeep(Exception):
    """The file is shaped so that the walk cannot change it in place (write it fresh instead)."""


def update_toml(original: str, recipe: Recipe) -> str:
    """`original` (the text of a recipe file) changed to say `recipe`, keeping the rest as written.

    Falls back to `dumps_toml`'s layout when the text cannot be kept (not valid TOML, a shape the
    walk does not handle, or a result that would not read back as `recipe`). UserError, as
    `dumps_toml`, for values TOML cannot hold.
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    data = toml_data(recipe)
    fresh_text = render_toml(data)  # raises for what TOML cannot write, before anything else
    try:
        document = tomlkit.parse(original)
        _update_table(document, tomlkit.parse(fresh_text), data, ())
        text = document.as_string()
    except (
        _CannotKeep,
        TOMLKitError,
        AttributeError,
        AssertionError,
        LookupError,
        TypeError,
        ValueError,
    ):
        return fresh_text
    if original.endswith("\n") and not original.endswith("\n\n"):
        text = text.rstrip("\n") + "\n"
    return text if _reads_as(text, data) else fresh_text


def _reads_as(text: str, data: dict[str, Any]) -> bool:
    """Whether `text` is a recipe file that says what `data` says (models in the same order)."""
    from mergetui.errors import UserError
    from mergetui.recipe.toml_read import loads_toml

    try:
        again = toml_data(loads_toml(text))
    except UserError:
        return False
    return again == data and list(again.get("models", {})) == list(data.get("models", {}))


# ----------------------------------------------------------------------------------------------
# The walk


def _update_table(target: Any, fresh: Any, data: Mapping[str, Any], path: tuple[str, ...]) -> None:
    """Make the tomlkit table `target` hold `data`; `fresh` is the same table as `dumps_toml`
    writes it, where new sub-tables are taken from."""
    for key in [key for key in target if key not in data]:
        del target[key]
    for key, value in data.items():
        where = ".".join(path + (key,))
        if key not in target:
            _add(target, key, value, fresh, where)
            continue
        current = target[key]
        if _same(_plain(current), value) and path + (key,) != ("models",):
            continue  # as written (the models' order is checked below)
        if isinstance(value, dict) and _is_header_table(current):
            _update_table(current, _child(fresh, key), value, path + (key,))
        elif _is_list_of_tables(value) and _is_array_of_tables(current):
            _update_array_of_tables(current, _child(fresh, key), value, path + (key,))
        elif _is_header_table(current) or _is_array_of_tables(current):
            raise _CannotKeep(where)  # a table that became a value
        else:
            target[key] = _value_item(key, value, where)
    if path == ("models",):
        _reorder(target, list(data))


def _update_array_of_tables(
    target: Any, fresh: Any, data: list[Any], path: tuple[str, ...]
) -> None:
    """`[[slices]]`: update the tables both have, drop the surplus, add the new ones."""
    if fresh is None or not _is_array_of_tables(fresh):
        raise _CannotKeep(".".join(path))
    for index, value in enumerate(data[: len(target)]):
        _update_table(target[index], fresh[index], value, path + (str(index),))
    while len(target) > len(data):
        del target[len(target) - 1]
    for index in range(len(target), len(data)):
        target.append(fresh[index])


def _add(target: Any, key: str, value: Any, fresh: Any, where: str) -> None:
    """A key the file does not have: a table taken from `fresh` at the end of `target`, a value
    after the last value already there."""
    if isinstance(value, dict) or _is_list_of_tables(value):
        item = _child(fresh, key)
        if not (_is_header_table(item) or _is_array_of_tables(item)):
            raise _CannotKeep(where)
        _end_with_blank_line(target)
        target.append(key, item)
        return
    _insert_value(target, key, _value_item(key, value, where))


def _insert_value(target: Any, key: str, item: Any) -> None:
    """Insert `key = item` after the last plain value of `target` (before its trailing comments,
    blank lines and sub-tables), so that it stays in that table when the file is read again."""
    from tomlkit.items import AoT, Comment, Table, Whitespace

    body = _body(target)
    last = None
    first_table = None
    for index, (name, entry) in enumerate(body):
        if isinstance(entry, (Table, AoT)):
            if first_table is None and not (name is not None and name.is_dotted()):
                first_table = index
        elif name is not None and not isinstance(entry, (Comment, Whitespace)):
            last = index
    position = last + 1 if last is not None else first_table
    if position is None or position >= len(body):
        target.append(key, item)
        return
    if last is None:
        item.trivia.trail = "\n\n"  # a blank line before the first table, as dumps_toml writes
    _container(target)._insert_at(position, key, item)
    if target is not _container(target):
        dict.__setitem__(target, key, item)  # the table's own view of its keys


def _reorder(models: Any, order: list[str]) -> None:
    """Models are the merge's inputs, in file order: move tables so the file has `order`."""
    current = list(models)
    keep = 0
    while keep < len(current) and current[keep] == order[keep]:
        keep += 1
    moved = [(name, models[name]) for name in order[keep:]]
    for name, _ in moved:
        del models[name]
    for name, table in moved:
        _end_with_blank_line(models)
        models.append(name, table)
        table.trivia.indent = ""  # the blank line before it is the previous table's


def _end_with_blank_line(target: Any) -> None:
    """Give the last table in `target` a blank line after it, before something is added."""
    from tomlkit.items import AoT, Null, Table, Whitespace

    body = [entry for _, entry in _body(target) if not isinstance(entry, Null)]
    if not body:
        return
    last = body[-1]
    if isinstance(last, AoT) and len(last):
        last = last[-1]
    if isinstance(last, Table):
        inner = last.value.body
        if not (inner and isinstance(inner[-1][1], (Whitespace, Table, AoT))):
            last.value.append(None, Whitespace("\n"))


# ----------------------------------------------------------------------------------------------
# Items


def _value_item(key: str, value: Any, where: str) -> Any:
    """`key = value` as a tomlkit item, laid out as `dumps_toml` lays it out."""
    import tomlkit

    return tomlkit.parse("\n".join(toml_assignment(key, value, where)) + "\n").item(key)


def _child(fresh: Any, key: str) -> Any:
    if fresh is None:
        return None
    try:
        return fresh.item(key) if hasattr(fresh, "item") else fresh[key]
    except (KeyError, AttributeError):
        return None


def _container(target: Any) -> Any:
    """The tomlkit Container holding `target`'s keys (a Document is one; a Table has one)."""
    from tomlkit.container import Container

    for candidate in (target, getattr(target, "value", None)):
        if isinstance(candidate, Container):
            return candidate
    raise _CannotKeep("a table tomlkit spreads over the file")


def _body(target: Any) -> list[Any]:
    return _container(target).body


def _is_header_table(item: Any) -> bool:
    """A table with a [header] (or a dotted key), as opposed to a { inline } one.

    tomlkit hands a table whose sub-tables are spread over the file as a proxy; it counts too."""
    from tomlkit.container import OutOfOrderTableProxy
    from tomlkit.items import Table

    return isinstance(item, (Table, OutOfOrderTableProxy))


def _is_array_of_tables(item: Any) -> bool:
    from tomlkit.items import AoT

    return isinstance(item, AoT)


def _is_list_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _plain(item: Any) -> Any:
    return item.unwrap() if hasattr(item, "unwrap") else item


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types (a `1` written where the recipe now holds `1.0` changed)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b

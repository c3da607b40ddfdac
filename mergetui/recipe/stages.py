"""Multi-stage recipe files: several named merges in one file, a later one merging an earlier one's
output (mergekit-multi's format, and a TOML form of it).

mergekit-multi's YAML is read as it is: documents separated by `---`, each a mergekit config with a
`name:` (the final one may have none). mergetui's TOML form is an array of `[[stages]]` tables, each
a whole recipe (`[stages.merge]`, `[stages.models.NAME]`, `[stages.parameters]`) with a `name` key
(the final one may have none). Each stage is built by the single-recipe readers as they are
(`yaml_import.loads_yaml`, `toml_read.recipe_from_toml_data`), so a stage's errors name the file's
own line. How stages are wired to each other and ordered is `recipe.stage_order`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe.model import Recipe

# A stage's name is the folder its output gets in the intermediate folder: one plain component.
STAGE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclass
class Stage:
    """One merge of a multi-stage file. `name` is None for the final, unnamed stage."""

    name: str | None
    recipe: Recipe
    number: int  # 1-based position in the file
    where: str  # file:line of its name (or of its first key)
    output: Path | None = None  # where it writes, once placed (`stage_order.place_stages`)
    uses: tuple[str, ...] = ()  # the stages whose outputs it merges, once placed

    @property
    def label(self) -> str:
        """How messages name it: `stage 'soup'`, or `the final stage`."""
        return f"stage {self.name!r}" if self.name else "the final stage"


def load_stages(path: str | Path) -> list[Stage] | None:
    """The stages of a multi-stage file, in file order; None when the file holds one plain recipe
    (then `recipe.io.load_recipe` reads it as always)."""
    from mergetui.recipe.io import read_recipe_text, recipe_format

    fmt = recipe_format(path)
    text = read_recipe_text(path)
    return loads_stages(text, fmt, str(path))


def loads_stages(text: str, fmt: str, source: str) -> list[Stage] | None:
    """`load_stages` of a file's text ("toml" or "yaml")."""
    stages = _toml_stages(text, source) if fmt == "toml" else _yaml_stages(text, source)
    if stages is not None:
        _check_names(stages, source)
    return stages


def _stage_error(exc: UserError, number: int, name: str | None) -> UserError:
    """A reader's error with the stage it is in (its place is already the file's line)."""
    label = f"stage {number} ({name!r})" if name else f"stage {number} (the final stage)"
    return UserError(f"{label}: {exc.message}", where=exc.where, fix=exc.fix)


# ----------------------------------------------------------------------------------------------
# TOML: [[stages]] tables


def _toml_stages(text: str, source: str) -> list[Stage] | None:
    from mergetui.recipe.toml_read import read_toml_data, recipe_from_toml_data

    data, locations = read_toml_data(text, source)
    if "stages" not in data:
        return None
    others = [key for key in data if key != "stages"]
    if others:
        raise UserError(
            f"a multi-stage file holds only [[stages]] tables, not '{others[0]}'",
            where=f"{source}:{locations.get(others[0], 1)}",
            fix="move it into the stage it belongs to ([stages.merge], [stages.models.NAME], ...)",
        )
    tables = data["stages"]
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise UserError(
            "'stages' must be [[stages]] tables, one per merge",
            where=f"{source}:{locations.get('stages', 1)}",
            fix="write each merge as a [[stages]] table with its name and [stages.merge] etc.",
        )
    stages = []
    for index, table in enumerate(tables):
        prefix = f"stages.{index}"
        where = f"{source}:{locations.get(prefix, 1)}"
        name = _name_value(table.pop("name", None), f"{source}:{locations.get(prefix + '.name')}")
        own = {
            key[len(prefix) + 1 :]: line
            for key, line in locations.items()
            if key.startswith(prefix + ".")
        }
        try:
            recipe = recipe_from_toml_data(table, own, source)
        except UserError as exc:
            raise _stage_error(exc, index + 1, name) from None
        if name is not None:
            where = f"{source}:{locations.get(prefix + '.name', locations.get(prefix, 1))}"
        stages.append(Stage(name, recipe, index + 1, where))
    return stages


# ----------------------------------------------------------------------------------------------
# YAML: mergekit-multi's documents


def _yaml_stages(text: str, source: str) -> list[Stage] | None:
    """Each document read by `loads_yaml` from a copy of the file in which everything but that
    document (and its `name:`) is blanked, so lines and columns stay the file's own."""
    from mergetui.recipe.yaml_import import loads_yaml

    documents = _yaml_documents(text, source)
    if len(documents) == 1 and documents[0][2] is None:
        return None  # one plain config
    stages = []
    start = 0
    for number, (root, end, name_span) in enumerate(documents, start=1):
        name = None
        blanked = _blank(text[:start]) + text[start:end]
        where = f"{source}:{root.start_mark.line + 1}"
        if name_span is not None:
            key, value = name_span
            name = _name_value(value.value if _is_scalar(value) else [], f"{source}:{key.line}")
            stop = key.end_index
            comma = re.compile(r"\s*,").match(text, stop)  # `{name: x, ...}`: its comma too
            stop = comma.end() if comma else stop
            blanked = blanked[: key.index] + _blank(blanked[key.index : stop]) + text[stop:end]
            where = f"{source}:{key.line}"
        try:
            recipe = loads_yaml(blanked, source)
        except UserError as exc:
            raise _stage_error(exc, number, name) from None
        stages.append(Stage(name, recipe, number, where))
        start = end
    return stages


@dataclass(frozen=True)
class _Span:
    index: int
    line: int
    end_index: int


def _yaml_documents(text: str, source: str) -> list[tuple[Any, int, tuple[_Span, Any] | None]]:
    """(root node, end offset, (the `name` key's span, its value node) or None) per non-empty
    document, composed with the recipe limits; syntax errors located at the file's line."""
    import yaml

    from mergetui import bounded_yaml
    from mergetui.recipe import limits
    from mergetui.recipe.yaml_syntax import yaml_classes

    limits.check_text_size(text, source)
    loader = yaml_classes()[0](text)
    documents = []
    try:
        while loader.check_node():
            root = loader.get_node()
            if root is None:
                continue
            documents.append((root, root.end_mark.index, _name_entry(root)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"not valid YAML: {exc.problem or exc.context or 'syntax error'}",
            where=f"{source}{line}",
            fix="fix the syntax at that line",
        ) from None
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML: {exc}", where=source) from None
    except bounded_yaml.LimitExceeded as exc:
        raise exc.located(source) from None
    finally:
        loader.dispose()
    if not documents:
        raise UserError("the file holds no merge", where=source, fix="write a mergekit config")
    return documents


def _name_entry(root: Any) -> tuple[_Span, Any] | None:
    """The top-level `name:` entry of a document: its key's span and its value node."""
    import yaml

    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "name":
            span = _Span(key.start_mark.index, key.start_mark.line + 1, value.end_mark.index)
            return span, value
    return None


def _is_scalar(node: Any) -> bool:
    import yaml

    return isinstance(node, yaml.ScalarNode)


def _blank(text: str) -> str:
    """`text` with every character but line breaks turned into a space."""
    return re.sub(r"[^\n]", " ", text)


# ----------------------------------------------------------------------------------------------
# Names


def _name_value(value: Any, where: str) -> str | None:
    """A stage's name, checked: it becomes a folder name in the intermediate folder."""
    if value is None:
        return None
    if not isinstance(value, str) or not STAGE_NAME_RE.match(value) or value in (".", ".."):
        raise UserError(
            f"a stage's name must be a plain folder name, not {value!r}",
            where=where,
            fix="use letters, digits, '.', '_' and '-' (its output goes to INTERMEDIATE/NAME)",
        )
    return value


def _check_names(stages: list[Stage], source: str) -> None:
    """mergekit-multi's rules: names are unique, and at most one stage has none."""
    seen: dict[str, Stage] = {}
    unnamed: Stage | None = None
    for stage in stages:
        if stage.name is None:
            if unnamed is not None:
                raise UserError(
                    f"stages {unnamed.number} and {stage.number} both have no name; only the "
                    "final stage may be unnamed",
                    where=stage.where,
                    fix="give every stage but the final one a name",
                )
            unnamed = stage
        elif stage.name in seen:
            raise UserError(
                f"two stages are named {stage.name!r} (stages {seen[stage.name].number} and "
                f"{stage.number})",
                where=stage.where,
                fix="rename one of them (and the models that use it)",
            )
        else:
            seen[stage.name] = stage

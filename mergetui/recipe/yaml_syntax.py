"""PyYAML set up for mergekit configs: numbers as mergekit reads them, limits, and key lines.

Both directions share `yaml_classes` (a loader and a dumper that agree on what a number is);
`yaml_compose` parses with `bounded_yaml`'s limits and records the line of every key and list item.
"""

from __future__ import annotations

import re
from typing import Any

from mergetui import bounded_yaml
from mergetui.errors import UserError
from mergetui.recipe import limits
from mergetui.recipe.reader import KeyPath, dotted


def yaml_classes() -> tuple[type, type]:
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


def yaml_compose(text: str, source: str | None) -> tuple[Any, dict[str, int]]:
    """Parse YAML into plain Python data plus the line of every key and list item."""
    import yaml

    limits.check_text_size(text, source)
    loader_cls, _ = yaml_classes()
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


def _yaml_node(loader: Any, node: Any, path: KeyPath, locations: dict[str, int], where: str) -> Any:
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

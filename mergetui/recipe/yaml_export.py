"""Writing mergekit YAML: a config `mergekit-yaml` runs as it is, saying what the recipe says.

mergekit YAML cannot name models or hold `seed`, `output` and `description`: they go into one
`# mergetui: {...}` JSON comment, which mergekit ignores and `yaml_import` reads back, so
TOML -> YAML -> TOML gives the same recipe. `yaml_problems` says what YAML cannot express at all.
A `[search]` table is not written: it is mergetui's (`mergetui evolve`), and mergekit-yaml merges.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe.model import ModelEntry, Recipe, plain_parameters
from mergetui.recipe.reader import TOKENIZER_KEYWORDS
from mergetui.recipe.yaml_syntax import yaml_classes


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

    _, dumper = yaml_classes()
    body = yaml.dump(
        _yaml_data(recipe),
        Dumper=dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return "\n".join(_header(recipe)) + "\n" + body


def _yaml_data(recipe: Recipe) -> dict[str, Any]:
    """The config's keys, in the order mergekit's examples write them."""

    def reference(name: str) -> str:
        return recipe.models[name].reference

    def tokenizer_reference(value: str) -> str:
        return (
            reference(value)
            if value in recipe.models and value not in TOKENIZER_KEYWORDS
            else value
        )

    data = _inputs(recipe, reference)
    data["merge_method"] = recipe.method
    if recipe.base is not None:
        data["base_model"] = reference(recipe.base)
    if recipe.parameters:
        data["parameters"] = plain_parameters(recipe.parameters)
    if recipe.dtype is not None:
        data["dtype"] = recipe.dtype
    if recipe.out_dtype is not None:
        data["out_dtype"] = recipe.out_dtype
    if recipe.tokenizer_source is not None:
        data["tokenizer_source"] = tokenizer_reference(recipe.tokenizer_source)
    if recipe.tokenizer is not None:
        data["tokenizer"] = _tokenizer_block(recipe.tokenizer, tokenizer_reference)
    if recipe.chat_template is not None:
        data["chat_template"] = recipe.chat_template
    return data


def _inputs(recipe: Recipe, reference: Callable[[str], str]) -> dict[str, Any]:
    """`slices:` or `models:`, with references where the recipe has names."""
    if recipe.slices is None:
        models = []
        for entry in recipe.models.values():
            if _unlisted_base(recipe, entry):
                continue  # mergekit adds the base as the last input, where the recipe has it
            item: dict[str, Any] = {"model": entry.reference}
            if entry.parameters:
                item["parameters"] = plain_parameters(entry.parameters)
            models.append(item)
        return {"models": models}
    slices = []
    for slice_ in recipe.slices:
        sources = []
        for source in slice_.sources:
            entry_data: dict[str, Any] = {
                "model": reference(source.model),
                "layer_range": [source.layer_range[0], source.layer_range[1]],
            }
            if source.parameters:
                entry_data["parameters"] = plain_parameters(source.parameters)
            sources.append(entry_data)
        item = {"sources": sources}
        if slice_.base is not None:
            item["base_model"] = reference(slice_.base)
        if slice_.parameters:
            item["parameters"] = plain_parameters(slice_.parameters)
        slices.append(item)
    return {"slices": slices}


def _tokenizer_block(block: dict[str, Any], reference: Callable[[str], str]) -> dict[str, Any]:
    """The `tokenizer:` block with model names turned back into references."""
    block = json.loads(json.dumps(block))
    if isinstance(block.get("source"), str):
        block["source"] = reference(block["source"])
    for token in (block.get("tokens") or {}).values():
        source = token.get("source") if isinstance(token, dict) else None
        if isinstance(source, str):
            token["source"] = reference(source)
        elif isinstance(source, dict) and isinstance(source.get("model"), str):
            source["model"] = reference(source["model"])
    return block


def _header(recipe: Recipe) -> list[str]:
    """The comment lines above the config, ending with the `# mergetui:` line."""
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
    return header


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

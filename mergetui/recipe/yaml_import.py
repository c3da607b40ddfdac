"""Reading mergekit YAML: a config translated into mergetui's TOML-shaped data, then the one builder.

mergekit YAML is what people already have, copied from model cards, so it is imported key for key.
The translation does only what is YAML's own: a list of `model:` entries becomes named models,
`path@revision` references become names, `layer_range` becomes `layers`, and the `# mergetui:`
comment (see `yaml_export`) gives back model names, seed, output and description. Every shape check
is then `recipe.reader`'s, with errors naming the YAML key and line that was written.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mergetui.errors import UserError
from mergetui.recipe.model import Recipe
from mergetui.recipe.reader import (
    MODEL_NAME_RE,
    TOKENIZER_KEYWORDS,
    KeyPath,
    RecipeReader,
    build_recipe,
    dotted,
)
from mergetui.recipe.yaml_syntax import yaml_compose

_TOP_KEYS = (
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
    "search",  # mergetui's search settings (docs/evolve.md); mergekit ignores the key
)
_UNSUPPORTED = {
    "modules": (
        "per-module merges (`modules:`) are not supported",
        "merge single-module (text) models with `models:` or `slices:`",
    ),
    "residual_weight": (
        "`residual_weight` is not supported",
        "remove it; mergekit 0.1.5 does not use it either",
    ),
}
_MODEL_KEYS = ("model", "parameters")
_SLICE_KEYS = ("sources", "base_model", "parameters", "residual_weight")
_SOURCE_KEYS = ("model", "layer_range", "parameters")
# Keys that move under [merge]: each keeps its name there but `merge_method` (`method`).
_MERGE_KEYS = {
    "merge_method": "method",
    **{
        key: key for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template", "tokenizer")
    },
}

_META_RE = re.compile(r"^#\s*mergetui:\s*(.*?)\s*$", re.MULTILINE)

# (path, revision, lora): mergekit's `path@revision+adapter` reference.
Reference = tuple[str, str | None, str | None]


def loads_yaml(text: str, source: str | None = None) -> Recipe:
    """A recipe from a mergekit YAML config (as `mergekit-yaml` reads it)."""
    config, raw_locations = yaml_compose(text, source)
    return recipe_from_config(config, raw_locations, source, _meta(text, source))


def recipe_from_config(
    config: Any,
    raw_locations: dict[str, int],
    source: str | None,
    meta: dict[str, Any] | None = None,
) -> Recipe:
    """A recipe from mergekit config data (what `yaml_compose` read, with the line of each key):
    `loads_yaml`, and the mergekit-evolve import, whose genome is such a config."""
    reader = RecipeReader(source, raw_locations)
    if not isinstance(config, dict):
        raise reader.fail((), "a mergekit config must be a mapping (merge_method:, models: ...)")
    importer = _YamlImport(reader, meta or {})
    data = importer.translate(config)
    recipe = build_recipe(data, RecipeReader(source, raw_locations, importer.origins))
    recipe.locations = importer.lines
    recipe.source_path = source
    return recipe


def _meta(text: str, source: str | None) -> dict[str, Any]:
    """The last `# mergetui: {...}` comment's JSON (empty when there is none)."""
    matches = list(_META_RE.finditer(text))
    if not matches:
        return {}
    match = matches[-1]
    try:
        parsed = json.loads(match.group(1))
    except json.JSONDecodeError as exc:
        line = text.count("\n", 0, match.start()) + 1
        raise UserError(
            f"the '# mergetui:' comment is not valid JSON ({exc.msg})",
            where=f"{source or '<recipe>'}:{line}",
            fix="repair it or delete the line (model names, seed and output are kept there)",
        ) from None
    return parsed if isinstance(parsed, dict) else {}


def split_reference(text: str) -> tuple[str, str | None]:
    """mergekit's `path@revision` (at most one '@')."""
    if text.count("@") > 1:
        raise ValueError(f"invalid model reference '{text}': more than one '@'")
    if "@" in text:
        path, revision = text.split("@")
        return (path, revision or None)
    return (text, None)


def parse_reference(text: str) -> Reference:
    """mergekit's `path@revision+adapter@revision` (at most one '+', at most one '@' each side);
    the adapter is kept as written (`lora`)."""
    model, plus, lora = text.partition("+")
    if plus and ("+" in lora or not lora.strip() or not model.strip()):
        raise ValueError(f"invalid model reference '{text}': write model+adapter (one '+')")
    if lora.count("@") > 1:
        raise ValueError(f"invalid adapter reference '{lora}': more than one '@'")
    path, revision = split_reference(model)
    return (path, revision, lora or None)


def format_reference(key: Reference) -> str:
    """A reference as mergekit writes it."""
    model = f"{key[0]}@{key[1]}" if key[1] else key[0]
    return f"{model}+{key[2]}" if key[2] else model


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


# ----------------------------------------------------------------------------------------------
# The translation


class _YamlImport:
    """Translates mergekit YAML data into TOML-shaped data: names the models, and maps each recipe
    key path to the YAML one it came from (`origins`, for errors; `lines`, for the recipe)."""

    def __init__(self, reader: RecipeReader, meta: dict[str, Any]) -> None:
        self.reader = reader
        self.meta = meta
        self.raw_lines = dict(reader.locations)
        self.lines: dict[str, int] = {}
        self.origins: dict[KeyPath, KeyPath] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.by_reference: dict[Reference, str] = {}
        self.search: Any = None
        self.meta_names: dict[Reference, str] = {}
        self.meta_order: list[Reference] = []
        meta_models = meta.get("models") if isinstance(meta.get("models"), list) else []
        for item in meta_models:
            if (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(x, str) for x in item)
                and MODEL_NAME_RE.match(item[0])
            ):
                try:
                    key = parse_reference(item[1])
                except ValueError:
                    continue
                if key not in self.meta_names and item[0] not in self.meta_names.values():
                    self.meta_names[key] = item[0]
                    self.meta_order.append(key)

    def relocate(self, raw: KeyPath, recipe: KeyPath) -> None:
        """Give the recipe path (and everything under it) the lines and the name of the YAML path."""
        if raw:
            self.origins.setdefault(recipe, raw)
        prefix = dotted(raw)
        target = dotted(recipe)
        for key, line in self.raw_lines.items():
            if key == prefix:
                self.lines.setdefault(target, line)
            elif key.startswith(prefix + "."):
                self.lines.setdefault(target + key[len(prefix) :], line)

    def translate(self, config: dict[str, Any]) -> dict[str, Any]:
        """The TOML-shaped data `config` says, or UserError for what only YAML gets wrong."""
        reader = self.reader
        self.check_top_level(config)
        for raw_key, recipe_key in _MERGE_KEYS.items():
            self.relocate((raw_key,), ("merge", recipe_key))
        self.relocate(("parameters",), ("parameters",))
        base_key = None
        if config.get("base_model") is not None:
            base_key = self.reference(config["base_model"], ("base_model",))
        slices = None
        if config.get("models"):
            self.listed_models(config["models"])
        else:
            raw_slices = reader.sized(config["slices"], ("slices",))
            if not isinstance(raw_slices, list):
                raise reader.fail(("slices",), "'slices' must be a list of - sources: entries")
            slices = [self.slice(raw, ("slices", i)) for i, raw in enumerate(raw_slices)]
        merge = {
            key: config[raw] for raw, key in _MERGE_KEYS.items() if config.get(raw) is not None
        }
        if base_key is not None:
            unlisted = slices is None and base_key not in self.by_reference
            merge["base"] = self.name_for(base_key, ("base_model",))
            if unlisted:
                self.models[merge["base"]]["listed"] = False
            self.relocate(("base_model",), ("merge", "base"))
        if slices is not None:
            self.apply_meta_order()
        self.tokenizer_settings(merge)
        self.search = config.get("search")
        self.relocate(("search",), ("search",))
        return self.recipe_data(merge, config.get("parameters"), slices)

    def check_top_level(self, config: dict[str, Any]) -> None:
        reader = self.reader
        for key in config:
            if key in _UNSUPPORTED:
                message, fix = _UNSUPPORTED[key]
                raise reader.fail((key,), message, fix)
        reader.check_keys(config, _TOP_KEYS, (), "a mergekit config")
        reader.string(config.get("merge_method"), ("merge_method",), required=True)
        if bool(config.get("models")) == bool(config.get("slices")):
            raise reader.fail(
                (),
                "a mergekit config needs exactly one of 'models' or 'slices'",
                "list the models to merge under models:, or layer ranges under slices:",
            )

    def recipe_data(
        self, merge: dict[str, Any], parameters: Any, slices: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """The translated pieces, with what the `# mergetui:` comment keeps."""
        meta = self.meta
        if isinstance(meta.get("output"), str):
            merge["output"] = meta["output"]
        if isinstance(meta.get("seed"), int) and not isinstance(meta.get("seed"), bool):
            merge["seed"] = meta["seed"]
        data: dict[str, Any] = {"merge": merge, "models": self.models}
        if isinstance(meta.get("description"), str):
            data["description"] = meta["description"]
        if parameters is not None:
            data["parameters"] = parameters
        if self.search is not None:
            data["search"] = self.search
        if slices is not None:
            data["slices"] = slices
        return data

    # Models ------------------------------------------------------------------------------------

    def reference(self, raw: Any, path: KeyPath) -> Reference:
        if isinstance(raw, dict):
            self.reader.check_keys(raw, ("model", "lora", "override_architecture"), path, "a model")
            if raw.get("override_architecture") is not None:
                raise self.reader.fail(
                    path + ("override_architecture",),
                    "'override_architecture' is not supported",
                    "remove it; mergetui reads the architecture from config.json",
                )
            lora = None
            if raw.get("lora") is not None:
                lora = format_reference(self.model_path(raw["lora"], path + ("lora",)) + (None,))
            text, revision = self.model_path(raw.get("model"), path + ("model",))
            return (text, revision, lora)
        text = self.reader.string(raw, path, required=True)
        assert text is not None
        try:
            return parse_reference(text)
        except ValueError as exc:
            raise self.reader.fail(
                path, str(exc), "write path, path@revision or path+adapter"
            ) from None

    def model_path(self, raw: Any, path: KeyPath) -> tuple[str, str | None]:
        """mergekit's ModelPath: `path@revision`, or a `{path, revision}` mapping."""
        if isinstance(raw, dict):
            self.reader.check_keys(raw, ("path", "revision"), path, "a model path")
            text = self.reader.string(raw.get("path"), path + ("path",), required=True)
            revision = self.reader.string(raw.get("revision"), path + ("revision",))
            assert text is not None
            return (text, revision)
        text = self.reader.string(raw, path, required=True)
        assert text is not None
        try:
            return split_reference(text)
        except ValueError as exc:
            raise self.reader.fail(path, str(exc), "write path or path@revision") from None

    def name_for(self, key: Reference, path: KeyPath) -> str:
        """The recipe name for a model reference, registering the model on first sight."""
        if key in self.by_reference:
            return self.by_reference[key]
        taken = set(self.models) | set(self.by_reference.values())
        name = self.meta_names.get(key)
        if name is None or name in taken:
            reserved = [other for ref, other in self.meta_names.items() if ref != key]
            named = derive_model_name(key[2].partition("@")[0]) if key[2] else None
            name = _unique_name(named or derive_model_name(key[0]), taken | set(reserved))
        self.by_reference[key] = name
        self.models[name] = {"source": key[0]}
        if key[1] is not None:
            self.models[name]["revision"] = key[1]
        if key[2] is not None:
            self.models[name]["lora"] = key[2]
            self.relocate(path, ("models", name, "lora"))
        self.relocate(path, ("models", name))
        self.relocate(path, ("models", name, "source"))
        return name

    def listed_models(self, raw: Any) -> None:
        """`models:`: each entry becomes a named model with its parameters."""
        reader = self.reader
        raw_models = reader.sized(raw, ("models",))
        if not isinstance(raw_models, list):
            raise reader.fail(("models",), "'models' must be a list of - model: entries")
        for i, raw_item in enumerate(raw_models):
            path = ("models", i)
            item = reader.table(raw_item, path, "model, parameters")
            reader.check_keys(item, _MODEL_KEYS, path, "a models entry")
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
            if item.get("parameters") is not None:
                self.models[name]["parameters"] = item["parameters"]
            self.relocate(path + ("parameters",), ("models", name, "parameters"))
            self.relocate(path, ("models", name))

    def apply_meta_order(self) -> None:
        """Slices form: restore the recipe's model order (and unused models) from the meta comment."""
        ordered: dict[str, dict[str, Any]] = {}
        for key in self.meta_order:
            name = self.by_reference.get(key)
            if name is None:
                name = self.name_for(key, ())
            ordered[name] = self.models[name]
        for name, entry in self.models.items():
            ordered.setdefault(name, entry)
        self.models = ordered

    # Slices and the tokenizer ------------------------------------------------------------------

    def slice(self, raw: Any, path: KeyPath) -> dict[str, Any]:
        reader = self.reader
        table = reader.table(raw, path, "sources, base_model, parameters")
        for key in table:
            if key in _UNSUPPORTED:
                message, fix = _UNSUPPORTED[key]
                raise reader.fail(path + (key,), message, fix)
        reader.check_keys(table, _SLICE_KEYS, path, "a slice")
        raw_sources = reader.sized(table.get("sources"), path + ("sources",))
        if not isinstance(raw_sources, list) or not raw_sources:
            raise reader.fail(path, f"'{dotted(path)}' needs a list of sources")
        sources = [self.source(raw, path + ("sources", j)) for j, raw in enumerate(raw_sources)]
        data: dict[str, Any] = {"sources": sources}
        if table.get("base_model") is not None:
            key = self.reference(table["base_model"], path + ("base_model",))
            data["base"] = self.name_for(key, path + ("base_model",))
            self.relocate(path + ("base_model",), path + ("base",))
        if table.get("parameters") is not None:
            data["parameters"] = table["parameters"]
        self.relocate(path, path)
        return data

    def source(self, raw: Any, path: KeyPath) -> dict[str, Any]:
        reader = self.reader
        item = reader.table(raw, path, "model, layer_range, parameters")
        reader.check_keys(item, _SOURCE_KEYS, path, "a slice source")
        if "model" not in item or "layer_range" not in item:
            raise reader.fail(path, f"'{dotted(path)}' needs model and layer_range", "add both")
        name = self.name_for(self.reference(item["model"], path + ("model",)), path + ("model",))
        data = {"model": name, "layers": item["layer_range"]}
        if item.get("parameters") is not None:
            data["parameters"] = item["parameters"]
        self.relocate(path + ("layer_range",), path + ("layers",))
        return data

    def tokenizer_settings(self, merge: dict[str, Any]) -> None:
        """Model references in `tokenizer_source` and the `tokenizer:` block become names."""
        if "tokenizer_source" in merge:
            merge["tokenizer_source"] = self.tokenizer_reference(
                merge["tokenizer_source"], ("tokenizer_source",)
            )
        if isinstance(merge.get("tokenizer"), dict):
            merge["tokenizer"] = self.tokenizer_block(merge["tokenizer"], ("tokenizer",))
        if "tokenizer_source" in merge and "tokenizer" in merge:
            raise self.reader.fail(
                ("tokenizer",),
                "both 'tokenizer_source' and 'tokenizer' are set",
                "keep one: tokenizer.source does what tokenizer_source does",
            )

    def tokenizer_reference(self, raw: Any, path: KeyPath) -> str:
        """A tokenizer source: 'base'/'union', a model's name, or the path as written."""
        if isinstance(raw, str) and raw in TOKENIZER_KEYWORDS:
            return raw
        key = self.reference(raw, path)
        if key in self.by_reference:
            return self.by_reference[key]
        return format_reference(key)

    def tokenizer_block(self, raw: dict[str, Any], path: KeyPath) -> dict[str, Any]:
        """The block with its model references as names; its shape is the builder's to check."""
        block = dict(raw)
        if block.get("source") is not None:
            block["source"] = self.tokenizer_reference(block["source"], path + ("source",))
        tokens = block.get("tokens")
        if tokens is not None:
            tokens = self.reader.table(tokens, path + ("tokens",), "token: {source, force}")
            block["tokens"] = {
                str(token): self.token(entry, path + ("tokens", token))
                for token, entry in tokens.items()
            }
        return block

    def token(self, raw: Any, path: KeyPath) -> Any:
        if not isinstance(raw, dict):
            return raw
        entry = dict(raw)
        source = entry.get("source")
        if isinstance(source, dict) and source.get("model") is not None:
            model = self.tokenizer_reference(source["model"], path + ("source", "model"))
            entry["source"] = {**source, "model": model}
        elif source is not None and not isinstance(source, dict):
            entry["source"] = self.tokenizer_reference(source, path + ("source",))
        return entry

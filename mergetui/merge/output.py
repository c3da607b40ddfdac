"""Everything beside the weights that makes a merged folder usable: config, generation config,
tokenizer and chat template, a model card, and the recipe itself.

`build_output_config` is pure dict work (the plan calls it, so a dry run already knows the config);
`write_extras` writes the files into the temporary output folder before it is renamed into place.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mergetui.checkpoints.hub.card import CARD_FILE  # the model card, where the Hub reads it
from mergetui.errors import UserError

if TYPE_CHECKING:
    from mergetui.merge.plan import Plan
    from mergetui.recipe.model import Recipe

# Files that make up a tokenizer (and its chat template), copied from the donor as they are.
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

# Config keys holding the layer count, in the order they are looked for.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Config lists with one entry per layer: rebuilt from the source layers of a layer stack.
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")
# Config keys holding the vocabulary size.
VOCAB_KEYS = ("vocab_size", "n_vocab", "padded_vocab_size")

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
RECIPE_FILE = "mergetui.toml"
MERGEKIT_FILE = "mergekit_config.yml"
PROJECT_URL = "https://github.com/mergetui/mergetui"


def dtype_config_key() -> str:
    """transformers >= 4.56 writes `dtype` (and still reads `torch_dtype`); older ones only know
    `torch_dtype`."""
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        return "dtype"
    parts = []
    for piece in version.split(".")[:2]:
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group()) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return "dtype" if tuple(parts) >= (4, 56) else "torch_dtype"


def config_layer_key(config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(section, key) of the layer count: section None for the top level, "text_config" for the
    multimodal configs that nest the language model."""
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return None, key
    nested = config.get("text_config")
    if isinstance(nested, Mapping):
        for key in LAYER_COUNT_KEYS:
            if isinstance(nested.get(key), int):
                return "text_config", key
    return None, None


def config_vocab_size(config: Mapping[str, Any]) -> int | None:
    for holder in (config, config.get("text_config")):
        if isinstance(holder, Mapping):
            for key in VOCAB_KEYS:
                if isinstance(holder.get(key), int):
                    return int(holder[key])
    return None


def build_output_config(
    donor_config: Mapping[str, Any],
    *,
    dtype_name: str | None,
    layer_sources: Sequence[tuple[Mapping[str, Any], int]] | None,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """The merged model's config.json: the donor's, with dtype, layer count and per-layer lists
    rewritten.

    `layer_sources` lists, per output layer, the config of the model it comes from and its layer
    index there; None leaves the layer count alone (no layered module found).
    """
    config = copy.deepcopy(dict(donor_config))
    config.pop("_name_or_path", None)
    if dtype_name:
        key = dtype_config_key()
        other = "torch_dtype" if key == "dtype" else "dtype"
        config.pop(other, None)
        config[key] = dtype_name
        nested = config.get("text_config")
        if isinstance(nested, dict):
            nested.pop(other, None)
            if key in nested or other in donor_config.get("text_config", {}):
                nested[key] = dtype_name
    if layer_sources is not None:
        section, key = config_layer_key(config)
        if key is not None:
            holder = config if section is None else config[section]
            donor_layers = holder[key]
            holder[key] = len(layer_sources)
            for list_key in PER_LAYER_KEYS:
                values = holder.get(list_key)
                if not isinstance(values, list) or len(values) != donor_layers:
                    continue
                rebuilt = []
                for source_config, source_layer in layer_sources:
                    source_holder = (
                        source_config if section is None else source_config.get(section, {})
                    )
                    source_values = source_holder.get(list_key)
                    if isinstance(source_values, list) and source_layer < len(source_values):
                        rebuilt.append(source_values[source_layer])
                    else:
                        rebuilt.append(values[min(source_layer, len(values) - 1)])
                holder[list_key] = rebuilt
    if vocab_size is not None:
        for holder in (config, config.get("text_config")):
            if isinstance(holder, dict):
                for key in VOCAB_KEYS:
                    if isinstance(holder.get(key), int):
                        holder[key] = vocab_size
                        break
    return config


# ----------------------------------------------------------------------------------------------
# Writing the files


@dataclass
class Extras:
    """What the extras need that could fail, prepared before the weights are computed, so a
    problem with them never costs a finished merge."""

    recipe_toml: str
    recipe_yaml: str | None
    tokenizer: Any = None  # a loaded tokenizer, when a chat template must be set on it
    notices: list[str] = field(default_factory=list)


def prepare_extras(plan: Plan) -> Extras:
    """Serialise the recipe and, with a chat template, load the donor's tokenizer (fail early)."""
    recipe_toml, recipe_yaml = recipe_texts(plan)
    extras = Extras(recipe_toml, recipe_yaml)
    donor_name = plan.tokenizer_donor
    donor = plan.models[donor_name].path
    if not any((donor / name).is_file() for name in TOKENIZER_FILES):
        extras.notices.append(
            f"no tokenizer found in {donor_name} ({donor}); the output has none: "
            "copy one in before chatting with it"
        )
    elif plan.chat_template is not None:
        extras.tokenizer = _load_tokenizer(donor_name, donor, trust=plan.trust_remote_code)
        extras.tokenizer.chat_template = plan.chat_template
    return extras


def _load_tokenizer(name: str, folder: Path, *, trust: bool) -> Any:
    """The donor's tokenizer; its own code runs only when trusted, and nothing asks on stdin."""
    from transformers import AutoTokenizer

    from mergetui.merge.remote_code import OPT_IN, no_stdin_prompts

    try:
        with no_stdin_prompts():
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust)
    except Exception as exc:  # noqa: BLE001 - any loading failure means the files are unusable
        if not trust and "trust_remote_code" in str(exc):
            raise UserError(
                f"the tokenizer of model {name!r} needs its own Python code to load, which a merge "
                "does not run unless asked",
                where=str(folder),
                fix=f"pass {OPT_IN} if you trust that code, or remove chat_template from the "
                "recipe (the tokenizer files are then copied as they are)",
            ) from None
        raise UserError(
            f"cannot load the tokenizer of model {name!r} to set the chat template: {exc}",
            where=str(folder),
            fix="remove chat_template from the recipe, or fix that model's tokenizer files",
        ) from exc


def write_extras(plan: Plan, folder: Path, extras: Extras | None = None) -> list[str]:
    """Write config, generation config, tokenizer, card and recipe; return notices for the user."""
    if extras is None:
        extras = prepare_extras(plan)
    write_json(folder / CONFIG_FILE, plan.output_config)
    write_generation_config(plan, folder)
    write_tokenizer(plan, folder, extras)
    if plan.trust_remote_code:
        from mergetui.merge.remote_code import copy_code_files

        copy_code_files(
            [plan.models[plan.donor].path, plan.models[plan.tokenizer_donor].path], folder
        )
    (folder / RECIPE_FILE).write_text(extras.recipe_toml, encoding="utf-8")
    if extras.recipe_yaml is not None:
        (folder / MERGEKIT_FILE).write_text(extras.recipe_yaml, encoding="utf-8")
    card = model_card(plan, extras.recipe_toml, extras.recipe_yaml)
    (folder / CARD_FILE).write_text(card, encoding="utf-8")
    return list(extras.notices)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_generation_config(plan: Plan, folder: Path) -> None:
    """The donor's generation_config.json, or a minimal one carrying the special token ids."""
    donor = plan.models[plan.donor].path / GENERATION_CONFIG_FILE
    if donor.is_file():
        shutil.copyfile(donor, folder / GENERATION_CONFIG_FILE)
        return
    config = plan.output_config
    minimal: dict[str, Any] = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if config.get(key) is not None:
            minimal[key] = config[key]
    write_json(folder / GENERATION_CONFIG_FILE, minimal)


def write_tokenizer(plan: Plan, folder: Path, extras: Extras) -> None:
    """Copy the donor's tokenizer files; with a chat template, save the prepared tokenizer.
    Untrusted, the tokenizer config keeps no `auto_map` (its code is not copied either)."""
    from mergetui.merge.remote_code import clean_tokenizer_config

    if extras.tokenizer is not None:
        extras.tokenizer.save_pretrained(str(folder))
    else:
        donor = plan.models[plan.tokenizer_donor].path
        for name in TOKENIZER_FILES:
            if (donor / name).is_file():
                shutil.copyfile(donor / name, folder / name)
    if not plan.trust_remote_code:
        clean_tokenizer_config(folder)


def recipe_texts(plan: Plan) -> tuple[str, str | None]:
    """The recipe as run: TOML, and mergekit YAML when mergekit can express it.

    The seed that was used is included and local model paths are made absolute, so the copy reruns
    from anywhere. `output` is left out: the copy lives inside the output, where a relative output
    would name a folder inside this one, and a stale one (the recipe's, after `--out`) would mislead;
    a rerun says where with `--out`. A `[search]` table is left out: the copy says what was merged.
    """
    from mergetui.recipe.toml_write import dumps_toml
    from mergetui.recipe.yaml_export import dumps_yaml

    local = {name: m.local_source for name, m in plan.models.items() if m.local_source is not None}
    recipe = recipe_as_run(plan.recipe, plan.seed, local, plan_adapter_folders(plan))
    toml_text = dumps_toml(recipe)
    try:
        yaml_text: str | None = dumps_yaml(recipe)
    except (UserError, ValueError, TypeError):
        yaml_text = None
    return toml_text, yaml_text


def recipe_as_run(
    recipe: Recipe,
    seed: int | None,
    local_sources: Mapping[str, Path],
    local_adapters: Mapping[str, Path] | None = None,
) -> Recipe:
    """The recipe a merge copies into its output (`recipe_texts`): this seed, these absolute
    folders for the local models and their local LoRA adapters (by default, the adapters found
    from the recipe's own folder), no `output` and no `[search]`. A multi-stage run compares a
    stage's copy with the one in its output folder to skip a stage already merged."""
    from mergetui.recipe.paths import recipe_folder

    adapters = (
        local_adapters
        if local_adapters is not None
        else adapter_folders(recipe, recipe_folder(recipe.source_path))
    )
    recipe = dataclasses.replace(recipe, seed=seed, output=None, search=None)
    models = {}
    for name, entry in recipe.models.items():
        if name in local_sources:
            entry = dataclasses.replace(entry, source=str(local_sources[name]))
        if name in adapters:
            entry = dataclasses.replace(entry, lora=str(adapters[name]))
        models[name] = entry
    return dataclasses.replace(recipe, models=models)


def plan_adapter_folders(plan: Plan) -> dict[str, Path]:
    """The absolute folders of the plan's LoRA adapters that are local folders (not Hub ids)."""
    from mergetui.recipe.paths import folder_of

    used = {name: plan.recipe.models[name] for name in plan.models if name in plan.recipe.models}
    recipe = dataclasses.replace(plan.recipe, models=used)
    return adapter_folders(recipe, folder_of(plan.recipe, plan.recipe_dir))


def adapter_folders(recipe: Recipe, folder: Path) -> dict[str, Path]:
    """Each model's LoRA adapter that is a local folder (read from `folder`, as the planner reads
    it), by model name, absolute."""
    from mergetui.recipe.paths import locate_adapter

    found = {}
    for name, entry in recipe.models.items():
        located = locate_adapter(entry.lora, folder) if entry.lora else None
        if located is not None and located[1]:
            found[name] = located[0]
    return found


def model_card(plan: Plan, recipe_toml: str, recipe_yaml: str | None) -> str:
    """README.md with Hugging Face front matter: parents, library, tags; then method, models, recipe."""
    from mergetui.recipe.methods import METHODS

    spec = METHODS[plan.method]
    method_md = f"[{spec.pretty_name}]({spec.paper})" if spec.paper else spec.pretty_name
    base = plan.base
    base_text = f", with {_describe_model(plan, base)} as the base" if base else ""
    others = [name for name in plan.models if name != base]
    lines = [
        "---",
        yaml.safe_dump(_front_matter(plan), sort_keys=False).rstrip(),
        "---",
        f"# {plan.output_dir.name}",
        "",
        f"This is a merge of pre-trained language models made with [mergetui]({PROJECT_URL}).",
        "",
        "## Merge details",
        "",
        "### Method",
        "",
        f"Merged with the {method_md} method{base_text}.",
        "",
        "### Models merged",
        "",
        *[f"* {_describe_model(plan, name)}" for name in others],
        "",
        *_output_lines(plan),
        *_recipe_lines(recipe_toml, recipe_yaml),
    ]
    return "\n".join(lines) + "\n"


def _front_matter(plan: Plan) -> dict[str, Any]:
    """The Hub's metadata: the parents on the Hub (a merge of them), library and tags.

    Plain YAML rather than huggingface_hub's `ModelCardData`: these four keys need none of its
    validation, and importing it (~0.1 s) would land on every merge, which otherwise never loads
    huggingface_hub."""
    hub_parents = []
    for name in plan.models:
        source = plan.models[name].hub_id
        if source and source not in hub_parents:
            hub_parents.append(source)
    front: dict[str, Any] = {}
    if hub_parents:
        front["base_model"] = hub_parents
        front["base_model_relation"] = "merge"
    front["library_name"] = "transformers"
    front["tags"] = ["mergetui", "merge"]
    return front


def _describe_model(plan: Plan, name: str) -> str:
    model = plan.models[name]
    if model.hub_id:
        shown = f"[{model.hub_id}](https://huggingface.co/{model.hub_id})"
        if model.revision:
            shown += f" (revision `{model.revision}`)"
    else:
        # A path means nothing beside the output (`../chat`): name the folder; the recipe
        # below has its full path.
        shown = f"local folder `{model.path.name}`"
    lora = plan.recipe.models[name].lora if name in plan.recipe.models else None
    if model.adapter is not None and lora:
        shown += f" with the LoRA adapter `{lora}` applied"
    return f"**{name}**: {shown}"


def _output_lines(plan: Plan) -> list[str]:
    lines = [
        "### Output",
        "",
        f"* {plan.tensor_count} tensors, {plan.total_bytes:,} bytes in {plan.shard_count} file(s)",
    ]
    if plan.layer_count is not None:
        lines.append(f"* {plan.layer_count} layers")
    if plan.output_dtype:
        lines.append(f"* dtype {plan.output_dtype}")
    if plan.seed is not None:
        lines.append(f"* random seed {plan.seed}")
    return lines


def _recipe_lines(recipe_toml: str, recipe_yaml: str | None) -> list[str]:
    lines = [
        "",
        "### Recipe",
        "",
        f"The mergetui recipe that produced this model (`{RECIPE_FILE}`; rerun it with "
        f"`mergetui merge {RECIPE_FILE} --out NEW_FOLDER`):",
        "",
        "```toml",
        recipe_toml.rstrip(),
        "```",
    ]
    if recipe_yaml is not None:
        lines += [
            "",
            f"The same recipe as a mergekit configuration (`{MERGEKIT_FILE}`):",
            "",
            "```yaml",
            recipe_yaml.rstrip(),
            "```",
        ]
    return lines

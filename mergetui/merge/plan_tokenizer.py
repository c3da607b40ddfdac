"""The planner's tokenizer checks and choices: vocabularies must agree (mergekit's vocabulary
permutation and embedding surgery are refused, with why), which model gives the tokenizer, and
which chat template the output gets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.errors import UserError
from mergetui.merge.output import config_vocab_size

if TYPE_CHECKING:
    from mergetui.merge.plan_models import PlannedModel
    from mergetui.recipe.model import Recipe


def check_vocabularies(recipe: Recipe, models: Mapping[str, PlannedModel]) -> None:
    """Vocabulary sizes must agree; mergekit's vocabulary permutation is not implemented."""
    sizes = {}
    for name, model in models.items():
        size = config_vocab_size(model.config)
        if size is None:
            size = model.checkpoint.vocab_size
        if size is not None:
            sizes[name] = size
    differing = len(set(sizes.values())) > 1
    tokenizer_setting = recipe.tokenizer_source or (recipe.tokenizer or {}).get("source")
    if recipe.tokenizer is not None and tokenizer_setting is None:
        tokenizer_setting = "union"  # mergekit's default for a tokenizer block
    detail = ", ".join(f"{name} has {size}" for name, size in sizes.items())
    if differing:
        if tokenizer_setting is not None:
            raise UserError(
                f"vocabulary sizes differ ({detail}) and the recipe asks for mergekit's tokenizer "
                f"merge (tokenizer source {tokenizer_setting!r}), which mergetui does not "
                "implement: it cannot re-map embedding rows between vocabularies",
                where="tokenizer_source" if recipe.tokenizer_source else "tokenizer",
                fix="merge models that share one tokenizer, or run this recipe with mergekit",
            )
        raise UserError(
            f"vocabulary sizes differ: {detail}",
            where="models",
            fix="merge models with the same tokenizer and vocabulary size",
        )
    if tokenizer_setting is not None:
        reference = _check_same_tokenizers(models, tokenizer_setting, sizes)
        _check_tokenizer_block(recipe.tokenizer or {}, reference, sizes)


def _check_tokenizer_block(
    block: Mapping[str, Any], vocab: Mapping[str, int] | None, sizes: Mapping[str, int]
) -> None:
    """A `tokenizer:` block is only a no-op here: new or forced tokens, or padding that would
    change the vocabulary size, need mergekit's embedding surgery, which is refused."""
    tokens = block.get("tokens") or {}
    for token, setting in tokens.items():
        forced = isinstance(setting, Mapping) and bool(setting.get("force"))
        if forced or vocab is None or token not in vocab:
            raise UserError(
                f"the tokenizer block {'forces' if forced else 'adds'} the token {token!r}, "
                "which needs mergekit's embedding surgery; mergetui does not implement it",
                where=f"tokenizer.tokens.{token}",
                fix="remove it from the recipe, or run this recipe with mergekit",
            )
    multiple = block.get("pad_to_multiple_of")
    size = next(iter(sizes.values()), None)
    if multiple and size is not None and size % int(multiple):
        raise UserError(
            f"pad_to_multiple_of = {multiple} would resize the {size}-row embeddings, which "
            "mergetui does not implement",
            where="tokenizer.pad_to_multiple_of",
            fix="remove pad_to_multiple_of, or run this recipe with mergekit",
        )


def _check_same_tokenizers(
    models: Mapping[str, PlannedModel], setting: str, sizes: Mapping[str, int]
) -> dict[str, int] | None:
    """With one shared vocabulary, mergekit's permutation is the identity: allow it; else refuse."""
    vocabularies = {}
    for name, model in models.items():
        vocab = _tokenizer_vocab(model.path)
        if vocab is not None:
            vocabularies[name] = vocab
    names = list(vocabularies)
    reference = vocabularies[names[0]] if names else None
    for name in names[1:]:
        if vocabularies[name] != reference:
            raise UserError(
                f"the tokenizers of {names[0]!r} and {name!r} differ and the recipe asks for "
                f"mergekit's tokenizer merge (tokenizer source {setting!r}), which mergetui does "
                "not implement",
                where="tokenizer_source",
                fix="merge models that share one tokenizer, or run this recipe with mergekit",
            )
    if reference is not None and sizes:
        size = next(iter(sizes.values()))
        if len(reference) != size:
            raise UserError(
                f"the tokenizer has {len(reference)} tokens but the embeddings have {size} rows; "
                f"mergekit would resize them to the tokenizer (tokenizer source {setting!r}), "
                "which mergetui does not implement",
                where="tokenizer_source",
                fix="remove tokenizer_source from the recipe (the tokenizers are the same)",
            )
    return reference


def _tokenizer_vocab(folder: Path) -> dict[str, int] | None:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    except Exception:  # noqa: BLE001 - an unreadable tokenizer compares as unknown
        return None


def tokenizer_donor(recipe: Recipe, models: Mapping[str, PlannedModel], donor: str) -> str:
    source = recipe.tokenizer_source or (recipe.tokenizer or {}).get("source")
    if isinstance(source, str) and source in models:
        return source
    if isinstance(source, str) and source not in ("base", "union") and source in recipe.models:
        raise UserError(
            f"tokenizer source {source!r} is not one of the merged models",
            where="tokenizer_source",
        )
    return donor


def chat_template(recipe: Recipe, models: Mapping[str, PlannedModel]) -> str | None:
    from mergetui.merge.chat_templates import resolve_chat_template

    if not recipe.chat_template:
        return None
    templates = []
    if recipe.chat_template == "auto":
        templates = [_model_chat_template(m.path) for m in models.values()]
    return resolve_chat_template(recipe.chat_template, templates)


def _model_chat_template(folder: Path) -> str | None:
    import json

    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name, key in (
        ("chat_template.json", "chat_template"),
        ("tokenizer_config.json", "chat_template"),
    ):
        path = folder / name
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get(key)
            except (ValueError, AttributeError):
                continue
            if isinstance(value, list):  # named templates: take the default
                value = next((v.get("template") for v in value if v.get("name") == "default"), None)
            if isinstance(value, str):
                return value
    return None

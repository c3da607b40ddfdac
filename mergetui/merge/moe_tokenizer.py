"""The tokenizer an MoE assembly tokenises its prompts with and saves beside the output, as
mergekit-moe does: the base's, padded on the left with BOS (EOS when there is none), BOS text
prefixed to each prompt, no special tokens added.

transformers' `AutoTokenizer` costs seconds of imports (most of a cheap_embed assembly's time).
Where the base's tokenizer is one transformers itself runs straight from its `tokenizer.json`
(a llama or mistral base, class `TokenizersBackend`, alias `PreTrainedTokenizerFast`, with nothing
in its config that transformers would add or change), the `tokenizers` library runs that same file: the same ids,
and the files are copied with the pad token set. Any other tokenizer, and every `hidden` gate
mode (which loads the model through transformers anyway), goes through `AutoTokenizer`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.errors import UserError
from mergetui.merge.remote_code import read_json_object

if TYPE_CHECKING:
    from mergetui.merge.moe_plan import MoePlan

_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# tokenizer_config.json keys whose meaning the plain path reproduces (or that do not touch ids).
_PLAIN_KEYS = {
    "backend",
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "model_max_length",
    "tokenizer_class",
    "clean_up_tokenization_spaces",
    "chat_template",
}
# Files transformers would read besides these two, which the plain path does not.
_OTHER_FILES = ("special_tokens_map.json", "added_tokens.json", "tokenizer.model", "tekken.json")
# Model types whose tokenizer AutoTokenizer takes as the tokenizer_config names it (for qwen2, for
# one, it substitutes its own Qwen2Tokenizer class).
_PLAIN_MODEL_TYPES = ("llama", "mistral")
_SAVED_FILES = ("tokenizer.json", "chat_template.jinja", "chat_template.json")
_MISTRAL_REGEX_VOCAB = 100_000  # above it transformers may patch the pre-tokenizer


def load_gate_tokenizer(plan: MoePlan) -> Any:
    """The base's tokenizer with mergekit-moe's padding: a `PlainTokenizer` where it gives
    transformers' ids, else transformers' own (`HfGateTokenizer`)."""
    base = plan.models["base"]
    folder = base.path
    if not plan.recipe.gate_mode.startswith("hidden") and base.model_type in _PLAIN_MODEL_TYPES:
        plain = PlainTokenizer.open(folder)
        if plain is not None:
            return plain
    return HfGateTokenizer(folder)


class HfGateTokenizer:
    """transformers' `AutoTokenizer` of the base, padded as mergekit-moe pads it."""

    def __init__(self, folder: Path) -> None:
        import transformers

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load the base's tokenizer: {exc}",
                where=str(folder),
                fix="the gates are computed from the prompts' tokens: the base needs its tokenizer",
            ) from None
        tokenizer.padding_side = "left"
        tokenizer.pad_token_id = tokenizer.bos_token_id
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer

    def encode(self, prompts: list[str]) -> Any:
        """mergekit-moe's `tokenizer(...)` call: a BatchEncoding of input_ids, attention_mask."""
        tokenizer = self.tokenizer
        return tokenizer(
            [(tokenizer.bos_token or "") + p for p in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))


class PlainTokenizer:
    """The base's `tokenizer.json` run by the `tokenizers` library, where transformers runs it
    unchanged (`open` says where)."""

    def __init__(self, folder: Path, backend: Any, config: dict[str, Any], bos: str | None):
        self.folder = folder
        self.backend = backend
        self.config = config
        self.bos = bos
        pad = bos if bos is not None else _token_text(config.get("eos_token"))
        self.pad_text = pad
        self.pad_id = backend.token_to_id(pad) if pad is not None else None

    @classmethod
    def open(cls, folder: Path) -> PlainTokenizer | None:
        """The plain tokenizer of `folder`, or None where transformers might tokenise otherwise
        than its tokenizer.json alone does (the caller then uses transformers)."""
        config = read_json_object(folder / "tokenizer_config.json")
        if config is None or not (folder / "tokenizer.json").is_file():
            return None
        if config.get("tokenizer_class") not in _PLAIN_CLASSES or set(config) - _PLAIN_KEYS:
            return None
        if any((folder / name).exists() for name in _OTHER_FILES):
            return None
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception:  # noqa: BLE001 - transformers then reports what is wrong with it
            return None
        special = [config.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")]
        if not all(v is None or isinstance(v, str) for v in special):
            return None
        added = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        if any(v is not None and v not in added for v in special):
            return None  # transformers would add it to the vocabulary first
        if backend.get_vocab_size() > _MISTRAL_REGEX_VOCAB:
            return None
        plain = cls(folder, backend, config, config.get("bos_token"))
        if plain.pad_id is None:
            return None
        backend.no_padding()
        backend.no_truncation()
        return plain

    def encode(self, prompts: list[str]) -> dict[str, Any]:
        """What `HfGateTokenizer.encode` gives: ids padded on the left, and the mask."""
        import torch

        texts = [(self.bos or "") + p for p in prompts]
        ids = [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        width = max(len(i) for i in ids)
        padded = [[self.pad_id] * (width - len(i)) + i for i in ids]
        mask = [[0] * (width - len(i)) + [1] * len(i) for i in ids]
        return {"input_ids": torch.tensor(padded), "attention_mask": torch.tensor(mask)}

    def save(self, folder: Path) -> None:
        """The base's tokenizer files, its config with the pad token mergekit-moe sets."""
        for name in _SAVED_FILES:
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, folder / name)
        config = {**self.config, "pad_token": self.pad_text}
        text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (folder / "tokenizer_config.json").write_text(text, encoding="utf-8")


def _token_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None

"""The demo family: a small Llama base trained on prose and code, and a prose and a code fine-tune.

The weights ship in `mergetui/data/demo_family/` (bfloat16 safetensors, made by
`python -m mergetui.demo.train --ship`), beside the tokenizer they were trained with; the config is
built here from FAMILY_SHAPE, so a checkpoint folder is written from those files in a moment and
reads exactly like one saved by transformers.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.demo.tiny import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    _quiet_transformers,
    _tiny_config,
    save_tokenizer,
)

FAMILY_MODELS = ("base", "prose", "code")
FAMILY_PARTS = ("demo_family",)
FAMILY_DTYPE = "bfloat16"


@dataclass(frozen=True)
class FamilyShape:
    """The Llama shape of the family (heads: hidden / 16, key-value heads half of them)."""

    num_layers: int = 8
    hidden_size: int = 128
    intermediate_size: int = 256
    vocab_size: int = 1024
    # Positions the model is trained on (and its max_position_embeddings): a chat reply of 256
    # tokens (the default) still leaves room for the prompt.
    context: int = 512


# What ships: about a million parameters per model, 2 MB in bfloat16.
FAMILY_SHAPE = FamilyShape(num_layers=6)


def family_dir() -> Path:
    """Where the shipped family lives (inside the installed package)."""
    from importlib import resources

    return Path(str(resources.files("mergetui"))).joinpath("data", *FAMILY_PARTS)


def tokenizer_json_path() -> Path:
    return family_dir() / "tokenizer.json"


def family_config(shape: FamilyShape = FAMILY_SHAPE) -> Any:
    """The LlamaConfig of a family of `shape`: tied embeddings, our special token ids."""
    config = _tiny_config(
        "llama",
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
    )
    config.max_position_embeddings = shape.context
    config.tie_word_embeddings = True
    config.architectures = ["LlamaForCausalLM"]
    return config


def write_family_model(
    folder: Path, weights: Path, tokenizer_json: str, shape: FamilyShape = FAMILY_SHAPE
) -> Path:
    """A checkpoint folder from a weights file: config, generation config, weights, tokenizer."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    config = family_config(shape)
    config.dtype = getattr(torch, FAMILY_DTYPE)
    with _quiet_transformers():
        config.save_pretrained(str(folder))
        transformers.GenerationConfig(
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
        ).save_pretrained(str(folder))
    shutil.copyfile(weights, folder / "model.safetensors")
    save_tokenizer(tokenizer_json, folder)
    return folder


def save_family_model(
    folder: Path, model: Any, tokenizer_json: str, shape: FamilyShape = FAMILY_SHAPE
) -> Path:
    """Save a trained family model the way the shipped ones are written (`write_family_model`)."""
    import copy

    from mergetui.demo.tiny import save_model

    with tempfile.TemporaryDirectory() as scratch:
        save_model(copy.deepcopy(model), Path(scratch), FAMILY_DTYPE)
        return write_family_model(
            folder, Path(scratch) / "model.safetensors", tokenizer_json, shape
        )


def write_family(out_dir: Path) -> dict[str, Path]:
    """The shipped family as checkpoint folders `out_dir/NAME`, in FAMILY_MODELS order."""
    source = family_dir()
    tokenizer_json = (source / "tokenizer.json").read_text(encoding="utf-8")
    return {
        name: write_family_model(out_dir / name, source / f"{name}.safetensors", tokenizer_json)
        for name in FAMILY_MODELS
    }

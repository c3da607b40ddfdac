"""Shared fixtures: tiny real checkpoints, built once per test session (per xdist worker).

Every model is a genuine transformers model saved with `save_pretrained` (safetensors, config.json,
generation_config.json) plus a byte-level BPE tokenizer trained offline, with a ChatML-like chat
template. Nothing is downloaded. Default sizes: 4 layers, hidden 64, intermediate 128, vocabulary
384, float32 (about 0.8 MB each). See `mergetui.demo.make_tiny_model` for every knob.

Fixtures (all session-scoped; treat the folders as read-only, copy them before changing anything):

- `tokenizer_dir` -> Path: a folder holding only the trained tokenizer (tokenizer.json,
  tokenizer_config.json, chat_template.jinja); bos `<|endoftext|>` (id 0), eos `<|im_end|>` (id 2),
  pad `<|pad|>` (id 3).
- `tiny_model_factory(arch="llama", **kwargs) -> Path`: makes a model with
  `make_tiny_model(path, arch, **kwargs)` in a session folder and returns its path; calls with the same
  arguments return the same folder without rebuilding. Pass `base=<path>` (and a `seed`) for a
  "fine-tune": the base's weights plus seeded Gaussian noise (`noise`, default 0.02).
- `arch_models` -> dict[str, Path]: one model per architecture: "llama", "mistral", "qwen2",
  "gemma" (tied embeddings: no lm_head tensor), "gpt2" (transformer.h.N, tied), "phi3" (fused qkv_proj
  and gate_up_proj). Seed 0, default sizes, float32.
- `llama_family` -> dict[str, Path]: "base" (llama, seed 0) and three fine-tunes of it "a", "b", "c"
  (seeds 1, 2, 3, noise 0.02), float32, same shapes and tokenizer: inputs for task-vector merges.
- `sharded_llama` -> Path: the same weights as `llama_family["base"]`, saved in several shards
  (model-0000i-of-0000N.safetensors) with model.safetensors.index.json.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mergetui.demo import ARCHITECTURES, make_tiny_model, train_tokenizer

TinyModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    root = tmp_path_factory.mktemp("tiny-models")
    made: dict[str, Path] = {}

    def factory(arch: str = "llama", **kwargs: object) -> Path:
        key = json.dumps({"arch": arch, **kwargs}, sort_keys=True, default=str)
        if key not in made:
            digest = hashlib.sha1(key.encode()).hexdigest()[:10]
            made[key] = make_tiny_model(root / f"{arch}-{digest}", arch, **kwargs)
        return made[key]

    return factory


@pytest.fixture(scope="session")
def arch_models(tiny_model_factory: TinyModelFactory) -> dict[str, Path]:
    return {arch: tiny_model_factory(arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def llama_family(tiny_model_factory: TinyModelFactory) -> dict[str, Path]:
    base = tiny_model_factory("llama", seed=0)
    family = {"base": base}
    for seed, name in enumerate(("a", "b", "c"), start=1):
        family[name] = tiny_model_factory("llama", seed=seed, base=base)
    return family


@pytest.fixture(scope="session")
def sharded_llama(tiny_model_factory: TinyModelFactory) -> Path:
    return tiny_model_factory("llama", seed=0, max_shard_size="200KB")

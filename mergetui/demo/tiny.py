"""Tiny real checkpoints, made offline, for the tests (random weights; the demo's are trained).

Everything here builds genuine transformers models from configs and saves them the way the Hub does
(safetensors, sharded on request, config.json, tokenizer with a chat template), so the code that reads
them is exercised exactly as it is on real checkpoints, only smaller. Nothing is downloaded: the
tokenizer is a byte-level BPE trained on a few KB of text bundled in `mergetui/data/`.

torch, transformers and tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from mergetui.dtypes import OUTPUT_NAMES
from mergetui.resources import sample_text

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma", "gpt2", "phi3")

# Special tokens sit at fixed ids 0..3 so every tiny config can name them without a tokenizer.
BOS_TOKEN, IM_START, EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, IM_START, EOS_TOKEN, PAD_TOKEN)
BOS_ID, EOS_ID, PAD_ID = 0, 2, 3
# 256 byte symbols plus the special tokens: a byte-level BPE cannot be smaller.
MIN_TOKENIZER_VOCAB = 256 + len(SPECIAL_TOKENS)
DEFAULT_VOCAB_SIZE = 384

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
)


@cache
def _trained_tokenizer_json(vocab_size: int) -> str:
    """Train once per vocabulary size and process; training is cheap but tests make many models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([sample_text()], trainer=trainer)
    return tokenizer.to_str()


def train_tokenizer(out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Write a byte-level BPE tokenizer with bos/eos/pad and a ChatML-like chat template.

    The vocabulary may come out smaller than `vocab_size` if the sample text runs out of merges; the
    saved tokenizer's `len()` is the truth.
    """
    if vocab_size < MIN_TOKENIZER_VOCAB:
        raise ValueError(
            f"a byte-level BPE needs vocab_size >= {MIN_TOKENIZER_VOCAB}, got {vocab_size}"
        )
    return save_tokenizer(_trained_tokenizer_json(vocab_size), out_dir)


def save_tokenizer(tokenizer_json: str, out_dir: str | Path) -> Path:
    """Save a `tokenizers` JSON as a transformers tokenizer with the special tokens and template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer.from_str(tokenizer_json)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))
    return out


def _copy_tokenizer(source: Path, target: Path) -> bool:
    copied = False
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied = True
    return copied


def _tiny_config(
    arch: str, *, num_layers: int, hidden_size: int, intermediate_size: int, vocab_size: int
) -> Any:
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    heads = max(1, hidden_size // 16)
    kv_heads = max(1, heads // 2)
    tokens = dict(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_inner=intermediate_size,
            n_layer=num_layers,
            n_head=heads,
            n_positions=128,
            **tokens,
        )
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        **tokens,
    )
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "gemma":
        return transformers.GemmaConfig(
            **common, head_dim=hidden_size // heads, tie_word_embeddings=True
        )
    return transformers.Phi3Config(**common)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-save progress bars: tiny saves are instant and tests make many."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_weights_into(model: Any, folder: Path) -> None:
    """Copy a saved checkpoint's tensors into `model` (tied tensors are saved once)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no .safetensors files to fine-tune from")
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{folder} does not match its own config: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()


def save_model(
    model: Any, out: Path, dtype: str, *, max_shard_size: int | str | None = None
) -> None:
    """Save `model` in `dtype` as the Hub does, with generation defaults that use our token ids."""
    import torch
    import transformers

    torch_dtype = getattr(torch, dtype)
    model.to(torch_dtype)
    model.config.dtype = torch_dtype
    # Generation defaults from the config would otherwise carry transformers' own token ids.
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )
    save_kwargs: dict[str, Any] = {}
    if max_shard_size is not None:
        save_kwargs["max_shard_size"] = max_shard_size
    with _quiet_transformers():
        model.save_pretrained(str(out), **save_kwargs)
    for weights in out.glob("*.safetensors"):
        # safetensors writes through a private temp file (mode 0600); make it readable like the rest.
        weights.chmod(0o644)


def make_tiny_model(
    path: str | Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    num_layers: int = 4,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
    dtype: str = "float32",
    max_shard_size: int | str | None = None,
    tokenizer: bool = True,
    base: str | Path | None = None,
    noise: float = 0.02,
) -> Path:
    """Save a small real causal LM at `path` and return the folder.

    Without `base`, weights are the architecture's own random init under `seed`. With `base` (a folder
    made by this function), the model is a "fine-tune": the base's config and weights plus Gaussian
    noise of standard deviation `noise` drawn from `seed`; the shape arguments and `arch` are then
    taken from the base and the ones passed here are ignored. Tied embeddings stay tied.
    """
    import torch
    import transformers

    if dtype not in OUTPUT_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(OUTPUT_NAMES)}, got {dtype!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = Path(base) if base is not None else None

    if base_dir is not None:
        # A base is a folder this function made: its config needs no code of its own.
        config = transformers.AutoConfig.from_pretrained(str(base_dir), trust_remote_code=False)
        model_vocab = config.vocab_size
    else:
        model_vocab = vocab_size if vocab_size is not None else DEFAULT_VOCAB_SIZE
        config = _tiny_config(
            arch,
            num_layers=num_layers,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            vocab_size=model_vocab,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    if base_dir is not None:
        _load_weights_into(model, base_dir)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, parameter in model.named_parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * noise)

    save_model(model, out, dtype, max_shard_size=max_shard_size)

    if tokenizer:
        if base_dir is None or not _copy_tokenizer(base_dir, out):
            train_tokenizer(out, min(model_vocab, DEFAULT_VOCAB_SIZE))
    return out

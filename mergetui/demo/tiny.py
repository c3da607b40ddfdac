"""Tiny real checkpoints, made offline: for the tests, and for `mergetui demo`.

Everything here builds genuine transformers models from configs and saves them the way the Hub does
(safetensors, sharded on request, config.json, tokenizer with a chat template), so the code that reads
them is exercised exactly as it is on real checkpoints, only smaller. Nothing is downloaded: the
tokenizer is a byte-level BPE trained on a few KB of text bundled in `mergetui/data/`.

torch, transformers and tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mergetui.dtypes import OUTPUT_NAMES
from mergetui.resources import data_text, sample_text

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
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_TOKENIZER_VOCAB:
        raise ValueError(
            f"a byte-level BPE needs vocab_size >= {MIN_TOKENIZER_VOCAB}, got {vocab_size}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
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

    if tokenizer:
        if base_dir is None or not _copy_tokenizer(base_dir, out):
            train_tokenizer(out, min(model_vocab, DEFAULT_VOCAB_SIZE))
    return out


# --------------------------------------------------------------------------------------------------
# The `mergetui demo` family: a base and three fine-tunes of it, plus recipes that merge them.

DEMO_MODELS = ("base", "chat", "code", "math")
DEMO_MARKER = "mergetui-demo.json"
_DEMO_FORMAT = 3  # 3: outputs relative to the recipe file (../merges/NAME)
# A bit bigger than the test models, so per-layer grids have something to show.
_DEMO_SHAPE = dict(num_layers=8, hidden_size=128, intermediate_size=256, vocab_size=512)
# Seeds and noise per fine-tune: different enough that merges visibly differ.
_DEMO_FINE_TUNES = {"chat": (1, 0.02), "code": (2, 0.03), "math": (3, 0.025)}
# The recipes that merge them. Every path in a recipe is relative to the recipe file: models
# (recipes/ -> ../base) and `output` (../merges/NAME), so merges land in the demo's merges/ from
# wherever they are run.
DEMO_RECIPES = ("linear-soup", "slerp-gradient", "ties", "dare-ties", "passthrough-stack")


@dataclass
class DemoInfo:
    """What `make_demo` left on disk. `created` is False when an existing demo was reused."""

    directory: Path
    models: dict[str, Path]
    recipes: dict[str, Path]
    created: bool

    @property
    def recipes_dir(self) -> Path:
        return self.directory / "recipes"

    @property
    def merges_dir(self) -> Path:
        return self.directory / "merges"


def _demo_recipes() -> dict[str, str]:
    """The demo's TOML recipes (mergetui/data/demo_recipes/NAME.toml), in DEMO_RECIPES order."""
    return {name: data_text("demo_recipes", f"{name}.toml") for name in DEMO_RECIPES}


def _existing_demo(directory: Path) -> DemoInfo | None:
    """The demo in `directory` if a complete one is there (the marker is written last)."""
    try:
        marker = json.loads((directory / DEMO_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != _DEMO_FORMAT:
        return None
    models = {name: directory / name for name in marker.get("models", [])}
    recipes = {name: directory / "recipes" / f"{name}.toml" for name in marker.get("recipes", [])}
    complete = all((path / "config.json").is_file() for path in models.values()) and all(
        path.is_file() for path in recipes.values()
    )
    if not complete or set(models) != set(DEMO_MODELS):
        return None
    return DemoInfo(directory, models, recipes, created=False)


def _ours(entry: Path) -> bool:
    return entry.name in {*DEMO_MODELS, "recipes", "merges", DEMO_MARKER} or entry.name.startswith(
        ".demo-build-"
    )


def make_demo(
    directory: str | Path = "mergetui-demo",
    force: bool = False,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> DemoInfo:
    """Write the demo family (offline) into `directory`, or reuse a complete one already there.

    Models are built in a hidden folder and moved into place, and the marker file is written last,
    so an interrupted run is rebuilt next time instead of being taken for a finished demo. `force`
    rebuilds the demo's own folders; other files in `directory` are never touched.
    """
    from mergetui.errors import UserError

    root = Path(directory).expanduser().resolve()
    report = on_progress or (lambda _message: None)
    if not force:
        existing = _existing_demo(root)
        if existing is not None:
            return existing
    if root.exists() and not root.is_dir():
        raise UserError("exists and is not a folder", where=str(root), fix="choose another --dir")
    strangers = [e.name for e in root.iterdir() if not _ours(e)] if root.is_dir() else []
    if strangers and not force:
        raise UserError(
            f"folder is not empty and holds no mergetui demo ({', '.join(sorted(strangers)[:3])}...)",
            where=str(root),
            fix="choose an empty or new --dir, or pass --force to write the demo beside those files",
        )

    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).unlink(missing_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=root))
    try:
        report("training the demo tokenizer")
        tokenizer_dir = train_tokenizer(build / "tokenizer", _DEMO_SHAPE["vocab_size"])
        report("building base (llama, 8 layers, hidden 128)")
        shape = {k: v for k, v in _DEMO_SHAPE.items() if k != "vocab_size"}
        make_tiny_model(
            build / "base",
            "llama",
            seed=0,
            vocab_size=_DEMO_SHAPE["vocab_size"],
            dtype="bfloat16",
            tokenizer=False,
            **shape,
        )
        _copy_tokenizer(tokenizer_dir, build / "base")
        for name, (seed, noise) in _DEMO_FINE_TUNES.items():
            report(f"building {name} (a fine-tune of base)")
            make_tiny_model(
                build / name, seed=seed, base=build / "base", noise=noise, dtype="bfloat16"
            )
        recipes_build = build / "recipes"
        recipes_build.mkdir()
        recipes = _demo_recipes()
        for name, text in recipes.items():
            (recipes_build / f"{name}.toml").write_text(text, encoding="utf-8")

        for name in (*DEMO_MODELS, "recipes"):
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            (build / name).rename(target)
        marker = {"format": _DEMO_FORMAT, "models": list(DEMO_MODELS), "recipes": list(recipes)}
        (root / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return DemoInfo(
        root,
        {name: root / name for name in DEMO_MODELS},
        {name: root / "recipes" / f"{name}.toml" for name in recipes},
        created=True,
    )


__all__ = [
    "ARCHITECTURES",
    "DemoInfo",
    "make_demo",
    "CHAT_TEMPLATE",
    "make_tiny_model",
    "train_tokenizer",
]

"""Training the demo family: a base on prose and code, then a prose and a code fine-tune of it.

`python -m mergetui.demo.train` trains the family from the shipped corpora (deterministically, on
the CPU: the same torch gives the same weights) and writes what `mergetui demo` ships:
`mergetui/data/demo_family/tokenizer.json` and `NAME.safetensors` for base, prose and code. It takes
about half an hour on one core; `--quick` trains a much smaller family in seconds (what the tests run).

The base learns from the `base` split of both domains (mixed half and half), each fine-tune from
the `tune` split of its own domain, text the base never saw (mergetui.demo.corpus). Every training
sequence is a window of one such token stream. A stream holds the split's paragraphs (prose) or
definitions (code) one after another, every other one as a chat turn (the user writes a
paragraph's first sentence and the assistant goes on with the rest; the user writes a definition's
first line and the assistant writes the definition), so `mergetui chat` replies read like the
domain instead of continuing the template.

torch, transformers and tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import math
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from mergetui.demo.corpus import DOMAINS, TRAIN_SPLITS, corpus_text
from mergetui.demo.family import (
    FAMILY_MODELS,
    FAMILY_SHAPE,
    FamilyShape,
    family_dir,
    save_family_model,
    tokenizer_json_path,
)
from mergetui.demo.tiny import BOS_TOKEN, EOS_TOKEN, IM_START, SPECIAL_TOKENS

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainSettings:
    """How long and how hard each stage trains. Steps are optimizer steps of `batch` sequences."""

    base_steps: int = 1400
    tune_steps: int = 150
    batch: int = 4
    seq_len: int = 512  # the family's whole context: every position is trained
    base_lr: float = 3e-3
    tune_lr: float = 1e-3
    warmup: int = 50
    chat_every: int = 2  # every Nth paragraph or definition is a chat turn
    max_chars: int | None = None  # train on the start of each domain's text only
    seed: int = 0
    threads: int = 1  # one thread: the same sums in the same order (and no lock-step waits)


FULL = TrainSettings()
# Seconds, for the tests: a family too small to chat, big enough to show each stage worked.
QUICK = TrainSettings(base_steps=30, tune_steps=20, batch=8, seq_len=64, warmup=5, max_chars=40_000)
QUICK_SHAPE = FamilyShape(
    num_layers=2, hidden_size=64, intermediate_size=128, vocab_size=512, context=QUICK.seq_len
)


@cache
def train_family_tokenizer(vocab_size: int) -> str:
    """A byte-level BPE trained on both domains' training splits (its JSON; once per process)."""
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
    texts = [corpus_text(domain, split) for domain in DOMAINS for split in TRAIN_SPLITS]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer.to_str()


def chat_turn(user: str, assistant: str) -> str:
    """One exchange in the family's chat template (tiny.CHAT_TEMPLATE)."""
    return f"{IM_START}user\n{user}{EOS_TOKEN}\n{IM_START}assistant\n{assistant}{EOS_TOKEN}\n"


def _units(domain: str, text: str) -> list[str]:
    """Paragraphs (prose) or blank-line separated definitions (code), dedented."""
    units = [u for u in text.split("\n\n") if u.strip()]
    if domain == "code":
        units = [textwrap.dedent(u).strip("\n") for u in units]
    return [u.strip() if domain == "prose" else u for u in units]


def _as_chat(domain: str, unit: str) -> str | None:
    """A unit as a chat turn: its first sentence (prose) or first line (code) is the question."""
    if domain == "prose":
        head, dot, rest = unit.partition(". ")
        if not dot or len(head) < 20 or len(rest) < 40:
            return None
        return chat_turn(head + ".", rest)
    first = unit.split("\n", 1)[0].strip()
    if "\n" not in unit or not first.endswith(":"):
        return None
    return chat_turn(first, unit)


def domain_stream(domain: str, split: str, tokenizer: Any, settings: TrainSettings) -> Any:
    """A training split as one 1-D tensor of token ids (plain units start with BOS)."""
    import torch

    text = corpus_text(domain, split)[: settings.max_chars]
    pieces = []
    for index, unit in enumerate(_units(domain, text)):
        chat = _as_chat(domain, unit) if index % settings.chat_every == 0 else None
        pieces.append(chat if chat is not None else f"{BOS_TOKEN}{unit}\n")
    ids = [i for encoding in tokenizer.encode_batch(pieces) for i in encoding.ids]
    return torch.tensor(ids, dtype=torch.long)


def _windows(streams: list[Any], batch: int, seq_len: int, generator: Any) -> Any:
    """`batch` random windows, split evenly over the streams."""
    import torch

    rows = []
    for index in range(batch):
        stream = streams[index % len(streams)]
        start = int(torch.randint(0, len(stream) - seq_len - 1, (1,), generator=generator))
        rows.append(stream[start : start + seq_len])
    return torch.stack(rows)


def _lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_stage(
    model: Any,
    streams: list[Any],
    *,
    steps: int,
    lr: float,
    settings: TrainSettings,
    seed: int,
    label: str,
    on_progress: Progress,
) -> float:
    """Train `model` in place on windows of `streams`; the last step's loss."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    loss_value = float("nan")
    started = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, settings.warmup)
        batch = _windows(streams, settings.batch, settings.seq_len, generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - started
            on_progress(f"{label}: step {step + 1}/{steps}, loss {loss_value:.3f}, {elapsed:.0f} s")
    model.eval()
    return loss_value


def train_family(
    out_dir: Path,
    settings: TrainSettings = FULL,
    shape: FamilyShape = FAMILY_SHAPE,
    on_progress: Progress | None = None,
) -> dict[str, Path]:
    """Train the tokenizer, base, prose and code and save them as checkpoint folders in `out_dir`.

    Deterministic for a given torch build and thread count (set to `settings.threads`). Weights are
    saved in bfloat16, as the demo ships them.
    """
    import copy

    import torch
    import transformers
    from tokenizers import Tokenizer

    from mergetui.demo.family import family_config

    report = on_progress or (lambda _message: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        report(f"training the tokenizer ({shape.vocab_size} tokens)")
        tokenizer_json = train_family_tokenizer(shape.vocab_size)
        tokenizer = Tokenizer.from_str(tokenizer_json)
        streams = {
            (domain, split): domain_stream(domain, split, tokenizer, settings)
            for domain in DOMAINS
            for split in TRAIN_SPLITS
        }
        mixed = [streams[domain, "base"] for domain in DOMAINS]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            base = transformers.LlamaForCausalLM(family_config(shape))
            stages = [("base", None, mixed, settings.base_steps, settings.base_lr)]
            stages += [
                (d, "base", [streams[d, "tune"]], settings.tune_steps, settings.tune_lr)
                for d in DOMAINS
            ]
            models: dict[str, Any] = {}
            for offset, (name, parent, data, steps, lr) in enumerate(stages):
                model = base if parent is None else copy.deepcopy(models[parent])
                train_stage(
                    model,
                    data,
                    steps=steps,
                    lr=lr,
                    settings=settings,
                    seed=settings.seed + offset,
                    label=name,
                    on_progress=report,
                )
                models[name] = model
    finally:
        torch.set_num_threads(previous_threads)
    return {
        name: save_family_model(out_dir / name, models[name], tokenizer_json, shape)
        for name in FAMILY_MODELS
    }


def ship(folders: dict[str, Path], target: Path) -> list[Path]:
    """Copy a trained family's tokenizer and weights into the shipped data folder."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    written = [target / tokenizer_json_path().name]
    shutil.copyfile(folders["base"] / "tokenizer.json", written[0])
    for name, folder in folders.items():
        written.append(target / f"{name}.safetensors")
        shutil.copyfile(folder / "model.safetensors", written[-1])
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m mergetui.demo.train [--quick] [--out DIR] [--ship]`."""
    parser = argparse.ArgumentParser(prog="python -m mergetui.demo.train", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-family"), help="checkpoint folders")
    parser.add_argument("--quick", action="store_true", help="the tests' small, short family")
    parser.add_argument(
        "--ship", action="store_true", help=f"then copy the weights into {family_dir()}"
    )
    parser.add_argument("--base-steps", type=int, help="override the base's steps")
    parser.add_argument("--tune-steps", type=int, help="override each fine-tune's steps")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.base_steps is not None:
        settings = replace(settings, base_steps=args.base_steps)
    if args.tune_steps is not None:
        settings = replace(settings, tune_steps=args.tune_steps)
    shape = QUICK_SHAPE if args.quick else FAMILY_SHAPE
    started = time.perf_counter()
    folders = train_family(args.out, settings, shape, on_progress=print)
    print(
        f"trained in {time.perf_counter() - started:.0f} s: {', '.join(map(str, folders.values()))}"
    )
    if args.ship:
        for path in ship(folders, family_dir()):
            print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

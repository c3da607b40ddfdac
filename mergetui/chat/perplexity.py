"""Quick check: perplexity of a model on a text, so a broken merge shows at a glance.

Perplexity is exp(mean negative log-likelihood) of every token of the text given the tokens before
it. A text longer than the model's context is scored with overlapping windows (stride half a
window): each token is scored once, with at least half a window of context before it (the first
window's tokens with what precedes them), as in the transformers documentation. A healthy small
model on plain English scores in the tens; a broken merge in the thousands (or `inf`).

`overlap=False` scores with back-to-back windows instead (each shares one token with the one
before, so every token is still scored once), as lm-eval's rolling log-likelihood does: a third
less work than the overlapping windows, for a search that scores the same text hundreds of times.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergetui.chat.loader import LoadedModel
from mergetui.errors import CancelledError, UserError

MAX_WINDOW = 1024
# Windows run side by side up to this many tokens in all, and logits of this many bytes
# (tokens x vocabulary x 4): the activations and the logits of a batch stay small.
BATCH_TOKENS = 4096
BATCH_LOGIT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class PerplexityResult:
    model: str
    perplexity: float
    tokens: int  # tokens scored
    seconds: float
    text_name: str

    @property
    def mean_nll(self) -> float:
        return math.log(self.perplexity) if self.perplexity > 0 else float("nan")


def sample_text() -> tuple[str, str]:
    """The bundled English sample (what `mergetui eval` scores by default) and its name."""
    from mergetui.resources import sample_text as bundled

    return bundled(), "bundled sample"


def read_text(path: str | Path) -> tuple[str, str]:
    target = Path(path).expanduser()
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("no such text file", where=str(target)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the text: {exc}", where=str(target)) from exc
    if not text.strip():
        raise UserError("the text file is empty", where=str(target))
    return text, target.name


def perplexity(
    loaded: LoadedModel,
    text: str,
    *,
    text_name: str = "text",
    window: int | None = None,
    overlap: bool = True,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
) -> PerplexityResult:
    """Score `text` with the loaded model; raises CancelledError when `cancel` is set."""
    import torch

    if loaded.model is None:
        raise UserError("the model was unloaded", fix="load it again")
    ids = loaded.tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]
    total = int(ids.shape[0])
    if total < 2:
        raise UserError("the text is too short to score (it needs at least two tokens)")
    size = window or min(loaded.context_length, MAX_WINDOW)
    size = max(2, min(size, total))
    vocab = int(getattr(loaded.model.config, "vocab_size", 0) or 1)
    per_batch = max(1, min(BATCH_TOKENS // size, BATCH_LOGIT_BYTES // (4 * size * vocab)))
    started = time.perf_counter()
    nll_sum = 0.0
    scored = 0
    with torch.inference_mode():
        stride = None if overlap else size - 1
        for batch in _batches(windows(total, size, stride), per_batch):
            if cancel is not None and cancel.is_set():
                raise CancelledError("perplexity cancelled")
            chunk = torch.stack([ids[begin:end] for begin, end, _ in batch]).to(loaded.device)
            logits = loaded.model(chunk, use_cache=False).logits
            for row, (begin, end, first) in enumerate(batch):
                # Predictions first .. last-1 score the tokens this window adds.
                log_probs = torch.log_softmax(logits[row, first : end - begin - 1].float(), dim=-1)
                targets = chunk[row, first + 1 : end - begin]
                counted = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
                nll_sum += float(counted.double().sum())
                scored += int(counted.numel())
            del logits
            if on_progress is not None:
                on_progress(batch[-1][1] / total)
    value = math.exp(nll_sum / scored) if scored else float("nan")
    return PerplexityResult(
        model=loaded.name,
        perplexity=value if math.isfinite(value) else float("inf"),
        tokens=scored,
        seconds=time.perf_counter() - started,
        text_name=text_name,
    )


def windows(total: int, size: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(begin, end, first) of each window over `total` tokens: windows of `size` tokens, `stride`
    apart (default half a window), and `first`, the window position whose prediction is the first
    one scored (each token is scored once, in the first window that has it; the text's first
    token never)."""
    stride = max(1, stride if stride is not None else size // 2)
    spans = []
    begin = previous_end = 0
    while True:
        end = min(begin + size, total)
        spans.append((begin, end, max(0, (end - begin) - (end - previous_end) - 1)))
        previous_end = end
        if end >= total:
            return spans
        begin += stride


def _batches(spans: list[tuple[int, int, int]], per_batch: int) -> list[list[tuple[int, int, int]]]:
    """Windows of the same length run side by side, `per_batch` at a time (one forward pass:
    about twice as fast as one by one on a CPU); a shorter last window runs alone."""
    batches: list[list[tuple[int, int, int]]] = []
    for span in spans:
        last = batches[-1] if batches else None
        same = last is not None and last[0][1] - last[0][0] == span[1] - span[0]
        if last is not None and same and len(last) < per_batch:
            last.append(span)
        else:
            batches.append([span])
    return batches

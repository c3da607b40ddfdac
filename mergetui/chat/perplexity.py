"""Quick check: perplexity of a model on a text, so a broken merge shows at a glance.

Perplexity is exp(mean negative log-likelihood) of every token of the text given the tokens before
it. A text longer than the model's context is scored with overlapping windows (stride half a
window): each token is scored once, with at least half a window of context before it (the first
window's tokens with what precedes them), as in the transformers documentation. A healthy small
model on plain English scores in the tens; a broken merge in the thousands (or `inf`).
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
    stride = max(1, size // 2)
    started = time.perf_counter()
    nll_sum = 0.0
    scored = 0
    previous_end = 0
    begin = 0
    with torch.inference_mode():
        while True:
            if cancel is not None and cancel.is_set():
                raise CancelledError("perplexity cancelled")
            end = min(begin + size, total)
            target_len = end - previous_end
            chunk = ids[begin:end].unsqueeze(0).to(loaded.device)
            logits = loaded.model(chunk).logits[0].float()
            log_probs = torch.log_softmax(logits[:-1], dim=-1)
            targets = chunk[0, 1:]
            token_nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
            # Score only the tokens this window adds (the first token of the text has no context).
            first = max(0, (end - begin) - target_len - 1)
            counted = token_nll[first:]
            nll_sum += float(counted.double().sum())
            scored += int(counted.numel())
            previous_end = end
            if on_progress is not None:
                on_progress(end / total)
            if end >= total:
                break
            begin += stride
    value = math.exp(nll_sum / scored) if scored else float("nan")
    return PerplexityResult(
        model=loaded.name,
        perplexity=value if math.isfinite(value) else float("inf"),
        tokens=scored,
        seconds=time.perf_counter() - started,
        text_name=text_name,
    )

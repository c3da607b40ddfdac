"""Generate a reply token by token, off the UI thread, stoppable at any token.

`generate_reply` runs transformers' `generate` in the calling thread (a worker) with a streamer that
hands the reply so far to `on_text` after every token, and a stopping criterion that ends the reply
as soon as the `stop` event is set (the app's escape key) or, in the plain prompt format, when the
model starts the next "User:" turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mergetui.chat.loader import LoadedModel
from mergetui.chat.prompt import Message, format_prompt, trim_at_stop
from mergetui.errors import UserError

TextCallback = Callable[[str], None]

MAX_TEMPERATURE = 100.0  # far past where sampling is already uniform noise
MAX_NEW_TOKENS = 1_000_000
# Each numeric setting: whether a value is in range (NaN is in none), and the range in words. The
# CLI flags and the Chat screen's Settings tab both check against this.
SETTING_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "temperature": (
        lambda v: 0 <= v <= MAX_TEMPERATURE,
        f"a number from 0 to {MAX_TEMPERATURE:g} (0 = greedy)",
    ),
    "top_p": (lambda v: 0 < v <= 1, "a number above 0, at most 1"),
    "max_new_tokens": (
        lambda v: 1 <= v <= MAX_NEW_TOKENS,
        f"a whole number from 1 to {MAX_NEW_TOKENS:,}",
    ),
}


def setting_problem(name: str, value: float) -> str | None:
    """The range `value` should be in, in words, when it is outside it (or NaN); None when fine."""
    in_range, words = SETTING_RANGES[name]
    return None if in_range(value) else words


@dataclass
class GenerationSettings:
    """What the Settings tab and the CLI flags control. temperature 0 means greedy decoding."""

    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int | None = None

    def check(self) -> None:
        for name in SETTING_RANGES:
            value = getattr(self, name)
            words = setting_problem(name, value)
            if words is not None:
                raise UserError(f"{name} must be {words}; got {value}", where=name)


@dataclass(frozen=True)
class Reply:
    text: str
    tokens: int
    seconds: float
    # "end" (end of turn), "length" (max_new_tokens), "context" (the context window is full),
    # "stopped" (by the user)
    finish: str
    prompt_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class _Streamer:
    """Decodes the generated ids after each token; complete characters only (no half UTF-8)."""

    def __init__(self, tokenizer: Any, on_text: TextCallback | None, stops: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.stops = stops
        self.ids: list[int] = []
        self.text = ""
        self.hit_stop = False
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt itself
            self._prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if self.stops:
            text, self.hit_stop = trim_at_stop(text, self.stops)
        if text != self.text:
            self.text = text
            if self.on_text is not None:
                self.on_text(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.stops:
            text, _ = trim_at_stop(text, self.stops)
        text = text.rstrip("\ufffd")
        if text != self.text:
            self.text = text
            if self.on_text is not None:
                self.on_text(text)


def generate_reply(
    loaded: LoadedModel,
    messages: list[Message],
    settings: GenerationSettings,
    *,
    on_text: TextCallback | None = None,
    stop: threading.Event | None = None,
) -> Reply:
    """The model's next turn. Blocks until the reply ends; `on_text` sees it grow token by token."""
    import torch
    import transformers

    settings.check()
    if loaded.model is None:
        raise UserError("the model was unloaded", fix="load it again")
    tokenizer, model = loaded.tokenizer, loaded.model
    prompt = format_prompt(tokenizer, messages)
    encoded = tokenizer(prompt.text, return_tensors="pt", add_special_tokens=not prompt.templated)
    input_ids = encoded["input_ids"]
    budget = max(1, loaded.context_length - settings.max_new_tokens)
    if input_ids.shape[1] > budget:  # keep the end of a long conversation
        input_ids = input_ids[:, -budget:]
    max_new = max(1, min(settings.max_new_tokens, loaded.context_length - input_ids.shape[1]))
    input_ids = input_ids.to(loaded.device)
    attention = torch.ones_like(input_ids)

    streamer = _Streamer(tokenizer, on_text, prompt.stop_strings)
    stop_event = stop or threading.Event()

    class _Stop(transformers.StoppingCriteria):
        def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = stop_event.is_set() or streamer.hit_stop
            return torch.full((ids.shape[0],), done, dtype=torch.bool, device=ids.device)

    eos = _eos_ids(model, tokenizer)
    options: dict[str, Any] = dict(
        max_new_tokens=max_new,
        streamer=streamer,
        stopping_criteria=transformers.StoppingCriteriaList([_Stop()]),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        eos_token_id=eos,
    )
    if settings.temperature > 0:
        options.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    started = time.perf_counter()
    if settings.seed is not None:  # reproducible, and the global random state is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            with torch.inference_mode():
                output = model.generate(input_ids=input_ids, attention_mask=attention, **options)
    else:
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=attention, **options)
    seconds = time.perf_counter() - started
    new_ids = output[0, input_ids.shape[1] :].tolist()
    if stop_event.is_set():
        finish = "stopped"
    elif streamer.hit_stop or (new_ids and new_ids[-1] in eos):
        finish = "end"
    elif max_new < settings.max_new_tokens:
        finish = "context"  # the model's context window is full
    else:
        finish = "length"
    return Reply(
        text=streamer.text.strip(),
        tokens=len(new_ids),
        seconds=seconds,
        finish=finish,
        prompt_tokens=int(input_ids.shape[1]),
    )


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    found: list[int] = []
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None)
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, int) and item not in found:
            found.append(item)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in found:
        found.append(int(tokenizer.eos_token_id))
    return found or [0]

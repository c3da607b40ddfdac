"""What a search minimises: each objective of a spec scored on the resident candidate model.

Every score is oriented lower-is-better, so a spec's fitness is a plain weighted sum:

- `perplexity`: the mean negative log-likelihood per token (the log of the perplexity) of a text,
  scored by `chat.perplexity` (the function `mergetui eval` calls: the same tokens and window
  size) with back-to-back windows (`overlap=False`), as lm-eval's rolling log-likelihood (what
  mergekit-evolve's perplexity tasks compute) does: every token once, a third less work than
  `mergetui eval`'s overlapping windows on a text longer than the window. A text that fits one
  window scores the same either way;
- `completions`: a JSONL file of `{"prompt": ..., "completion": ...}` lines; each line's score is
  the mean negative log-likelihood of the completion's tokens given its prompt, and the objective
  is the mean over lines (each line counts once, however long);
- `lm_eval`: an lm-eval task (a named one, or a custom task from `task_path`) through lm-eval's
  `HFLM` wrapping the resident model: the metric's value, negated when lm-eval says higher is
  better (accuracy), as it is otherwise (a perplexity).

`load_scorer(objective)` reads and checks the objective's data before any model is loaded (a bad
JSONL line is reported as `FILE:LINE`); `prepare(loaded)` binds a scorer to the resident model
once (tokenizing, wrapping); `score(loaded)` scores the candidate the model holds now. A score
that is not a number (a broken candidate) is `inf`, never NaN. torch, transformers and lm_eval are
imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mergetui.errors import UserError

if TYPE_CHECKING:
    from mergetui.chat.loader import LoadedModel

LM_EVAL_FIX = "pip install 'mergetui[lm-eval]'"
_BATCH_LINES = 32
_LM_EVAL_LOCK = threading.Lock()


class Scorer(Protocol):
    """One objective, bound to the resident model."""

    label: str

    def prepare(self, loaded: LoadedModel) -> None: ...

    def score(self, loaded: LoadedModel) -> float: ...


def load_scorer(objective: Any) -> Scorer:
    """The scorer of one `spec.Objective`, its data read and checked (no model needed)."""
    kind = objective.kind
    if kind == "perplexity":
        return PerplexityScorer.load(objective)
    if kind == "completions":
        return CompletionsScorer.load(objective)
    if kind == "lm_eval":
        return LmEvalScorer.load(objective)
    raise UserError(
        f"unknown objective kind {kind!r}",
        where=objective.label,
        fix="use perplexity, completions or lm_eval",
    )


def finite_or_inf(value: float) -> float:
    """A score CMA-ES can rank: NaN (a broken candidate) becomes inf."""
    return value if not math.isnan(value) else math.inf


def _required_path(objective: Any, what: str) -> Path:
    if objective.path is None:
        raise UserError(
            f"the {objective.kind} objective has no {what}",
            where=objective.label,
            fix=f"name the {what} of the objective",
        )
    return Path(objective.path)


# -- perplexity ----------------------------------------------------------------------------------


@dataclass
class PerplexityScorer:
    """Mean log-perplexity of a text, through `chat.perplexity.perplexity` itself."""

    label: str
    text: str
    text_name: str

    @classmethod
    def load(cls, objective: Any) -> PerplexityScorer:
        from mergetui.chat.perplexity import read_text

        text, name = read_text(_required_path(objective, "text file"))
        return cls(objective.label, text, name)

    def prepare(self, loaded: LoadedModel) -> None:
        """Nothing to bind: the text is tokenized by `perplexity` itself on each call."""

    def score(self, loaded: LoadedModel) -> float:
        from mergetui.chat.perplexity import perplexity

        result = perplexity(loaded, self.text, text_name=self.text_name, overlap=False)
        return finite_or_inf(result.mean_nll)


# -- completions ---------------------------------------------------------------------------------


def read_completions(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, completion) of each line of a JSONL file; blank lines are skipped. Any line that
    is not an object with string "prompt" and non-empty string "completion" is a UserError
    located `FILE:LINE`."""
    target = Path(path).expanduser()
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("no such completions file", where=str(target)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the completions: {exc}", where=str(target)) from exc
    items: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        items.append(_completion_line(line, f"{target}:{number}"))
    if not items:
        raise UserError(
            "the completions file has no lines",
            where=str(target),
            fix='write one {"prompt": ..., "completion": ...} object per line',
        )
    return items


def _completion_line(line: str, where: str) -> tuple[str, str]:
    fix = 'write one {"prompt": "...", "completion": "..."} object per line'
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        message = f"not valid JSON: {exc.msg} (column {exc.colno})"
        raise UserError(message, where=where, fix=fix) from None
    if not isinstance(data, dict):
        raise UserError(f"a JSON {type(data).__name__}, not an object", where=where, fix=fix)
    for key in ("prompt", "completion"):
        if key not in data:
            raise UserError(f'the line has no "{key}"', where=where, fix=fix)
        if not isinstance(data[key], str):
            raise UserError(f'"{key}" is not a string', where=where, fix=fix)
    if not data["completion"]:
        raise UserError('"completion" is empty: there is nothing to score', where=where, fix=fix)
    return data["prompt"], data["completion"]


@dataclass
class _Encoded:
    ids: list[int]  # prompt and completion, cut on the left to the window
    first: int  # index of the first completion token in `ids`


@dataclass
class CompletionsScorer:
    """Mean over lines of each completion's mean NLL given its prompt."""

    label: str
    path: Path
    items: list[tuple[str, str]]
    encoded: list[_Encoded] = field(default_factory=list)

    @classmethod
    def load(cls, objective: Any) -> CompletionsScorer:
        path = _required_path(objective, "completions file")
        return cls(objective.label, path, read_completions(path))

    def prepare(self, loaded: LoadedModel) -> None:
        """Tokenize every line once: the completion's tokens are those the prompt + completion
        has beyond the prompt's own (lm-eval's rule; trailing spaces of the prompt move to the
        completion), cut on the left to the model's window."""
        from mergetui.chat.perplexity import MAX_WINDOW

        window = max(2, min(loaded.context_length, MAX_WINDOW))
        self.encoded = []
        for number, (prompt, completion) in enumerate(self.items, start=1):
            where = f"{self.path}:{number}"
            self.encoded.append(_encode(loaded.tokenizer, prompt, completion, window, where))

    def score(self, loaded: LoadedModel) -> float:
        import torch

        if len(self.encoded) != len(self.items):
            self.prepare(loaded)
        from mergetui.chat.perplexity import BATCH_LOGIT_BYTES, BATCH_TOKENS

        vocab = int(getattr(loaded.model.config, "vocab_size", 0) or 1)
        budget = max(1, min(BATCH_TOKENS, BATCH_LOGIT_BYTES // (4 * vocab)))
        order = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i].ids))
        total = 0.0
        with torch.inference_mode():
            for batch in _batches(order, self.encoded, budget):
                total += sum(_batch_nll(loaded, [self.encoded[i] for i in batch]))
        return finite_or_inf(total / len(self.encoded))


def _encode(tokenizer: Any, prompt: str, completion: str, window: int, where: str) -> _Encoded:
    spaces = len(prompt) - len(prompt.rstrip())
    if spaces:
        prompt, completion = prompt[:-spaces], prompt[-spaces:] + completion
    whole = list(tokenizer(prompt + completion, verbose=False)["input_ids"])
    context = list(tokenizer(prompt, verbose=False)["input_ids"]) if prompt else []
    shared = 0
    for a, b in zip(context, whole, strict=False):
        if a != b:
            break
        shared += 1
    first = max(1, shared)  # the text's first token has nothing before it to be scored on
    scored = len(whole) - first
    if scored <= 0:
        raise UserError(
            "the completion adds no token after its prompt", where=where, fix="check the line"
        )
    if scored >= window:
        raise UserError(
            f"the completion is {scored} tokens, longer than the model's window of {window} "
            "leaves room for (one token of prompt at least)",
            where=where,
            fix="shorten the completion",
        )
    cut = max(0, len(whole) - window)
    return _Encoded(whole[cut:], first - cut)


def _batches(order: list[int], encoded: list[_Encoded], budget: int) -> list[list[int]]:
    """Lines by length into batches of at most `budget` padded tokens (at least one line)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = len(encoded[index].ids)  # sorted: the newest line is the longest
        if current and (longest * (len(current) + 1) > budget or len(current) >= _BATCH_LINES):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _batch_nll(loaded: LoadedModel, lines: list[_Encoded]) -> list[float]:
    """Each line's mean completion NLL, the lines right-padded into one forward pass."""
    import torch

    length = max(len(line.ids) for line in lines)
    pad = loaded.tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    ids = torch.full((len(lines), length), pad, dtype=torch.long)
    mask = torch.zeros((len(lines), length), dtype=torch.long)
    for row, line in enumerate(lines):
        ids[row, : len(line.ids)] = torch.tensor(line.ids, dtype=torch.long)
        mask[row, : len(line.ids)] = 1
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    logits = loaded.model(input_ids=ids, attention_mask=mask).logits
    means = []
    for row, line in enumerate(lines):
        end = len(line.ids)
        predicted = logits[row, line.first - 1 : end - 1].float()
        targets = ids[row, line.first : end]
        nll = -torch.log_softmax(predicted, dim=-1).gather(1, targets.unsqueeze(1))
        means.append(float(nll.double().mean()))
    return means


# -- lm-eval -------------------------------------------------------------------------------------


def require_lm_eval(where: str) -> None:
    """lm-eval is an optional extra: say how to install it when it is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(
            "the lm_eval objective needs the optional lm-eval package, which is not installed",
            where=where,
            fix=LM_EVAL_FIX,
        )


@dataclass
class LmEvalScorer:
    """An lm-eval task's metric on the resident model (HFLM around it), lower is better."""

    label: str
    task: str
    task_path: Path | None
    metric: str | None
    limit: int | None
    num_fewshot: int | None = None
    _lm: Any = None
    _tasks: Any = None
    _task_list: list[Any] = field(default_factory=list)

    @classmethod
    def load(cls, objective: Any) -> LmEvalScorer:
        require_lm_eval(objective.label)
        if not objective.task:
            raise UserError(
                "the lm_eval objective names no task",
                where=objective.label,
                fix="name an lm-eval task (task = ...)",
            )
        task_path = Path(objective.task_path) if objective.task_path is not None else None
        if task_path is not None and not task_path.is_dir():
            raise UserError(
                "no such folder of lm-eval tasks",
                where=str(task_path),
                fix="point task_path at the folder that holds the task's YAML",
            )
        return cls(
            objective.label,
            objective.task,
            task_path,
            objective.metric,
            objective.limit,
            getattr(objective, "num_fewshot", None),
        )

    def prepare(self, loaded: LoadedModel) -> None:
        """The task manager (custom tasks from `task_path`) and HFLM around the resident model,
        built once: the model's weights change in place between candidates."""
        from lm_eval.models.huggingface import HFLM

        manager = task_manager(self.task_path, defaults=False) if self.task_path else None
        if manager is None or self.task not in manager.all_tasks:
            manager = task_manager(self.task_path, defaults=True)
        if self.task not in manager.all_tasks:
            raise UserError(
                f"lm-eval knows no task {self.task!r}",
                where=self.label,
                fix="check the task name"
                + ("" if self.task_path else ", or give task_path for a custom task"),
            )
        self._tasks = manager
        # A single task is built once (its dataset read once) and handed to every run; a group
        # is loaded by name each time.
        built = manager.load_task_or_group([self.task])
        single = list(built.values()) if len(built) == 1 else []
        self._task_list = single if single and _is_task(single[0]) else [self.task]
        self._lm = HFLM(
            pretrained=loaded.model,
            tokenizer=loaded.tokenizer,
            batch_size=8,
            max_length=loaded.context_length,
        )

    def score(self, loaded: LoadedModel) -> float:
        from lm_eval import simple_evaluate

        if self._lm is None:
            self.prepare(loaded)
        with _quiet_lm_eval():
            results = simple_evaluate(
                model=self._lm,
                tasks=list(self._task_list),
                limit=self.limit,
                num_fewshot=self.num_fewshot,
                task_manager=self._tasks,
                log_samples=False,
                bootstrap_iters=0,
            )
        if results is None:  # only on non-zero ranks of a distributed run
            raise UserError("lm-eval returned no results", where=self.label)
        return oriented_metric(results, self.task, self.metric, self.label)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """simple_evaluate without its description of the environment (pip list, GPU queries:
    seconds of subprocesses on every call, 3.5 s on the development machine, added to results a
    search throws away): it would be paid per candidate."""
    from lm_eval import evaluator

    with _LM_EVAL_LOCK:
        original = getattr(evaluator, "add_env_info", None)
        if original is not None:
            evaluator.add_env_info = lambda *args, **kwargs: None
        try:
            yield
        finally:
            if original is not None:
                evaluator.add_env_info = original


def _is_task(value: Any) -> bool:
    from lm_eval.api.task import Task

    return isinstance(value, Task)


@functools.cache
def task_manager(task_path: Path | None, *, defaults: bool) -> Any:
    """lm-eval's task index, once per folder: indexing its own thousands of tasks takes tens of
    seconds, so a folder of custom tasks is first indexed alone (`defaults=False`)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(
        verbosity="ERROR",
        include_path=str(task_path) if task_path is not None else None,
        include_defaults=defaults,
    )


def oriented_metric(results: dict[str, Any], task: str, metric: str | None, where: str) -> float:
    """The task's metric from simple_evaluate's results, lower is better: negated when lm-eval
    says higher is better. `metric` as "acc" or with its filter, "acc,none"; None: the task's
    first metric."""
    values = results.get("results", {}).get(task, {})
    orientation = results.get("higher_is_better", {}).get(task, {})
    keys = {}  # metric name -> its key in the results ("acc" -> "acc,none")
    for key in values:
        name = key.split(",")[0]
        if "," in key and not name.endswith("_stderr"):
            keys.setdefault(name, key)
    if metric is not None and metric in values:
        name, key = metric.split(",")[0], metric
    else:
        name = metric or next((m for m in orientation if m in keys), next(iter(keys), None))
        key = keys.get(name) if name is not None else None
    if key is None:
        raise UserError(
            f"task {task!r} reports no metric {name!r}"
            + (f" (it has {', '.join(keys)})" if keys else ""),
            where=where,
            fix="name one of the task's metrics",
        )
    value = values[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UserError(f"metric {key!r} of task {task!r} is {value!r}, not a number", where=where)
    higher = bool(orientation.get(name, True))
    return finite_or_inf(-float(value) if higher else float(value))

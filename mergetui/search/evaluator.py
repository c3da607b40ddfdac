"""One search's scoring: the parents loaded once, each candidate merged in memory and scored.

`CandidateEvaluator(spec, device)` reads every objective's data first (a bad file fails before
anything heavy is loaded), then loads the parents and builds the resident model and tokenizer
(`inmemory.ResidentMerge`), then binds each objective to it (`objectives`). `evaluate(recipe)`
merges the candidate into the resident model with the same method functions as `mergetui merge`
and returns each objective's score (lower is better), writing nothing. One evaluator serves one
thread at a time: the local backend owns one, each Ray actor owns one.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.errors import UserError

if TYPE_CHECKING:
    from mergetui.chat.loader import LoadedModel
    from mergetui.recipe.model import Recipe
    from mergetui.search.inmemory import MergeReport
    from mergetui.search.objectives import Scorer


class CandidateEvaluator:
    """Parents resident on one device; `evaluate(recipe)` -> {objective label: score}."""

    def __init__(
        self, spec: Any, device: str = "auto", abandon: threading.Event | None = None
    ) -> None:
        from mergetui.search.inmemory import ResidentMerge
        from mergetui.search.objectives import load_scorer

        self.spec = spec
        self._scorers: list[Scorer] = [load_scorer(o) for o in spec.objectives]
        self._labels = tuple(scorer.label for scorer in self._scorers)
        if not self._scorers:
            raise UserError(
                "the search has no objective", where="search.objective", fix="add an objective"
            )
        started = time.perf_counter()
        self._merge: ResidentMerge | None = ResidentMerge(
            spec.recipe, device=device, seed=spec.seed
        )
        self.device = str(self._merge.device)
        self._loaded = _loaded_model(self._merge, started)
        if abandon is not None:
            stop_forward_when(self._loaded.model, abandon)
        try:
            for scorer in self._scorers:
                scorer.prepare(self._loaded)
        except BaseException:
            self.close()  # the parents' memory goes back at once (a GPU's too)
            raise
        self.load_seconds = time.perf_counter() - started
        # Of the last `evaluate`: seconds merging and scoring, tensors computed and reused.
        self.last_merge: MergeReport | None = None
        self.last_score_seconds = 0.0
        self.last_error: str | None = None  # why the last candidate scored inf, if it did

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def model(self) -> Any:
        """The resident transformers model (it holds the last candidate evaluated)."""
        return self._require().model

    @property
    def tokenizer(self) -> Any:
        return self._require().tokenizer

    def evaluate(self, recipe: Recipe) -> dict[str, float]:
        """Merge the candidate into the resident model and score it: {label: score}, each lower
        is better. A candidate of the search's shape whose values the merge refuses (linear
        weights that sum to zero...) scores `inf` everywhere, the reason in `last_error`: an
        infeasible point for the optimizer, not the end of the search. Any other refusal
        raises its UserError."""
        merge = self._require()
        self.last_error = None
        try:
            self.last_merge = merge.apply(recipe)
        except UserError as exc:
            if not merge.same_shape(recipe):
                raise
            self.last_error = str(exc)
            return {scorer.label: math.inf for scorer in self._scorers}
        started = time.perf_counter()
        scores = {scorer.label: scorer.score(self._loaded) for scorer in self._scorers}
        self.last_score_seconds = time.perf_counter() - started
        return scores

    def close(self) -> None:
        """Give back the memory of the parents and the model; the evaluator is done."""
        if self._merge is not None:
            self._scorers = []  # lm-eval's wrapper holds the model too
            self._loaded.model = None
            self._merge.close()
            self._merge = None

    def _require(self) -> Any:
        if self._merge is None:
            raise UserError("the evaluator is closed")
        return self._merge

    def __enter__(self) -> CandidateEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _loaded_model(merge: Any, started: float) -> LoadedModel:
    """The resident model as chat's `LoadedModel`, which `chat.perplexity` scores."""
    from mergetui.chat.loader import LoadedModel, context_length_of

    plan = merge.plan
    numel = sum(t.numel for t in plan.tensors)
    return LoadedModel(
        name="candidate",
        path=Path(plan.models[plan.donor].path),
        model=merge.model,
        tokenizer=merge.tokenizer,
        device=str(merge.device),
        dtype=str(merge.dtype).removeprefix("torch."),
        weights_bytes=numel * merge.dtype.itemsize,
        context_length=context_length_of(merge.model, merge.tokenizer),
        seconds=time.perf_counter() - started,
    )


def stop_forward_when(model: Any, abandon: threading.Event) -> None:
    """Make a forward pass of `model` raise CancelledError at its next block once `abandon` is
    set, so leaving the app drops the candidate in progress within one layer's time, whatever
    objective is scoring it (perplexity, completions, lm-eval). One pre-hook per block of each
    ModuleList (a transformer's layers), or on the model itself when it has none."""
    import torch

    from mergetui.errors import CancelledError

    def check(_module: Any, _args: Any) -> None:
        if abandon.is_set():
            raise CancelledError("the search was left: the candidate in progress is dropped")

    blocks = [
        block
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList)
        for block in module
    ]
    for block in blocks or [model]:
        block.register_forward_pre_hook(check)

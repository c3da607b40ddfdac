"""Shared pieces of the `mergetui evolve` tests: spec files over the tiny llama family, and a
backend that scores a candidate by a real, deterministic function of its per-layer values.

`QuadraticBackend` is not a stand-in for the evaluator: it is an honest objective (the squared
distance of the values the merge would use, resolved per layer by `recipe.resolve` exactly as the
engine resolves them, to a target), which lets the optimizer loop's plumbing (determinism, resume,
cancel, bounds, files, events) be tested in milliseconds. The end-to-end tests in
test_cli_evolve.py use the real local backend on real checkpoints.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mergetui.recipe.model import Recipe
from mergetui.recipe.resolve import resolve_layer_values

LAYERS = 4  # the tiny llama family's depth
LAYER_TENSOR = "model.layers.{i}.mlp.up_proj.weight"
LABEL = "perplexity:prose.txt"
PROSE = (
    "The river ran slowly past the old mill, and the miller's daughter watched the boats go by. "
    "In the evening the lamps were lit along the bank, and the water carried their light away."
)


def write_spec(
    folder: Path,
    family: dict[str, Path],
    *,
    search: str = "",
    method: str = "task_arithmetic",
    objective: str | None = None,
    name: str = "spec.toml",
) -> Path:
    """A task_arithmetic spec over base + a + b (weights 0.5 and a gradient), scored on a text."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prose.txt").write_text(PROSE, encoding="utf-8")
    base_line = 'base = "base"\n' if method != "linear" else ""
    if objective is None:
        objective = '[[search.objective]]\nkind = "perplexity"\ntext = "prose.txt"\n'
    text = (
        f'[merge]\nmethod = "{method}"\n{base_line}dtype = "float32"\n\n'
        f'[models.base]\nsource = "{family["base"]}"\n\n'
        f'[models.a]\nsource = "{family["a"]}"\nparameters = {{ weight = 0.5 }}\n\n'
        f'[models.b]\nsource = "{family["b"]}"\nparameters = {{ weight = [0.2, 0.8] }}\n\n'
        f"[search]\n{search}\n{objective}"
    )
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def layer_values(recipe: Recipe, model: str, param: str = "weight") -> list[float]:
    """The per-layer values the merge uses for `model`'s `param`."""
    counts = dict.fromkeys(recipe.models, LAYERS)
    return list(resolve_layer_values(recipe, counts, param, model, LAYER_TENSOR).layers)


class QuadraticBackend:
    """Scores a candidate by the squared distance of its resolved per-layer weights to `target`.

    `broken` names evaluations (0-based, over this backend's life) that score inf, as a candidate
    whose merged model produced NaN would. `cancel_after` sets the cancel event after that many
    candidates, the way Ctrl-C would arrive during a candidate.
    """

    device = "cpu"

    def __init__(
        self,
        target: float = 0.3,
        *,
        broken: Sequence[int] = (),
        cancel_after: int | None = None,
        models: Sequence[str] = ("a", "b"),
    ) -> None:
        self.target = target
        self.broken = set(broken)
        self.cancel_after = cancel_after
        self.models = tuple(models)
        self.seen: list[Recipe] = []
        self.closed = False

    def score(self, recipe: Recipe) -> float:
        return sum(
            (value - self.target) ** 2 for m in self.models for value in layer_values(recipe, m)
        )

    def evaluate(
        self, batch: Sequence[tuple[int, Recipe]], cancel: threading.Event
    ) -> Iterator[tuple[int, dict[str, float], float]]:
        for index, recipe in batch:
            if cancel.is_set():
                return
            number = len(self.seen)
            self.seen.append(recipe)
            score = float("inf") if number in self.broken else self.score(recipe)
            if self.cancel_after is not None and len(self.seen) >= self.cancel_after:
                cancel.set()
            yield index, {LABEL: score}, 0.01

    def describe(self) -> str:
        return "quadratic"

    def close(self) -> None:
        self.closed = True


def read_lines(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]

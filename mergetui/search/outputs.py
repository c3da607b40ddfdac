"""What a search leaves in its folder, and how a stopped one is read back.

- `evaluations.jsonl`: one line per scored candidate (its generation and place in it, the values by
  label, each objective's score, the fitness, the seconds it took), appended and flushed as each
  candidate is scored, so a crash or Ctrl-C loses at most the candidate in progress. It is what a
  rerun resumes from.
- `best.toml`: the best candidate as a plain recipe (per-layer values, no `[search]` table; local
  model folders absolute, `output` the folder `best-merge` beside it): `mergetui merge best.toml`.
- `best.yaml`: the same for `mergekit-yaml` (left out when mergekit YAML cannot say it).
- `summary.json`: the search in short: spec, budget, evaluations, the best candidate.

The best files and the summary are rewritten atomically (`recipe.io.write_text_atomic`) on every
improvement, so each is always whole. Scores and fitnesses that are not finite (a broken candidate)
are written as null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mergetui.errors import UserError
from mergetui.recipe.model import Recipe
from mergetui.recipe.paths import local_model_path, recipe_folder

EVALUATIONS_FILE = "evaluations.jsonl"
BEST_TOML = "best.toml"
BEST_YAML = "best.yaml"
SUMMARY_FILE = "summary.json"
BEST_OUTPUT = "best-merge"  # where best.toml merges to, beside it


@dataclass(frozen=True)
class Evaluation:
    """One line of evaluations.jsonl."""

    evaluation: int  # 0-based over the whole search, in the order the lines were written
    generation: int
    candidate: int  # its place in the generation (CMA-ES's order)
    values: dict[str, float]  # label -> value
    scores: dict[str, float]  # objective label -> score (inf for a broken candidate)
    fitness: float  # inf for a broken candidate
    seconds: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "evaluation": self.evaluation,
                "generation": self.generation,
                "candidate": self.candidate,
                "values": self.values,
                "scores": {label: _finite(score) for label, score in self.scores.items()},
                "fitness": _finite(self.fitness),
                "seconds": round(self.seconds, 4),
            },
            allow_nan=False,
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def read_evaluations(out_dir: Path) -> list[Evaluation]:
    """The lines of a previous run's evaluations.jsonl ([] when there is none). A last line cut
    short (the process killed while writing it) is ignored; anything else unreadable is an error."""
    path = out_dir / EVALUATIONS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the evaluations: {exc}", where=str(path)) from None
    lines = text.split("\n")
    if lines and not text.endswith("\n"):
        lines = lines[:-1]  # cut short: rewritten on the next append
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            records.append(_parse(line, f"{path}:{number}"))
    return records


def _parse(line: str, where: str) -> Evaluation:
    fix = "this folder holds another search's results: pass another --out, or delete the file"
    try:
        data = json.loads(line)
        return Evaluation(
            evaluation=int(data["evaluation"]),
            generation=int(data["generation"]),
            candidate=int(data["candidate"]),
            values={str(k): float(v) for k, v in data["values"].items()},
            scores={str(k): math.inf if v is None else float(v) for k, v in data["scores"].items()},
            fitness=math.inf if data["fitness"] is None else float(data["fitness"]),
            seconds=float(data["seconds"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise UserError("not an evaluation line of mergetui evolve", where=where, fix=fix) from None


class EvaluationLog:
    """evaluations.jsonl, opened for appending on the first record (so a search that fails its
    checks writes nothing); each line flushed to disk before the next candidate."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / EVALUATIONS_FILE
        self._file: TextIO | None = None

    def append(self, record: Evaluation) -> None:
        if self._file is None:
            self._file = self._open()
        self._file.write(record.to_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _open(self) -> TextIO:
        from mergetui.checkpoints.files import os_error

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _drop_cut_line(self.path)
            return self.path.open("a", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise os_error(exc, self.path, "write this file") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _drop_cut_line(path: Path) -> None:
    """Remove a last line cut short by a killed process, so the next line starts on its own."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


# ----------------------------------------------------------------------------------------------
# The best files and the summary


def best_recipe(recipe: Recipe, spec_folder: Path, description: str) -> Recipe:
    """`recipe` made to live in the output folder: local model folders absolute (they are found
    from anywhere), Hub ids as they are, `output` = `best-merge` beside the file."""
    import dataclasses

    models = {}
    for name, entry in recipe.models.items():
        local = local_model_path(entry.source, spec_folder)
        source = str(local) if local.is_dir() else entry.source
        models[name] = dataclasses.replace(entry, source=source)
    return dataclasses.replace(
        recipe,
        models=models,
        output=BEST_OUTPUT,
        description=description,
        search=None,
        locations={},
        source_path=None,
    )


def write_best(out_dir: Path, recipe: Recipe) -> list[str]:
    """best.toml and best.yaml, each atomically; the files written (best.yaml is left out, and
    an older one removed, when mergekit YAML cannot express the recipe)."""
    from mergetui.recipe.io import write_text_atomic
    from mergetui.recipe.toml_write import dumps_toml
    from mergetui.recipe.yaml_export import dumps_yaml

    write_text_atomic(out_dir / BEST_TOML, dumps_toml(recipe))
    try:
        yaml_text = dumps_yaml(recipe)
    except UserError:
        (out_dir / BEST_YAML).unlink(missing_ok=True)
        return [BEST_TOML]
    write_text_atomic(out_dir / BEST_YAML, yaml_text)
    return [BEST_TOML, BEST_YAML]


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> None:
    from mergetui.recipe.io import write_text_atomic

    write_text_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def summary_data(
    spec: Any,
    *,
    out_dir: Path,
    evaluations: int,
    best: Evaluation | None,
    stopped: bool,
    files: list[str],
) -> dict[str, Any]:
    """summary.json's content (and `mergetui evolve --json`'s)."""
    best_data = None
    if best is not None:
        best_data = {
            "evaluation": best.evaluation,
            "generation": best.generation,
            "fitness": _finite(best.fitness),
            "values": best.values,
            "scores": {k: _finite(v) for k, v in best.scores.items()},
        }
    return {
        "spec": str(spec.source_path) if spec.source_path else None,
        "out_dir": str(out_dir),
        "method": spec.recipe.method,
        "parameters": list(spec.parameters),
        "layer_groups": spec.layer_groups,
        "smooth": spec.smooth,
        "budget": spec.budget,
        "population": spec.effective_population,
        "seed": spec.seed,
        "objectives": [
            {"label": o.label, "kind": o.kind, "weight": o.weight} for o in spec.objectives
        ],
        "evaluations": evaluations,
        "stopped": stopped,
        "best": best_data,
        "files": [EVALUATIONS_FILE, *files, SUMMARY_FILE] if evaluations else [],
    }


def spec_folder(spec: Any) -> Path:
    """The folder the spec's relative paths start from."""
    return recipe_folder(spec.recipe.source_path)


def default_out_dir(spec_path: str | os.PathLike[str]) -> Path:
    """Where a search writes when not told: `SPEC_STEM-evolve` beside the spec (`mergetui evolve`
    without --out, and the app's Search screen for the open recipe)."""
    path = Path(spec_path)
    return path.parent / f"{path.stem}-evolve"

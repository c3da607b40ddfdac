"""What the Recipe screen knows of each model's checkpoint, read from its headers (never its weights).

The screen reads them in a worker whenever the models change; the panes read the shared dict: the
Setup tab's layer column, the grid's rows and tensor names, the slice dialogs' layer ranges, the
stack's parameter estimate, and the metric overlay's local folders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mergetui.editing.tensor_names import TensorNames
from mergetui.errors import UserError


@dataclass
class CheckpointFacts:
    """What the app knows about a model's checkpoint (from its headers), or why it knows nothing."""

    path: Path | None = None
    num_layers: int | None = None
    parameters: int | None = None
    layer_parameters: int | None = None  # parameters in one layer
    names: list[str] = field(default_factory=list)
    error: str | None = None


Facts = Mapping[str, CheckpointFacts]


def layer_counts(facts: Facts) -> dict[str, int]:
    """The layer count of each model whose headers say it."""
    return {name: f.num_layers for name, f in facts.items() if f.num_layers}


def tensor_names(models: Iterable[str], facts: Facts) -> TensorNames | None:
    """How the first readable model (in recipe order) names its tensors, if it is a known layout."""
    for name in models:
        known = facts.get(name)
        if known and known.names:
            names = TensorNames.from_names(known.names)
            if names is not None:
                return names
    return None


def read_checkpoint_facts(source: str, revision: str | None, base_dir: Path) -> CheckpointFacts:
    """Headers only: layer count, tensor names and parameter counts, or why they are unknown."""
    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.checkpoints.locate import find_local
    from mergetui.recipe.paths import local_model_path

    try:
        candidate = local_model_path(source, base_dir)
        path = candidate if candidate.exists() else find_local(source, revision)
        if path is None:
            return CheckpointFacts(error=f"{source}: not found locally (not downloaded yet?)")
        checkpoint = open_checkpoint(path)
        layer_parameters = None
        if checkpoint.layers:
            layer_parameters = sum(checkpoint.tensors[n].numel for n in checkpoint.layer_tensors(0))
        return CheckpointFacts(
            path=path,
            num_layers=checkpoint.num_layers,
            parameters=checkpoint.parameter_count,
            layer_parameters=layer_parameters,
            names=list(checkpoint.tensors),
        )
    except UserError as exc:
        return CheckpointFacts(error=str(exc))
    except (OSError, ValueError) as exc:
        return CheckpointFacts(error=f"{source}: {exc}")

"""Can these checkpoints be merged? Architecture, tensor names and shapes, compared by header.

A merge of mismatched models fails late (or, worse, writes nonsense), so the app and the CLI check
first: every problem names the model and the tensor, with both shapes, so the fix is obvious (a
different vocabulary, an extra layer, another architecture). Models are read from local headers,
or from the Hub's headers when a model is not on this machine and the Hub can be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.errors import UserError


@dataclass
class CompatProblem:
    model: str  # the model compared with the reference
    message: str
    tensor: str | None = None

    def __str__(self) -> str:
        return f"{self.model}: {self.message}"


@dataclass
class CompatReport:
    reference: str | None
    problems: list[CompatProblem]
    checked: list[str]  # models whose headers were compared
    skipped: dict[str, str]  # model -> why it could not be read

    @property
    def ok(self) -> bool:
        return not self.problems and not self.skipped


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def compare_checkpoints(
    checkpoints: dict[str, Any], reference: str | None = None
) -> list[CompatProblem]:
    """Problems of each checkpoint against `reference` (default: the first)."""
    if not checkpoints:
        return []
    names = list(checkpoints)
    ref_name = reference if reference in checkpoints else names[0]
    ref = checkpoints[ref_name]
    problems: list[CompatProblem] = []
    for name in names:
        if name == ref_name:
            continue
        other = checkpoints[name]
        if ref.architecture and other.architecture and ref.architecture != other.architecture:
            problems.append(
                CompatProblem(
                    name,
                    f"architecture {other.architecture}, but {ref_name} is {ref.architecture}",
                )
            )
        if ref.num_layers != other.num_layers:
            problems.append(
                CompatProblem(
                    name,
                    f"{other.num_layers} layers, but {ref_name} has {ref.num_layers} "
                    "(a slice recipe can still combine them)",
                )
            )
        for tensor, info in ref.tensors.items():
            theirs = other.tensors.get(tensor)
            if theirs is None:
                problems.append(
                    CompatProblem(name, f"{tensor}: in {ref_name}, missing in {name}", tensor)
                )
            elif tuple(theirs.shape) != tuple(info.shape):
                problems.append(
                    CompatProblem(
                        name,
                        f"{tensor}: {ref_name} {_shape(info.shape)} vs {name} {_shape(theirs.shape)}",
                        tensor,
                    )
                )
        for tensor in other.tensors:
            if tensor not in ref.tensors:
                problems.append(
                    CompatProblem(name, f"{tensor}: in {name}, missing in {ref_name}", tensor)
                )
    return problems


def open_model(source: str, revision: str | None, base_dir: Path | None, remote: bool) -> Any:
    """A local checkpoint for `source`, else (with `remote`) its headers read from the Hub."""
    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id

    candidate = Path(source).expanduser()
    if not candidate.is_absolute() and base_dir is not None and (base_dir / candidate).is_dir():
        return open_checkpoint(base_dir / candidate)
    found = find_local(source, revision)
    if found is not None:
        return open_checkpoint(found)
    if remote and looks_like_hub_id(source):
        from mergetui.checkpoints.hub import read_remote_checkpoint

        return read_remote_checkpoint(source, revision)
    raise UserError(
        "not on this machine"
        + (" (and the Hub was not asked)" if looks_like_hub_id(source) else ""),
        where=source,
        fix="download it, or check the path",
    )


def check_recipe_models(
    recipe: Any, base_dir: Path | None = None, *, remote: bool = True
) -> CompatReport:
    """Compare the recipe's models with its base (or its first model)."""
    opened: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, entry in recipe.models.items():
        try:
            opened[name] = open_model(entry.source, entry.revision, base_dir, remote)
        except UserError as exc:
            skipped[name] = str(exc)
        except (OSError, ValueError) as exc:
            skipped[name] = f"{entry.source}: {exc}"
    reference = recipe.base if recipe.base in opened else (next(iter(opened), None))
    problems = compare_checkpoints(opened, reference)
    return CompatReport(reference, problems, list(opened), skipped)

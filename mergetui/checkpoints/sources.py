"""Where checkpoints come from: local model folders, the Hugging Face cache, the Hub's search.

Each source gives `CheckpointRow`s, one shape for all three, so the app's list and `mergetui`
commands can show, filter and sort them together. Local rows are read from headers and config
alone (no tensor is loaded); a folder that cannot be read is still listed, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.errors import UserError

ORIGINS = ("folder", "cache", "hub")
_MAX_DEPTH = 3
_WEIGHT_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class CheckpointRow:
    """One checkpoint in the list, wherever it lives. `source` is what a recipe names it by."""

    name: str
    source: str
    origin: str  # "folder", "cache" or "hub"
    path: Path | None = None
    revision: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    dtype: str | None = None
    size: int | None = None
    layers: int | None = None
    error: str | None = None
    hub: Any = None  # a hub.HubModel for Hub rows (downloads, likes, tags…)
    adapter: dict[str, Any] | None = None  # a LoRA adapter folder: `Adapter.to_dict()`

    @property
    def remote(self) -> bool:
        return self.path is None

    @property
    def where(self) -> str:
        return "remote" if self.remote else "local"

    @property
    def key(self) -> str:
        return f"{self.origin}:{self.source}"

    def matches(self, text: str) -> bool:
        """Filter-as-you-type: every word must appear in the name, source, architecture or tags
        (for a folder, its name and its parent's: the rest of the path would match everything)."""
        source = self.source
        if self.origin == "folder":
            source = "/".join(Path(self.source).parts[-2:])
        haystack = " ".join(
            str(part)
            for part in (
                self.name,
                source,
                self.architecture or "",
                self.dtype or "",
                self.origin,
                self.where,
                " ".join(getattr(self.hub, "tags", None) or []),
            )
        ).lower()
        return all(word in haystack for word in text.lower().split())


def is_checkpoint_dir(path: Path) -> bool:
    """A folder that holds model weights (safetensors, an index, or pytorch .bin files)."""
    if not path.is_dir():
        return False
    if any((path / name).is_file() for name in _WEIGHT_NAMES):
        return True
    try:
        return any(
            child.suffix == ".safetensors"
            and child.name != "adapter_model.safetensors"
            or (child.name.startswith("pytorch_model") and child.suffix == ".bin")
            for child in path.iterdir()
        )
    except OSError:
        return False


def find_checkpoint_dirs(folder: Path, depth: int = _MAX_DEPTH) -> list[Path]:
    """Checkpoint folders at or under `folder` (hidden folders and the insides of a checkpoint
    are skipped), in name order."""
    from mergetui.checkpoints.lora import is_adapter_folder

    folder = Path(folder).expanduser()
    if is_checkpoint_dir(folder) or is_adapter_folder(folder):
        return [folder]
    if depth <= 0 or not folder.is_dir():
        return []
    found: list[Path] = []
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        found.extend(find_checkpoint_dirs(child, depth - 1))
    return found


def row_from_checkpoint(
    path: Path, *, origin: str, name: str, source: str, revision: str | None = None
) -> CheckpointRow:
    """Facts from headers; a folder that cannot be opened becomes a row carrying the reason."""
    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.checkpoints.lora import is_adapter_folder

    row = CheckpointRow(name=name, source=source, origin=origin, path=path, revision=revision)
    if is_adapter_folder(path) and not is_checkpoint_dir(path):
        return _adapter_row(row, path)
    try:
        checkpoint = open_checkpoint(path)
    except UserError as exc:
        row.error = exc.message
        return row
    except (OSError, ValueError) as exc:
        row.error = str(exc)
        return row
    row.architecture = checkpoint.architecture or checkpoint.model_type
    row.parameters = checkpoint.parameter_count
    row.dtype = checkpoint.dtype
    row.layers = checkpoint.num_layers
    try:
        row.size = checkpoint.size_on_disk
    except OSError:
        row.size = None
    return row


def _adapter_row(row: CheckpointRow, path: Path) -> CheckpointRow:
    """A LoRA adapter folder as a row: "LoRA" for its architecture, its own parameters, dtype
    and size, and its facts (rank, alpha, targets) for the details pane."""
    from mergetui.checkpoints.lora import open_adapter

    try:
        adapter = open_adapter(path)
    except UserError as exc:
        row.error = exc.message
        return row
    infos = [
        *(info for module in adapter.modules.values() for info in (module.a, module.b)),
        *adapter.replaced.values(),
    ]
    row.architecture = "LoRA"
    row.parameters = sum(info.numel for info in infos)
    row.dtype = max({info.dtype for info in infos}, key=str) if infos else None
    try:
        row.size = adapter.size_on_disk
    except OSError:
        row.size = None
    row.adapter = adapter.to_dict()
    return row


def scan_models_dirs(folders: Iterable[str | Path]) -> list[CheckpointRow]:
    """Every checkpoint under the given folders (a missing folder yields nothing)."""
    rows: list[CheckpointRow] = []
    seen: set[Path] = set()
    for folder in folders:
        root = Path(folder).expanduser()
        for path in find_checkpoint_dirs(root):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            name = path.name if path != root else root.name
            rows.append(
                row_from_checkpoint(resolved, origin="folder", name=name, source=str(resolved))
            )
    return rows


def scan_cache(cache_dir: Path | None = None) -> list[CheckpointRow]:
    """Model repos in the Hugging Face cache (HF_HUB_CACHE / HF_HOME honoured at call time),
    one row per repo at the revision `main` points to (or its newest snapshot)."""
    from mergetui.checkpoints.locate import hub_cache_dir, is_incomplete
    from mergetui.checkpoints.lora import is_adapter_folder

    root = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    if not root.is_dir():
        return []
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(root)
    except CacheNotFound:
        return []
    rows: list[CheckpointRow] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        revisions = [r for r in repo.revisions if not is_incomplete(Path(r.snapshot_path))]
        if not revisions:
            continue
        chosen = next((r for r in revisions if "main" in r.refs), None)
        if chosen is None:
            chosen = max(revisions, key=lambda r: r.last_modified)
        snapshot = Path(chosen.snapshot_path)
        if not is_checkpoint_dir(snapshot) and not is_adapter_folder(snapshot):
            continue
        rows.append(
            row_from_checkpoint(
                snapshot,
                origin="cache",
                name=repo.repo_id,
                source=repo.repo_id,
                revision=None if "main" in chosen.refs else chosen.commit_hash,
            )
        )
    return rows


def scan_local(
    models_dirs: Iterable[str | Path], cache_dir: Path | None = None
) -> list[CheckpointRow]:
    """The remembered folders, then the HF cache."""
    return [*scan_models_dirs(models_dirs), *scan_cache(cache_dir)]


def hub_row(model: Any) -> CheckpointRow:
    """A search result as a row (remote until downloaded)."""
    return CheckpointRow(
        name=model.repo_id,
        source=model.repo_id,
        origin="hub",
        architecture=model.architecture,
        parameters=model.total_parameters,
        dtype=model.dtype,
        size=model.size,
        hub=model,
    )

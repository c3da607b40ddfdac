"""Which checkpoints the Chat screen offers: to load (the load dialog's list), and to compare and
check (the loaded model and the recipe's models); and whether they all fit in memory at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.tui.paths_text import document_folder


@dataclass
class LoadChoice:
    """A model to load, and what it may do: run its own code, or read pickled .bin weights."""

    source: str
    trust_remote_code: bool
    allow_bin: bool = False

    def load(
        self,
        device: str,
        dtype: str,
        *,
        on_progress: Callable[[str, float], Any],
        base_dir: Path | None = None,
    ) -> Any:
        """Load it for chatting (in a worker's thread: this imports torch); raises UserError."""
        from mergetui.chat.loader import load_for_chat

        return load_for_chat(
            self.source,
            device=device,
            dtype=dtype,
            trust_remote_code=self.trust_remote_code,
            allow_bin=self.allow_bin,
            base_dir=base_dir,
            on_progress=on_progress,
        )


# At most this many candidates in the load dialog (past merges fill what is left).
MAX_CANDIDATES = 12


def recipe_models(document: Any, *, downloaded: bool) -> Iterator[tuple[str, str]]:
    """(name, folder) of each recipe model found on disk: a local folder, or (with `downloaded`)
    a Hub id already in the cache."""
    from mergetui.recipe.paths import local_model_path

    base = document_folder(document)
    for name, entry in document.recipe.models.items():
        candidate = local_model_path(entry.source, base)
        if candidate.is_dir():
            yield name, str(candidate.resolve())
        elif downloaded:
            from mergetui.checkpoints.locate import find_local

            found = find_local(entry.source, entry.revision)
            if found is not None:
                yield name, str(found)


def load_candidates(document: Any, last_merge: str | None) -> list[tuple[str, str]]:
    """The merge just made, the recipe's models, then past finished merges that still exist."""
    from mergetui.merge.history import load_history

    found: dict[str, str] = {}  # folder -> label, the first label kept

    if last_merge and Path(last_merge).is_dir():
        found.setdefault(str(last_merge), "the merge just made")
    for name, path in recipe_models(document, downloaded=False):
        found.setdefault(path, f"recipe model {name}")
    try:
        history = load_history()
    except Exception:  # the history is a convenience
        history = []
    for record in reversed(history):
        if record.outcome == "finished" and Path(record.output_dir).is_dir():
            found.setdefault(str(record.output_dir), f"merge of {record.when()}")
        if len(found) >= MAX_CANDIDATES:
            break
    return [(label, path) for path, label in found.items()]


def compare_sources(document: Any, loaded: Any, last_merge: str | None) -> list[tuple[str, str]]:
    """The loaded model (or the last merge) first, then the recipe's models; each folder once."""
    sources: list[tuple[str, str]] = []
    if loaded is not None:
        sources.append((loaded.name, str(loaded.path)))
    elif last_merge and Path(last_merge).is_dir():
        sources.append((Path(last_merge).name, str(Path(last_merge).resolve())))
    sources += recipe_models(document, downloaded=True)
    unique: list[tuple[str, str]] = []
    for name, path in sources:
        if all(path != p for _, p in unique):
            unique.append((name, path))
    return unique


def fit_together(sources: list[tuple[str, str]], bin_allowed: set[str]) -> bool:
    """True when every model fits in memory at once (else they take turns)."""
    from mergetui.chat.memory import available_ram, needed_bytes, weights_bytes

    try:
        total = sum(
            needed_bytes(weights_bytes(path, allow_bin=path in bin_allowed)) for _, path in sources
        )
    except Exception:
        return False
    free = available_ram()
    return free is not None and total < free * 0.8

"""Turn a model source (a folder, or a Hugging Face repo id) into a local folder, if there is one.

Recipes name models the way people do: a path, or `org/name` from the Hub. Before anything is
downloaded, a repo already in the Hugging Face cache is used from there. The cache layout is
huggingface_hub's (`models--org--name/refs/<revision>` holding a commit hash, and
`snapshots/<hash>/`); the location honours HF_HUB_CACHE and HF_HOME, read at call time so a
changed environment takes effect without a restart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# huggingface_hub's rules: up to 96 characters per part, letters, digits, "-", "_", "."; no "--" or
# "..", and no "-" or "." at either end.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_HUB_ID_RE = re.compile(rf"^(?:{_PART}/)?{_PART}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Written by mergetui's downloader beside a snapshot it is still filling (see checkpoints.hub).
INCOMPLETE_MARKER = ".mergetui-incomplete"


def looks_like_hub_id(source: str) -> bool:
    """Whether `source` could be a Hub repo id (`org/name` or a bare legacy `name`)."""
    if "--" in source or ".." in source:
        return False
    return bool(_HUB_ID_RE.match(source))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub would choose it now."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def cached_repo_dir(repo_id: str, cache_dir: Path | None = None) -> Path:
    """Where the cache keeps a model repo (whether or not it is there)."""
    root = cache_dir if cache_dir is not None else hub_cache_dir()
    return root / ("models--" + repo_id.replace("/", "--"))


def find_local(source: str | Path, revision: str | None = None) -> Path | None:
    """An existing folder for `source`, or the cached snapshot of that repo id, else None.

    A folder wins over the cache (absolute, `~`-relative, or relative to the working directory).
    In the cache, `revision` (default "main") is a branch or tag under refs/, or a commit hash
    naming a snapshot. With no revision and no refs/main, a single snapshot is used. A snapshot
    that mergetui is still downloading (or whose download was cancelled) is not used.
    """
    text = str(source)
    folder = Path(text).expanduser()
    if folder.is_dir():
        return folder.resolve()
    if not looks_like_hub_id(text):
        return None
    repo = cached_repo_dir(text)
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    wanted = revision or "main"
    ref = repo / "refs" / wanted
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        snapshot = snapshots / commit
        return snapshot if snapshot.is_dir() and not is_incomplete(snapshot) else None
    if _COMMIT_RE.match(wanted) and (snapshots / wanted).is_dir():
        return None if is_incomplete(snapshots / wanted) else snapshots / wanted
    if revision is None:
        candidates = [
            entry for entry in snapshots.iterdir() if entry.is_dir() and not is_incomplete(entry)
        ]
        if len(candidates) == 1:
            return candidates[0]
    return None


def is_incomplete(snapshot: Path) -> bool:
    """Whether a cached snapshot is one mergetui has not finished downloading."""
    repo = snapshot.parent.parent
    return (repo / f"{INCOMPLETE_MARKER}-{snapshot.name}").exists()

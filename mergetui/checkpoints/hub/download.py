"""Downloading a model into the Hugging Face cache, one file at a time, resumable.

Downloads land in the cache layout `huggingface_hub` and transformers use (blobs named by their
etag, linked from `snapshots/<commit>/`). Each file is written to a temporary name and moved into
place when complete (`hub.net.fetch_file`), so a cancel or a broken connection never leaves a
partial file. A snapshot is marked incomplete until its last file is in, and `locate.find_local`
ignores a marked snapshot, so a cancelled download is never mistaken for a model; pulling again
resumes (files already there are skipped).
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergetui.checkpoints.hub.client import check_online, file_url, request_headers
from mergetui.checkpoints.hub.errors import RETRY_DOWNLOAD_FIX, hub_error, is_broken_transfer
from mergetui.checkpoints.hub.net import DOWNLOAD_TIMEOUT_VAR, fetch_file, link_into_snapshot
from mergetui.checkpoints.hub.search import HubFile, model_info
from mergetui.checkpoints.locate import INCOMPLETE_MARKER, cached_repo_dir, hub_cache_dir
from mergetui.errors import CancelledError, UserError

# What a merge needs: weights, configs and index, tokenizer files and chat templates.
DEFAULT_INCLUDE: tuple[str, ...] = (
    "*.safetensors",
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    "*.jinja",
)


@dataclass
class DownloadProgress:
    """Where a download stands: `file` is the one being fetched (or the last one, when done)."""

    repo_id: str
    file: str
    files_done: int
    file_count: int
    bytes_done: int
    bytes_total: int
    done: bool = False


ProgressCallback = Callable[[DownloadProgress], None]


def safe_repo_path(name: str) -> str:
    """A repo file name that stays inside the download folder, or a `UserError`."""
    bad = (
        not name
        or name.startswith(("/", "\\", "~"))
        or "\\" in name
        or "\0" in name
        or re.match(r"^[A-Za-z]:", name) is not None
        or any(part in ("", ".", "..") for part in name.split("/"))
    )
    if bad:
        raise UserError(
            f"refused the repo file name {name!r}: it would be written outside the model's folder",
            fix="this repo is malformed or hostile; do not download it",
        )
    return name


def select_files(
    files: Iterable[HubFile], include: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> list[HubFile]:
    """Files matching any of `include` (default: weights, configs, tokenizer) and none of `exclude`.
    Patterns match the whole path or the file name. Order: small metadata first, weights last, so
    an interrupted download has its index (naming every shard) before any shard."""
    patterns = list(include) if include else list(DEFAULT_INCLUDE)

    def matches(path: str, wanted: Sequence[str]) -> bool:
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in wanted)

    chosen = [f for f in files if matches(f.path, patterns) and not matches(f.path, exclude)]
    return sorted(chosen, key=lambda f: (f.path.endswith(".safetensors") or f.lfs, f.path))


class _Tally:
    """Counts a download's files and bytes and hands each change to the progress callback."""

    def __init__(
        self, repo_id: str, chosen: list[HubFile], on_progress: ProgressCallback | None
    ) -> None:
        self.repo_id = repo_id
        self.file_count = len(chosen)
        self.total = sum(f.size or 0 for f in chosen)
        self.on_progress = on_progress
        self.file = chosen[0].path
        self.files = 0
        self.bytes = 0

    def report(self, done: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(
                DownloadProgress(
                    self.repo_id,
                    self.file,
                    self.files,
                    self.file_count,
                    self.bytes,
                    self.total,
                    done,
                )
            )

    def add_bytes(self, count: int) -> None:
        self.bytes += count
        self.report()


def download_repo(
    repo_id: str,
    *,
    revision: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    cache_dir: Path | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Download a model's files into the HF cache; returns its snapshot folder.

    Files already there are skipped, so a second pull resumes. `cancel` is checked between chunks;
    a cancelled download raises `CancelledError` and leaves no partial file. Every request is
    bounded by HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT and tried again when that is safe.
    """
    check_online()
    info = model_info(repo_id, revision)
    if not info.sha:
        raise UserError("the Hub gave no commit for this revision", where=repo_id)
    for item in info.files or []:
        safe_repo_path(item.path)
    chosen = select_files(info.files or [], include, exclude)
    if not chosen:
        raise UserError(
            "no file in the repo matches what was asked for",
            where=repo_id,
            fix="check --include (default: "
            + ", ".join(DEFAULT_INCLUDE)
            + "); the repo's files are listed by `mergetui hub info`",
        )
    repo_dir = cached_repo_dir(
        repo_id, Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    )
    marker = repo_dir / f"{INCOMPLETE_MARKER}-{info.sha}"
    tally = _Tally(repo_id, chosen, on_progress)
    missing = _missing_files(chosen, repo_dir / "snapshots" / info.sha, tally)
    if missing:
        repo_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"mergetui download of {repo_id} at {info.sha} in progress\n")
    tally.report()
    for item in missing:
        if cancel is not None and cancel.is_set():
            raise CancelledError("download cancelled")
        tally.file = item.path
        before = tally.bytes
        tally.report()
        _fetch_into_cache(repo_id, item, info.sha, repo_dir, tally.add_bytes, cancel)
        # A blob already in the cache (another revision has it) reports no bytes: count it now.
        tally.bytes = before + (item.size or 0)
        tally.files += 1
        tally.report()
    _write_ref(repo_dir, revision or "main", info.sha)
    marker.unlink(missing_ok=True)
    tally.report(done=True)
    return repo_dir / "snapshots" / info.sha


def _missing_files(chosen: list[HubFile], snapshot: Path, tally: _Tally) -> list[HubFile]:
    """The chosen files the snapshot lacks (or holds at another size); the others are counted."""
    missing = []
    for item in chosen:
        target = snapshot / item.path
        if target.is_file() and (item.size is None or target.stat().st_size == item.size):
            tally.bytes += item.size or target.stat().st_size
            tally.files += 1
        else:
            missing.append(item)
    return missing


def _fetch_into_cache(
    repo_id: str,
    item: HubFile,
    sha: str,
    repo_dir: Path,
    on_bytes: Callable[[int], None],
    cancel: threading.Event | None,
) -> None:
    """One file into huggingface_hub's cache layout: the blob named by its etag (what the Hub
    lists: the LFS sha256, else the git blob id), then the snapshot's link to it. A blob already
    there is only linked; without a usable etag the file goes into the snapshot itself."""
    pointer = repo_dir / "snapshots" / sha / item.path
    etag = item.etag if item.etag and re.fullmatch(r"[0-9A-Za-z_-]{1,128}", item.etag) else None
    target = repo_dir / "blobs" / etag if etag else pointer
    if etag and target.is_file() and (item.size is None or target.stat().st_size == item.size):
        link_into_snapshot(target, pointer)
        return
    try:
        fetch_file(
            file_url(repo_id, item.path, sha),
            target,
            headers=request_headers(),
            size=item.size,
            on_bytes=on_bytes,
            cancel=cancel,
        )
    except CancelledError:
        raise
    except Exception as exc:
        if cancel is not None and cancel.is_set():
            raise CancelledError("download cancelled") from None
        if is_broken_transfer(exc):
            raise UserError(
                f"the download of {item.path} broke off before the file was complete",
                where=repo_id,
                fix=RETRY_DOWNLOAD_FIX,
            ) from None
        raise hub_error(exc, repo_id, timeout_variable=DOWNLOAD_TIMEOUT_VAR) from None
    if etag:
        link_into_snapshot(target, pointer)


def _write_ref(repo_dir: Path, revision: str, sha: str) -> None:
    """Point refs/<revision> at the snapshot, as huggingface_hub does, once it is complete."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(ref.name + ".tmp")
    tmp.write_text(sha)
    os.replace(tmp, ref)

"""Uploading a folder to a Hub model repo: created if needed, every file in one commit.

One commit means a cancelled or failed upload changes nothing on the Hub. Progress is read from the
uploader's own reads of the files (file objects keep huggingface_hub on its plain HTTP path, whose
reads are seen), and `cancel` is checked on every read. The model card (README.md) goes with it,
with `base_model` added when the caller names the parents (`hub.card`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.checkpoints.hub.card import CARD_FILE, card_with_parents
from mergetui.checkpoints.hub.client import check_online, hf_api, hub_endpoint, hub_token
from mergetui.checkpoints.hub.errors import hub_error
from mergetui.errors import CancelledError, UserError


@dataclass
class UploadProgress:
    repo_id: str
    stage: str  # "preparing", "uploading", "done"
    files: int
    bytes_done: int
    bytes_total: int
    url: str | None = None


def _counting_file(
    path: Path,
    seen: dict[str, int],
    key: str,
    notify: Callable[[], None],
    cancel: threading.Event | None,
) -> Any:
    """A file object for the uploader that records how far it has been read and checks cancel.
    (A file object also keeps huggingface_hub on its plain HTTP upload path, whose reads we see.)"""
    import io

    class CountingFile(io.BufferedReader):
        counting = False

        def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
            if cancel is not None and cancel.is_set():
                raise CancelledError("upload cancelled")
            data = super().read(-1 if size is None else size)
            if CountingFile.counting:
                position = self.tell()
                if position > seen.get(key, 0):
                    seen[key] = position
                    notify()
            return data

    return CountingFile(io.FileIO(str(path), "rb"))


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    parents: Sequence[str] = (),
    private: bool = False,
    message: str | None = None,
    on_progress: Callable[[UploadProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Create the repo if needed and upload every file of `folder` in one commit; returns its URL.

    The model card (README.md) goes with it; when `parents` (Hub ids) are given and the card has no
    `base_model` in its front matter, they are added there, so the Hub draws the model tree.
    """
    source, files = _folder_files(folder, repo_id)
    total = sum(p.stat().st_size for p in files)
    seen: dict[str, int] = {}

    def report(stage: str, url: str | None = None) -> None:
        if on_progress is not None:
            done = min(sum(seen.values()), total)
            on_progress(UploadProgress(repo_id, stage, len(files), done, total, url))

    report("preparing")
    card = card_with_parents(source, parents)
    commit = _commit(source, files, repo_id, card, private, message, seen, report, cancel)
    seen.clear()
    seen["all"] = total
    url = f"{hub_endpoint()}/{repo_id}"
    report("done", url)
    return str(getattr(commit, "repo_url", None) or url)


def _folder_files(folder: str | Path, repo_id: str) -> tuple[Path, list[Path]]:
    """The folder and the files to upload (hidden ones left out), once the push can go ahead:
    the folder and repo id are sound, the Hub is online and there is a token."""
    from mergetui.checkpoints.locate import looks_like_hub_id

    source = Path(folder).expanduser()
    if not source.is_dir():
        raise UserError("no such folder", where=str(source), fix="give the merged model's folder")
    if "/" not in repo_id or not looks_like_hub_id(repo_id):
        raise UserError(
            "a Hub repo id is org/name (or user/name)",
            where=repo_id,
            fix="e.g. mergetui push merges/out your-name/my-merge",
        )
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )
    if not files:
        raise UserError("the folder is empty", where=str(source))
    check_online()
    if not hub_token():
        raise UserError(
            "uploading needs a Hub token with write access",
            fix=f"create a 'write' token at {hub_endpoint()}/settings/tokens and export HF_TOKEN=<it>",
        )
    return source, files


def _commit(
    source: Path,
    files: list[Path],
    repo_id: str,
    card: str | None,
    private: bool,
    message: str | None,
    seen: dict[str, int],
    report: Callable[[str], None],
    cancel: threading.Event | None,
) -> Any:
    """Create the repo (if needed) and commit the files, `card` as README.md when given."""
    import logging

    from huggingface_hub import CommitOperationAdd

    api = hf_api()
    hf_logger = logging.getLogger("huggingface_hub")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)  # it warns about file objects falling back from Xet to HTTP
    opened: list[Any] = []
    try:
        api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model")
        operations = []
        for path in files:
            relative = path.relative_to(source).as_posix()
            if relative == CARD_FILE and card is not None:
                seen[relative] = 0
                operations.append(CommitOperationAdd(relative, card.encode()))
                continue
            handle = _counting_file(path, seen, relative, lambda: report("uploading"), cancel)
            opened.append(handle)
            operations.append(CommitOperationAdd(relative, handle))
        if card is not None and not (source / CARD_FILE).is_file():
            operations.append(CommitOperationAdd(CARD_FILE, card.encode()))
        for handle in opened:
            type(handle).counting = True
        report("uploading")
        return api.create_commit(
            repo_id,
            operations,
            commit_message=message or f"Upload {source.name} with mergetui",
            repo_type="model",
        )
    except CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc.__cause__, CancelledError) or isinstance(exc.__context__, CancelledError):
            raise CancelledError("upload cancelled") from None
        raise hub_error(exc, repo_id, action="upload to") from None
    finally:
        hf_logger.setLevel(level)
        for handle in opened:
            handle.close()

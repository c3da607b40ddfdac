"""The output folder of a merge: what `--force` may replace, the temporary folder a merge writes
into, and the clean-up of temporary folders that interrupted merges left behind.

`--force` replaces only a folder that a previous merge wrote: it holds mergetui's recipe copy
(`mergetui.toml`), a `config.json` and the weights, and nothing a merge does not write (or it is
empty). Never the working folder, the recipe's folder, an input model's folder, or a folder that
holds any of them.

A merge writes into `.<name>.mergetui-tmp-<pid>-XXXX` beside the target and keeps an exclusive lock
on the file `.mergetui-lock` inside it while it runs. The kernel drops that lock when the process
ends, however it ends (kill -9 included), so a temporary folder whose lock can be taken belongs to
a merge that is gone: the next merge into the same target removes it. A folder without that lock
file, of another user, or a symbolic link is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.errors import UserError
from mergetui.merge.output import (
    CARD_FILE,
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    MERGEKIT_FILE,
    RECIPE_FILE,
    TOKENIZER_FILES,
)
from mergetui.merge.writer import INDEX_FILE_NAME, SINGLE_FILE_NAME

if TYPE_CHECKING:
    from mergetui.merge.plan import Plan

TEMP_MARKER = ".mergetui-tmp-"
OLD_MARKER = ".mergetui-old-"
LOCK_FILE = ".mergetui-lock"

# What a merge writes into its output folder, named where it is written (writer.py, output.py); a
# tokenizer's save_pretrained (with a chat template) writes among output.TOKENIZER_FILES too.
_MERGE_FILES = frozenset(
    {
        SINGLE_FILE_NAME,
        INDEX_FILE_NAME,
        CONFIG_FILE,
        GENERATION_CONFIG_FILE,
        CARD_FILE,
        RECIPE_FILE,
        MERGEKIT_FILE,
        *TOKENIZER_FILES,
    }
)
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_FORCE_FIX = "choose another --out (or, if that folder may go, remove or move it yourself)"


def replace_refusal(
    target: Path,
    *,
    inputs: Iterable[Path] = (),
    recipe_dir: Path | None = None,
    written_by_us: Callable[[Path], str | None] | None = None,
) -> str | None:
    """Why `--force` may not replace the existing folder `target` ("this one ..."), or None.

    It may when it is a previous merge's output (or empty) and holds none of the working folder,
    the recipe's folder and the inputs. Another command's outputs (an extracted adapter) pass
    `written_by_us`: why a folder is not one it wrote, or None."""
    if target.is_symlink() or not target.is_dir():
        return "is a file or a symbolic link"
    real = target.resolve()
    protected = [("the working folder", Path.cwd())]
    if recipe_dir is not None:
        protected.append(("the recipe's folder", Path(recipe_dir)))
    protected += [("an input model's folder", Path(p)) for p in inputs]
    for what, path in protected:
        path = path.resolve()
        if path == real:
            return f"is {what}"
        if real in path.parents:
            return f"holds {what} ({path})"
    return (written_by_us or _not_a_merge_output)(target)


def _not_a_merge_output(folder: Path) -> str | None:
    """None for an empty folder or one holding only what a merge writes, with its marks."""
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not entries:
        return None
    strangers = [e.name for e in entries if not _written_by_a_merge(e)]
    if strangers:
        shown = ", ".join(sorted(strangers)[:3]) + (" ..." if len(strangers) > 3 else "")
        return f"holds files a merge does not write ({shown})"
    names = {e.name for e in entries}
    weights = SINGLE_FILE_NAME in names or INDEX_FILE_NAME in names
    if not ({RECIPE_FILE, CONFIG_FILE} <= names and weights):
        return f"is not a merge's output (it lacks {RECIPE_FILE}, {CONFIG_FILE} or the weights)"
    return None


def _written_by_a_merge(entry: os.DirEntry[str]) -> bool:
    """A regular file named as a merge names its files (a trusted merge also copies *.py)."""
    if not entry.is_file(follow_symlinks=False):
        return False
    name = entry.name
    return name in _MERGE_FILES or bool(_SHARD_RE.match(name)) or name.endswith(".py")


def check_output(
    target: Path,
    force: bool,
    *,
    inputs: Iterable[Path] = (),
    recipe_dir: Path | None = None,
    written_by_us: Callable[[Path], str | None] | None = None,
) -> None:
    """Refuse an existing output unless `force`, and with `force` one it may not replace."""
    if not (target.exists() or target.is_symlink()):
        return
    if not force:
        raise UserError(
            "the output folder already exists",
            where=str(target),
            fix="pass --force to replace it (only once the new "
            f"{'merge' if written_by_us is None else 'output'} is complete), "
            "or choose another --out",
        )
    why = replace_refusal(target, inputs=inputs, recipe_dir=recipe_dir, written_by_us=written_by_us)
    if why is not None:
        what = "a previous merge" if written_by_us is None else "this command"
        raise UserError(
            f"--force only replaces a folder that {what} wrote, and this one {why}",
            where=str(target),
            fix=_FORCE_FIX,
        )


def output_guard(plan: Plan) -> dict[str, Any]:
    """What `check_output` protects for a plan besides the working folder: its inputs and the
    recipe's folder."""
    return {"inputs": [m.path for m in plan.models.values()], "recipe_dir": plan.recipe_dir}


class TempFolder:
    """The folder a merge writes into, locked for as long as this process runs the merge."""

    def __init__(self, target: Path) -> None:
        prefix = f".{target.name}{TEMP_MARKER}{os.getpid()}-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        self._fd: int | None = None
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.path, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
            self._fd = _lock(self.path / LOCK_FILE, create=True)
        except BaseException:
            remove_tree(self.path)
            raise

    def release_into(self, target: Path, force: bool, **check: object) -> None:
        """Rename the finished folder into place (see `move_into_place`), then drop the lock."""
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        try:
            move_into_place(self.path, target, force, **check)
        except BaseException:
            self.remove()
            raise
        self._unlock()

    def remove(self) -> None:
        """Delete the folder (the lock is held until it is gone, so no one else deletes it)."""
        remove_tree(self.path)
        self._unlock()

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lock(path: Path, *, create: bool) -> int | None:
    """An fd holding an exclusive lock on `path`, or None when another process holds it (or the
    platform has no flock: then nothing is ever taken for stale)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        if create:
            raise
        return None
    if create:
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove `target`'s temporary folders whose merge is gone; return what was removed.

    Only folders named `.<target name>.mergetui-tmp-*`, owned by this user, not symbolic links,
    holding the lock file, and whose lock no running process holds."""
    removed: list[Path] = []
    prefix = f".{target.name}{TEMP_MARKER}"
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                continue
            fd = _lock(Path(entry.path) / LOCK_FILE, create=False)
        except OSError:  # no lock file (not provably ours), or it vanished meanwhile
            continue
        if fd is None:
            continue  # its merge is still running
        try:
            remove_tree(Path(entry.path))
        finally:
            os.close(fd)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed


def move_into_place(
    temp: Path,
    target: Path,
    force: bool,
    *,
    inputs: Iterable[Path] = (),
    recipe_dir: Path | None = None,
    written_by_us: Callable[[Path], str | None] | None = None,
) -> None:
    """Rename the finished folder into place; an old output is replaced only now (checked again:
    it may have changed while merging), and restored if the rename fails."""
    if target.exists() or target.is_symlink():
        if not force:
            raise UserError(
                "the output folder appeared while merging",
                where=str(target),
                fix="pass --force to replace it, or choose another --out",
            )
        check_output(
            target, force, inputs=inputs, recipe_dir=recipe_dir, written_by_us=written_by_us
        )
        old = target.parent / f".{target.name}{OLD_MARKER}{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        try:
            os.rename(temp, target)
        except BaseException:
            os.rename(old, target)
            raise
        remove_tree(old)
    else:
        os.rename(temp, target)


def remove_tree(path: Path | None) -> None:
    """Delete a folder the merge made (never following a symbolic link out of it)."""
    if path is not None and (path.exists() or path.is_symlink()):
        shutil.rmtree(path, ignore_errors=True)

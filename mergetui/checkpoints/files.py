"""Opening a checkpoint's files safely, and saying in one line why one cannot be opened.

A checkpoint folder is input from someone else (a Hub repo, a shared drive). Its shard index may
name files outside the folder (`../other/model.safetensors`, `/etc/...`), and a name the code
expects to be a weight file may be a FIFO (opening it blocks forever), a device, or a symbolic link
that loops. The helpers here refuse those with a `UserError` before anything blocks or escapes;
`os_error` turns any `OSError` met on a file into one line saying what, where and how to fix it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath

from mergetui.errors import UserError

# errno -> (what happened, how to fix it); the rest fall back to the system's own words.
_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("file not found", "check the path"),
    errno.ELOOP: (
        "it is a symbolic link that loops (it leads back to itself)",
        "remove the link or point it at the real file (ls -l shows where it points)",
    ),
    errno.EACCES: ("permission denied", "check the permissions of the file and its folder"),
    errno.EPERM: ("operation not permitted", "check the permissions of the file and its folder"),
    errno.EROFS: (
        "the file system is read-only",
        "choose a path on a writable file system",
    ),
    errno.ENOSPC: ("no space left on the device", "free some space or choose another disk"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space or choose another disk"),
    errno.EISDIR: ("it is a folder, not a file", "give the path of a file"),
    errno.ENOTDIR: (
        "a part of the path is a file, not a folder",
        "check the path: every part but the last must be a folder",
    ),
    errno.EEXIST: (
        "something of that name is already there (a file where a folder is wanted?)",
        "check the path, or choose another name",
    ),
    errno.ENAMETOOLONG: ("the path is too long", "use a shorter path"),
}


def os_error(exc: OSError, path: str | Path, doing: str) -> UserError:
    """`exc`, met while `doing` something ("read this file", "write the recipe"), as a UserError."""
    what, fix = _REASONS.get(exc.errno or 0, (exc.strerror or str(exc), "check the path"))
    return UserError(f"cannot {doing}: {what}", where=str(path), fix=fix)


def open_regular(path: str | Path) -> int:
    """A read-only descriptor for `path`, only if it is a regular file (symlinks followed).

    Opened with O_NONBLOCK, so a FIFO or a device named like a weight file cannot block; the type is
    checked on the open descriptor (fstat), so it cannot change between the check and the read.
    O_NONBLOCK has no effect on reads of regular files.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise os_error(exc, path, "open this file") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise os_error(exc, path, "open this file") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UserError(
            f"cannot open this file: it is {_kind(mode)}, not a regular file",
            where=str(path),
            fix="replace it with the real file (a weight file must be a plain file, "
            "or a link to one)",
        )
    return fd


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def shard_name_problem(name: object) -> str | None:
    """Why a file name from a shard index is not a plain relative path inside the folder, or None.

    The check is on the name alone (usable for a remote repo too): no absolute path, no drive, no
    `..`, no backslash (a Windows separator), no NUL.
    """
    if not isinstance(name, str) or not name.strip():
        return "the file name is not a non-empty string"
    if "\x00" in name:
        return "the file name contains a NUL character"
    if "\\" in name:
        return "the file name contains a backslash"
    posix = PurePosixPath(name)
    if posix.is_absolute() or PureWindowsPath(name).drive:
        return "it is an absolute path"
    if ".." in posix.parts:
        return "it climbs out of the checkpoint folder with '..'"
    if name.startswith("~"):
        return "it starts with '~' (a home folder)"
    return None


def index_shards(weight_map: Mapping[object, object], index_name: str, where: str) -> list[str]:
    """The shard names of an index's weight_map in first-seen order, each checked by name.

    Raises a UserError naming the index (`index_name`, located at `where`), the offending entry
    and why, for the first entry whose file name could lead outside the checkpoint folder.
    """
    for tensor, shard in weight_map.items():
        problem = shard_name_problem(shard)
        if problem is not None:
            raise _escape_error(index_name, where, tensor, shard, problem)
    return [str(shard) for shard in dict.fromkeys(weight_map.values())]


def index_shard_paths(
    folder: Path, weight_map: Mapping[object, object], index_path: Path
) -> list[Path]:
    """Like `index_shards`, as paths in `folder`, also refusing a shard whose folder is a link
    leading elsewhere. The shard file itself may be a symbolic link: a Hugging Face cache
    snapshot links every file into ../../blobs/."""
    names = index_shards(weight_map, index_path.name, str(index_path))
    root = folder.resolve()
    paths = []
    for name in names:
        path = folder / name
        parent = path.parent.resolve()
        if parent != root and root not in parent.parents:
            tensor = next(key for key, value in weight_map.items() if value == name)
            raise _escape_error(
                index_path.name,
                str(index_path),
                tensor,
                name,
                f"its folder is a link that leads out of the checkpoint folder (to {parent})",
            )
        paths.append(path)
    return paths


def _escape_error(
    index_name: str, where: str, tensor: object, shard: object, why: str
) -> UserError:
    return UserError(
        f"{index_name} maps tensor {tensor} to {shard!r}, which is not a file inside the "
        f"checkpoint folder: {why}",
        where=where,
        fix="shard files must lie in the checkpoint's own folder; do not use this checkpoint "
        "unless you trust its source and fix the index",
    )


def local_file(text: str) -> Path | None:
    """The path, when a command given a checkpoint got something on disk that is not a folder (a
    file, or a broken link: then a UserError says why it cannot be opened); None otherwise."""
    path = Path(text).expanduser()
    if not os.path.lexists(path) or path.is_dir():
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        raise UserError(
            f"it is a symbolic link to {os.readlink(path)}, which does not exist",
            where=str(path),
            fix="point the link at the real file or folder",
        ) from None
    except OSError as exc:
        raise os_error(exc, path, "open it") from None
    return path

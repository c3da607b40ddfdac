"""Recipe files: read and write by extension (.toml mergetui's, .yaml/.yml mergekit's), atomically.

The formats live in their own modules: `toml_read` / `toml_write` / `toml_update` for mergetui TOML,
`yaml_import` / `yaml_export` for mergekit YAML, both building through `recipe.reader`. This module
is what the app and the commands call: `load_recipe`, `save_recipe`, `write_text_atomic`.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from mergetui.errors import UserError
from mergetui.recipe import limits
from mergetui.recipe.model import Recipe
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_update import update_toml
from mergetui.recipe.toml_write import dumps_toml
from mergetui.recipe.yaml_export import dumps_yaml
from mergetui.recipe.yaml_import import loads_yaml

TOML_SUFFIXES = (".toml",)
YAML_SUFFIXES = (".yaml", ".yml")


def recipe_format(path: str | os.PathLike[str]) -> str:
    """'toml' or 'yaml' from the file extension; UserError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in TOML_SUFFIXES:
        return "toml"
    if suffix in YAML_SUFFIXES:
        return "yaml"
    raise UserError(
        f"unknown recipe extension '{suffix or '(none)'}'",
        where=str(path),
        fix="use .toml for mergetui recipes, .yaml or .yml for mergekit configs",
    )


def loads_recipe(text: str, fmt: str, source: str | None = None) -> Recipe:
    try:
        return loads_toml(text, source) if fmt == "toml" else loads_yaml(text, source)
    except UserError:
        from mergetui.recipe.moe import is_moe_text

        if is_moe_text(text, fmt, source):  # say what it is, not which key a merge lacks
            raise UserError(
                "this is an MoE recipe (a mergekit-moe config or a [moe] table), not a merge recipe",
                where=source,
                fix="assemble it with: mergetui merge FILE --out DIR, or open it in the app "
                "(mergetui open FILE: docs/moe.md)",
            ) from None
        raise


def dumps_recipe(recipe: Recipe, fmt: str) -> str:
    return dumps_toml(recipe) if fmt == "toml" else dumps_yaml(recipe)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read a recipe file: .toml is mergetui's form, .yaml/.yml mergekit's."""
    fmt = recipe_format(path)
    return loads_recipe(read_recipe_text(path), fmt, str(path))


def read_recipe_text(path: str | os.PathLike[str]) -> str:
    """The text of a recipe file, refused (UserError) when it is missing, not a plain file of
    recipe size, or not UTF-8. `mergetui evolve` reads its spec through it too."""
    _check_recipe_file(Path(path))
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("recipe file not found", where=str(path), fix="check the path") from None
    except IsADirectoryError:
        raise UserError("expected a recipe file, got a folder", where=str(path)) from None
    except UnicodeDecodeError:
        raise UserError("the recipe is not UTF-8 text", where=str(path)) from None


def _check_recipe_file(path: Path) -> None:
    """Refuse, before reading, what is not a plain file of recipe size (a FIFO would block)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return  # reading says so
    except OSError as exc:
        raise UserError(f"cannot read the recipe: {exc.strerror}", where=str(path)) from None
    if stat.S_ISDIR(info.st_mode):
        return
    if not stat.S_ISREG(info.st_mode):
        raise UserError(
            "the recipe is not a regular file",
            where=str(path),
            fix="point at a .toml or .yaml file",
        )
    if info.st_size > limits.MAX_RECIPE_BYTES:
        raise UserError(
            f"the recipe is {info.st_size:,} bytes; recipes are limited to "
            f"{limits.MAX_RECIPE_BYTES // 1024} KiB",
            where=str(path),
            fix="is this the right file? recipes are a few kilobytes of settings",
        )


def save_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> None:
    """Write a recipe by extension, atomically: a crash leaves the old file or the new, never half.

    A recipe read from a TOML file is saved as that file changed (`toml_update`): its comments, key
    order and the values nobody edited stay as written. Any other recipe is written fresh.
    """
    target = Path(path)
    fmt = recipe_format(target)
    original = _original_toml(recipe) if fmt == "toml" else None
    text = update_toml(original, recipe) if original is not None else dumps_recipe(recipe, fmt)
    write_text_atomic(target, text)


def _original_toml(recipe: Recipe) -> str | None:
    """The text of the TOML file the recipe was read from, when it is still there to read."""
    if not recipe.source_path:
        return None
    path = Path(recipe.source_path)
    try:
        if recipe_format(path) != "toml":
            return None
        _check_recipe_file(path)
        return path.read_text(encoding="utf-8")
    except (UserError, OSError, UnicodeDecodeError):
        return None


def write_text_atomic(target: Path, text: str) -> None:
    """Write to a temporary file beside `target`, then rename it into place.

    The file keeps its permissions; a new one gets those a plain open() gives (0666 less the
    umask), not the temporary file's 0600. A folder that cannot be written (read-only, no
    permission, disk full) is a UserError naming it.
    """
    from mergetui.checkpoints.files import os_error

    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, folder, "create this folder") from None
    mode = _file_mode(target)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise os_error(exc, target, "write this file") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException as exc:
        Path(temp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise os_error(exc, target, "write this file") from None
        raise


def _file_mode(target: Path) -> int:
    """The permission bits `target` has, or those a new file gets from open()."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask: read from /proc where there is one (setting it to read it is racy)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

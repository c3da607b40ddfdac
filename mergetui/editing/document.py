"""The recipe being edited: where it lives, whether it changed since saving, and its undo history.

Plain Python (no textual) so the editing rules are unit-tested without a terminal. Every change to the
recipe goes through `edit()`, which snapshots the recipe first; undo and redo restore snapshots in
place, so every part of the app keeps pointing at the same `Recipe` object.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from mergetui.errors import UserError
from mergetui.recipe.model import Recipe

HISTORY_LIMIT = 500
DEFAULT_METHOD = "linear"
YAML_SUFFIXES = (".yaml", ".yml")


class RecipeDocument:
    """One open recipe: the `Recipe`, its file, the last saved state and undo/redo stacks."""

    def __init__(
        self,
        recipe: Recipe,
        path: Path | None = None,
        origin: Path | None = None,
        origin_note: str = "imported",
    ) -> None:
        self.recipe = recipe
        # How the title names a recipe read from `origin` but not saved there yet.
        self.origin_note = origin_note
        # Where ctrl+s writes (TOML). None for a new recipe or one opened from mergekit YAML.
        self.path = path
        # The file it was read from, if any (a YAML file keeps its name as the suggestion for saving).
        self.origin = origin or path
        self._undo: list[tuple[str, Recipe]] = []
        self._redo: list[tuple[str, Recipe]] = []
        self._saved = self._fingerprint()

    @classmethod
    def new(cls, method: str = DEFAULT_METHOD) -> RecipeDocument:
        return cls(Recipe(method=method))

    @classmethod
    def open(cls, path: str | Path) -> RecipeDocument:
        """Read a recipe (TOML, or mergekit YAML which is saved as TOML next time)."""
        from mergetui.recipe.io import load_recipe

        path = Path(path).expanduser()
        if not path.exists():
            raise UserError(
                "no such recipe file", where=str(path), fix="check the path, or start a new recipe"
            )
        try:
            recipe = load_recipe(path)
        except UserError as exc:
            raise _multi_stage_refusal(path) or exc from None
        if path.suffix.lower() in YAML_SUFFIXES:
            return cls(recipe, path=None, origin=path)
        return cls(recipe, path=path)

    # -- state ---------------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        from mergetui.recipe.toml_write import dumps_toml

        return dumps_toml(self.recipe)

    @property
    def modified(self) -> bool:
        """True when the recipe differs from what was last saved (or, if new, from how it started)."""
        return self._fingerprint() != self._saved

    @property
    def display_name(self) -> str:
        if self.path is not None:
            return self.path.name
        if self.origin is not None:
            return f"{self.origin.name} ({self.origin_note})"
        return "untitled"

    def suggested_path(self) -> Path:
        """Where Save should propose to write: the file itself, or a .toml beside the imported YAML."""
        if self.path is not None:
            return self.path
        if self.origin is not None:
            return self.origin.with_suffix(".toml")
        return Path.cwd() / "recipe.toml"

    # -- history -------------------------------------------------------------------------------

    @contextmanager
    def edit(self, label: str) -> Iterator[Recipe]:
        """Change the recipe inside this block; one undo step. On an exception nothing changes."""
        before = copy.deepcopy(self.recipe)
        try:
            yield self.recipe
        except BaseException:
            self._restore(before)
            raise
        if _same(before, self.recipe):
            return
        self._undo.append((label, before))
        del self._undo[:-HISTORY_LIMIT]
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> str | None:
        """Go back one edit; returns its label, or None when there is nothing to undo."""
        return self._step(self._undo, self._redo)

    def redo(self) -> str | None:
        """Make the last undone edit again; returns its label, or None when there is none."""
        return self._step(self._redo, self._undo)

    def _step(
        self, source: list[tuple[str, Recipe]], target: list[tuple[str, Recipe]]
    ) -> str | None:
        """Restore the newest snapshot of `source`, keeping the current recipe on `target`."""
        if not source:
            return None
        label, snapshot = source.pop()
        target.append((label, copy.deepcopy(self.recipe)))
        self._restore(snapshot)
        return label

    def _restore(self, snapshot: Recipe) -> None:
        for item in fields(Recipe):
            setattr(self.recipe, item.name, getattr(snapshot, item.name))

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | Path | None = None) -> Path:
        """Write TOML (atomically, by the core); the document then points at that file."""
        from mergetui.recipe.io import save_recipe
        from mergetui.recipe.paths import folder_of, rebase_paths

        target = Path(path).expanduser() if path is not None else self.path
        if target is None:
            raise UserError("this recipe has no file yet", fix="choose a path to save it to")
        if target.suffix.lower() in YAML_SUFFIXES:
            raise UserError(
                "Save writes mergetui's TOML",
                where=str(target),
                fix="save to a .toml file, or use 'Export mergekit YAML' for a .yaml",
            )
        if target.suffix == "":
            target = target.with_suffix(".toml")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Paths in a recipe are relative to its file: saved into another folder, they are rewritten
        # to name the same places (docs/recipe-format.md, "Paths").
        rebase_paths(self.recipe, folder_of(self.recipe), target.parent)
        save_recipe(self.recipe, target)
        self.recipe.source_path = str(target)
        self.path = target
        self.origin = target
        self._saved = self._fingerprint()
        return target

    def export_yaml(self, path: str | Path) -> Path:
        """Write the recipe as a mergekit YAML config (atomically); the document stays as it was."""
        from mergetui.recipe.io import write_text_atomic
        from mergetui.recipe.paths import folder_of, rebase_paths
        from mergetui.recipe.yaml_export import dumps_yaml

        target = Path(path).expanduser()
        if target.suffix == "":
            target = target.with_suffix(".yaml")
        exported = copy.deepcopy(self.recipe)
        rebase_paths(exported, folder_of(self.recipe), target.parent)
        text = dumps_yaml(exported)
        write_text_atomic(target, text)
        return target


def _same(a: Recipe, b: Recipe) -> bool:
    return a == b


def _multi_stage_refusal(path: Path) -> UserError | None:
    """For a multi-stage file (which the single-recipe reader refuses), the error that says what
    it is and how to run it, or the error in one of its stages; None for any other file."""
    from mergetui.recipe.stages import load_stages

    try:
        stages = load_stages(path)
    except UserError as exc:
        return exc
    if stages is None:
        return None
    return UserError(
        f"this is a multi-stage file ({len(stages)} merges); the app opens one recipe at a time",
        where=str(path),
        fix=f"run it with: mergetui merge {path} --out DIR (see docs/multi-stage.md)",
    )

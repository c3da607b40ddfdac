"""The recipe being edited: where it lives, whether it changed since saving, and its undo history.

Plain Python (no textual) so the editing rules are unit-tested without a terminal. Every change to the
recipe goes through `edit()`, which snapshots the recipe first; undo and redo restore snapshots in
place, so every part of the app keeps pointing at the same `Recipe` object.

A multi-stage file (docs/multi-stage.md) opens as its stages: `recipe` is the open stage's (one
at a time, `select_stage`), each stage keeps its own undo history, the Run screen runs them all
(edits made here included), and the app does not write such a file (`save` refuses).

An MoE recipe (docs/moe.md) opens read-only: `moe` holds it (and `recipe` is an empty
placeholder), the Recipe screen shows it, the Run screen assembles it, and `save` refuses.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from mergetui.errors import UserError
from mergetui.recipe.model import Recipe

if TYPE_CHECKING:
    from mergetui.recipe.moe import MoeRecipe
    from mergetui.recipe.stages import Stage

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
        stages: list[Stage] | None = None,
        moe: MoeRecipe | None = None,
    ) -> None:
        self.recipe = recipe
        # An MoE recipe, read-only (`recipe` is then an empty placeholder), else None.
        self.moe = moe
        # A multi-stage file's stages, in file order (`recipe` is one of theirs), else None.
        self.stages = stages
        self.stage_index = 0
        self._histories: dict[int, tuple[list[tuple[str, Recipe]], list[tuple[str, Recipe]]]] = {}
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
            moe = _moe(path)
            if moe is not None:
                # Read-only: the path names the file (`save` refuses to write it).
                return cls(Recipe(method="moe"), path=path, moe=moe)
            stages = _multi_stage(path)
            if stages is None:
                raise exc from None
            # The file itself is the path (the app never writes it: `save` says so), read only.
            return cls(stages[0].recipe, path=path, stages=stages)
        if path.suffix.lower() in YAML_SUFFIXES:
            return cls(recipe, path=None, origin=path)
        return cls(recipe, path=path)

    # -- state ---------------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        from mergetui.recipe.toml_write import dumps_toml

        if self.stages is not None:
            return "\n".join(dumps_toml(stage.recipe) for stage in self.stages)
        if self.moe is not None:
            from mergetui.recipe.moe import dumps_moe

            return dumps_moe(self.moe, "toml")
        return dumps_toml(self.recipe)

    # -- the stages of a multi-stage file --------------------------------------------------------

    @property
    def stage(self) -> Stage | None:
        """The open stage of a multi-stage file, else None."""
        return self.stages[self.stage_index] if self.stages is not None else None

    def stage_name(self, stage: Stage | None = None) -> str:
        """How the app names a stage (the open one by default): its name, or `final`."""
        stage = stage or self.stage
        return (stage.name if stage is not None else None) or "final"

    def select_stage(self, index: int) -> None:
        """Open another stage (its own undo history comes with it)."""
        if self.stages is None or not 0 <= index < len(self.stages):
            return
        self._histories[self.stage_index] = (self._undo, self._redo)
        self.stage_index = index
        self.recipe = self.stages[index].recipe
        self._undo, self._redo = self._histories.pop(index, ([], []))

    @property
    def modified(self) -> bool:
        """True when the recipe differs from what was last saved (or, if new, from how it started)."""
        return self._fingerprint() != self._saved

    @property
    def display_name(self) -> str:
        if self.moe is not None:
            name = (self.path or self.origin or Path("untitled")).name
            return f"{name} · MoE" + (f" ({self.origin_note})" if self.path is None else "")
        if self.stages is not None and self.path is not None:
            return f"{self.path.name} · stage {self.stage_index + 1}/{len(self.stages)}: " + (
                self.stage_name()
            )
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

        if self.stages is not None:
            raise UserError(
                "the app does not write multi-stage files",
                where=str(self.path),
                fix="edit the file in a text editor; edits made here are merged by the Run "
                "screen (F4) but not saved",
            )
        if self.moe is not None:
            raise UserError(
                "the app shows MoE recipes but does not write them",
                where=str(self.path or self.origin or ""),
                fix="edit the file in a text editor (docs/moe.md); the Run screen (F4) "
                "assembles it as it is",
            )
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
        if target.is_file() and _holds_stages(target):
            # A stage reopened from the history proposes its file's name: never write over it.
            raise UserError(
                "this file is a multi-stage file, and saving would replace all its stages with "
                "this one recipe",
                where=str(target),
                fix="save to another file",
            )
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

        if self.moe is not None:
            raise UserError(
                "the app does not export MoE recipes",
                where=str(self.path or self.origin or ""),
                fix="mergetui convert FILE.toml FILE.yml (docs/moe.md)",
            )
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


def _multi_stage(path: Path) -> list[Stage] | None:
    """The stages of a multi-stage file (which the single-recipe reader refuses), in file order;
    None for any other file. An error in one of its stages is raised, naming the stage."""
    from mergetui.recipe.stages import load_stages

    return load_stages(path)


def _moe(path: Path) -> MoeRecipe | None:
    """The MoE recipe in a file the merge-recipe reader refused, else None (an error in it is
    raised: it is located in the file)."""
    from mergetui.recipe.moe import load_moe

    try:
        return load_moe(path)
    except UserError:
        from mergetui.recipe.io import read_recipe_text, recipe_format
        from mergetui.recipe.moe import is_moe_text

        if is_moe_text(read_recipe_text(path), recipe_format(path), str(path)):
            raise
        return None


def _holds_stages(path: Path) -> bool:
    """Whether `path` reads as a multi-stage file."""
    try:
        return _multi_stage(path) is not None
    except (UserError, OSError, UnicodeDecodeError):
        return False

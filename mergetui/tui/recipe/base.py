"""What every part of the Recipe screen shares: the open document, one message for an edit, the
tabs' base class and the keys of its lists.

A pane changes the recipe inside `with self.edit(label):` (one undo step); when the block ends it
posts `RecipeEdited`, and the screen refreshes every pane, the validation and the title.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TabPane

from mergetui.tui.paths_text import document_folder
from mergetui.tui.recipe.facts import Facts

if TYPE_CHECKING:
    from mergetui.editing.document import RecipeDocument
    from mergetui.recipe.model import Recipe


@dataclass
class RecipeEdited(Message):
    """The recipe changed through the document (a pane's edit, a grid operation)."""

    label: str = ""


class RecipePart:
    """A mixin for the Recipe screen and its panes (Textual widgets): the app's document and recipe,
    the folder its relative paths start from, and edits that tell the screen."""

    if TYPE_CHECKING:  # provided by the widget the mixin is part of
        app: Any

        def post_message(self, message: Message) -> bool: ...

    @property
    def document(self) -> RecipeDocument:
        return self.app.document

    @property
    def recipe(self) -> Recipe:
        return self.app.document.recipe

    @property
    def base_dir(self) -> Path:
        """The folder the recipe's relative paths (models, output) start from."""
        return document_folder(self.document)

    @contextmanager
    def edit(self, label: str) -> Iterator[Recipe]:
        """Change the recipe in this block (one undo step named `label`), then tell the screen."""
        with self.document.edit(label) as recipe:
            yield recipe
        self.post_message(RecipeEdited(label))


class RecipePane(RecipePart, TabPane):
    """A tab of the Recipe screen. `facts` is the screen's dict of what each model's checkpoint
    headers say, filled in by its worker and read by the panes."""

    def __init__(self, title: str, facts: Facts, *, id: str) -> None:
        super().__init__(title, id=id)
        self.facts = facts


def move_bindings(action: str, noun: str) -> list[Binding]:
    """shift+↑ and shift+↓ move the highlighted row of a list (a model, a slice) up or down."""
    return [
        Binding("shift+up", f"{action}(-1)", f"Move {noun} up", show=False),
        Binding("shift+down", f"{action}(1)", f"Move {noun} down", show=False),
    ]


def swap(items: list[Any], index: int, direction: int) -> int | None:
    """Swap `items[index]` with its neighbour in `direction`; the new index, or None at an end."""
    target = index + direction
    if not 0 <= target < len(items):
        return None
    items[index], items[target] = items[target], items[index]
    return target

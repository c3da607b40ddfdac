"""What the search worker tells the Search screen, and what the screen asks of the app.

Small dataclasses, as Textual's own messages are; the worker posts them from its thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from mergetui.recipe.model import Recipe


@dataclass
class SearchLayers(Message):
    """The parents' layer count, read from their headers (the grid's rows); None when unknown."""

    count: int | None


@dataclass
class SearchUpdate(Message):
    """One event of the running search (`mergetui.search.events`), relayed as it came."""

    event: Any


@dataclass
class SearchEnded(Message):
    """The worker is done: `outcome` is finished, stopped or failed (then `message` says why)."""

    outcome: str
    message: str = ""
    finished: Any = None  # the search's SearchFinished, when it got that far


@dataclass
class ApplyBest(Message):
    """Asks the app to write the best candidate's values into the open recipe, as one undoable
    edit: the Search screen reaches the document (and the Recipe screen) through the app."""

    recipe: Recipe  # the best candidate, a plain recipe
    parameters: tuple[str, ...]  # the parameters the search set
    label: str  # the undo step's name, e.g. "apply search best #17"

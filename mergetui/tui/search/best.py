"""The best candidate's per-layer values, in the same heat map as the Recipe screen's grid.

Before a search it shows the open recipe's values (where the search starts); once a candidate
beats the others, that candidate's recipe. The grid reads a `GridModel` over a document of its own,
so nothing here touches the open recipe: applying the best is the app's edit (`ApplyBest`).
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from mergetui.editing.document import RecipeDocument
from mergetui.editing.layer_table import GridModel
from mergetui.recipe.model import Recipe
from mergetui.tui.heat_grid import HeatGrid


def layer_count(recipe: Recipe, recipe_dir: Path) -> int | None:
    """The layer count of the recipe's first model whose headers can be read here (the search's
    parents all have the same), or None. Headers only: quick, but run it in a worker."""
    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.errors import UserError
    from mergetui.recipe.paths import locate_model

    for entry in recipe.models.values():
        try:
            found = locate_model(entry.source, entry.revision, recipe_dir)
            if found is not None:
                return open_checkpoint(found[0]).num_layers or None
        except (UserError, OSError, ValueError):
            continue
    return None


class BestPane(Vertical):
    """A title line and the heat map of one recipe (the best so far, or the starting point)."""

    DEFAULT_CSS = """
    BestPane { height: 1fr; }
    BestPane #best-title { height: 1; padding: 0 1; color: $text-accent; overflow: hidden; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = GridModel(RecipeDocument.new())
        self.grid = HeatGrid(self.model, id="search-grid")
        self.layer_count: int | None = None
        self.recipe: Recipe | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="best-title")
        yield self.grid

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._apply_heatmap())
        self._apply_heatmap()

    def _apply_heatmap(self) -> None:
        self.grid.set_heatmap(self.app.heatmap)

    def show(self, recipe: Recipe, title: str) -> None:
        """Draw `recipe`'s values under `title` (markup)."""
        self.recipe = recipe
        self.query_one("#best-title", Static).update(title)
        self._rebuild()

    def set_layers(self, count: int | None) -> None:
        """The parents' layer count (the grid's rows), once read from their headers."""
        if count != self.layer_count:
            self.layer_count = count
            self._rebuild()

    def _rebuild(self) -> None:
        if self.recipe is None:
            return
        model = self.model
        first = not model.rows
        model.document = RecipeDocument(self.recipe)
        model.layer_counts = {
            name: self.layer_count for name in self.recipe.models if self.layer_count
        }
        model.rebuild()
        if first and len(model.rows) > 1:
            self.grid.cursor = (1, 0)  # layer 0, as the Recipe screen's grid starts
        self.grid.refresh_model()

    def describe_cursor(self) -> str:
        """The cell under the grid's cursor, for the status line ("" when there is no grid)."""
        if not self.model.columns or not self.model.rows:
            return ""
        return self.model.describe(*self.grid.cursor)

"""The Slices tab: the output's layer stack for passthrough merges, one row per slice source."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from mergetui.formatting import human_count
from mergetui.recipe.model import Slice, SliceSource
from mergetui.tui.commands import PaletteEntry
from mergetui.tui.dialogs.slices import SliceChoice, SliceDialog
from mergetui.tui.recipe.base import RecipePane, move_bindings, swap
from mergetui.tui.recipe.facts import layer_counts

SLICE_KEYS_HINT = (
    "[dim]a add slice · s add a source to a slice · e edit · x remove · shift+↑↓ move[/]"
)
WHOLE_MODELS = (
    "This recipe merges whole models (every layer of each). To build a layer stack "
    "(a frankenmerge, depth up-scaling), press [b]a[/] to add the first slice."
)
STACK = "Output layers, top to bottom: each slice takes layers \\[first, end) of its sources."

Where = tuple[int, int | None]  # (slice, source), or (slice, None) for a new source of a slice


class SlicesPane(RecipePane):
    """The Slices tab (F8): one row per slice source, the layer stack top to bottom."""

    BINDINGS = [
        Binding("a", "add_slice", "Add slice", show=False),
        Binding("s", "add_source", "Add source to slice", show=False),
        Binding("e", "edit_slice", "Edit slice source (or enter)", show=False),
        Binding("x,delete", "remove_slice", "Remove slice source", show=False),
        *move_bindings("move_slice", "slice"),
    ]
    PALETTE = (
        PaletteEntry("add_slice", "Add slice…", "append a slice to the layer stack"),
        PaletteEntry("add_source", "Add source to slice…", "another model feeding the slice"),
        PaletteEntry("edit_slice", "Edit slice source…", "model and layer range"),
        PaletteEntry("remove_slice", "Remove slice source", "and its slice if it was the last"),
        PaletteEntry("move_slice(-1)", "Move slice up", "earlier in the stack"),
        PaletteEntry("move_slice(1)", "Move slice down", "later in the stack"),
    )

    def compose(self) -> ComposeResult:
        with Vertical(id="slices-pane"):
            yield Static(id="slices-help", classes="hint")
            yield DataTable(id="slices-table", cursor_type="row", zebra_stripes=True)
            yield Static(id="slices-summary")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("slice", "model", "layers", "count")

    # -- showing the stack ---------------------------------------------------------------------

    def show_recipe(self) -> None:
        """The slice table, its help and the stack's size, from the recipe."""
        help_text = self.query_one("#slices-help", Static)
        table = self.query_one(DataTable)
        summary = self.query_one("#slices-summary", Static)
        keep = table.cursor_row
        table.clear()
        if self.recipe.slices is None:
            help_text.update(f"{WHOLE_MODELS}\n{SLICE_KEYS_HINT}")
            summary.update("")
            return
        help_text.update(f"{STACK}\n{SLICE_KEYS_HINT}")
        for index, slice_ in enumerate(self.recipe.slices):
            for position, source in enumerate(slice_.sources):
                start, end = source.layer_range
                table.add_row(
                    str(index + 1) if position == 0 else "",
                    source.model,
                    f"[{start}, {end}]",  # as the file says it: layers = [first, end)
                    str(end - start),
                    key=f"{index}:{position}",
                )
        if table.row_count:
            table.move_cursor(row=min(keep, table.row_count - 1))
        summary.update(self._stack_summary())

    def _stack_summary(self) -> str:
        """Resulting layer count and, when the checkpoints are readable, the parameter count."""
        slices = self.recipe.slices or []
        layers = sum(s.num_layers for s in slices)
        text = f"{len(slices)} slice(s) · {layers} output layers"
        total = 0.0
        for slice_ in slices:
            source = slice_.sources[0] if slice_.sources else None
            facts = self.facts.get(source.model) if source else None
            if not facts or facts.layer_parameters is None:
                return text + " · parameter estimate needs the checkpoints' headers"
            total += facts.layer_parameters * slice_.num_layers
        first = self.facts.get(slices[0].sources[0].model) if slices and slices[0].sources else None
        if (
            first
            and first.parameters is not None
            and first.num_layers
            and first.layer_parameters is not None
        ):
            total += first.parameters - first.layer_parameters * first.num_layers
        return text + f" · ≈ {human_count(total, '.1f')} parameters"

    # -- editing -------------------------------------------------------------------------------

    def _selected(self) -> tuple[int, int] | None:
        table = self.query_one(DataTable)
        if self.recipe.slices is None or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        index, position = (int(part) for part in str(key).split(":"))
        return index, position

    def _ask(self, title: str, initial: SliceChoice, where: Where | None, replace: bool) -> None:
        models = list(self.recipe.models)
        dialog = SliceDialog(title, models, initial, layer_counts(self.facts))
        self.app.push_screen(dialog, lambda choice: self._saved(where, replace, choice))

    def action_add_slice(self) -> None:
        if not self.recipe.models:
            self.notify("add models first (Setup tab)", severity="warning")
            return
        first = next(iter(self.recipe.models))
        initial = SliceChoice(first, 0, layer_counts(self.facts).get(first, 1))
        self._ask("Add a slice", initial, None, False)

    def action_add_source(self) -> None:
        selected = self._selected()
        if selected is None:
            self.notify("add a slice first (a)", severity="warning")
            return
        start, end = self.recipe.slices[selected[0]].sources[0].layer_range
        initial = SliceChoice(list(self.recipe.models)[0], start, end)
        self._ask(f"Add a source to slice {selected[0] + 1}", initial, (selected[0], None), False)

    def action_edit_slice(self) -> None:
        selected = self._selected()
        if selected is None:
            return
        source = self.recipe.slices[selected[0]].sources[selected[1]]
        initial = SliceChoice(source.model, *source.layer_range)
        self._ask(f"Slice {selected[0] + 1}", initial, selected, True)

    @on(DataTable.RowSelected)
    def slice_row_chosen(self) -> None:
        self.action_edit_slice()

    def _saved(self, where: Where | None, replace: bool, choice: SliceChoice | None) -> None:
        if choice is None:
            return
        layer_range = (choice.start, choice.end)
        with self.edit("edit slices"):
            if self.recipe.slices is None:
                self.recipe.slices = []
            if where is None:
                self.recipe.slices.append(Slice(sources=[SliceSource(choice.model, layer_range)]))
                return
            sources = self.recipe.slices[where[0]].sources
            if replace:
                old = sources[where[1]]
                sources[where[1]] = SliceSource(choice.model, layer_range, old.parameters)
            else:
                sources.append(SliceSource(choice.model, layer_range))

    def action_remove_slice(self) -> None:
        selected = self._selected()
        if selected is None:
            return
        index, position = selected
        with self.edit("remove slice source"):
            sources = self.recipe.slices[index].sources
            del sources[position]
            if not sources:
                del self.recipe.slices[index]
            if not self.recipe.slices:
                self.recipe.slices = None

    def action_move_slice(self, direction: int) -> None:
        selected = self._selected()
        if selected is None:
            return
        slices = list(self.recipe.slices)
        target = swap(slices, selected[0], direction)
        if target is None:
            return
        with self.edit("move slice"):
            self.recipe.slices = slices
        self.show_recipe()
        row = sum(len(s.sources) for s in slices[:target])
        self.query_one(DataTable).move_cursor(row=row)

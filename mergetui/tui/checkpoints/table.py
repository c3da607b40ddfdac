"""The Checkpoints screen's list: the filter box and the table of checkpoints, with its sorting.

The table shows the rows it is given, sorted by its column (`s` the next one, `S` reverses, a
click on a header picks one); the cursor stays on the same checkpoint across a refresh.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable, Input

from mergetui.checkpoints.sources import CheckpointRow
from mergetui.formatting import human_bytes, human_count

COLUMNS: tuple[tuple[str, str], ...] = (
    # (key, header)
    ("name", "name"),
    ("architecture", "arch"),
    ("parameters", "params"),
    ("dtype", "dtype"),
    ("size", "size"),
    ("layers", "layers"),
    ("origin", "source"),
    ("where", "where"),
)
NAME_WIDTH = 22  # so that all eight columns fit 80 columns
LARGEST_FIRST = ("parameters", "size", "layers")  # columns `s` sorts in descending order


def short_arch(arch: str | None) -> str:
    if not arch:
        return "-"
    return arch.removesuffix("ForCausalLM").removesuffix("LMHeadModel") or arch


def sort_key(row: CheckpointRow, column: str) -> tuple:
    value = getattr(row, column, None)
    if column == "name":
        return (0, row.name.lower())
    if value is None:
        return (1, "")
    return (0, value.lower() if isinstance(value, str) else value)


def row_cells(row: CheckpointRow) -> tuple[str, ...]:
    """The row as the table shows it, each cell cut to fit 80 columns."""
    name = row.name if len(row.name) <= NAME_WIDTH else "…" + row.name[1 - NAME_WIDTH :]
    arch = short_arch(row.architecture) if not row.error else "broken"
    return (
        name,
        arch if len(arch) <= 9 else arch[:8] + "…",
        human_count(row.parameters),
        (row.dtype or "-").lower(),
        human_bytes(row.size).replace(" ", ""),
        str(row.layers) if row.layers is not None else "-",
        row.origin,
        row.where,
    )


class FilterInput(Input):
    """The filter box: typing narrows the list, enter searches the Hub, escape or ↓ goes back."""

    BINDINGS = [
        Binding(
            "enter", "submit", "Search the Hub for the text (empty: the top models)", show=False
        ),
        Binding("escape,down", "screen.focus_list", "Back to the list", show=False),
    ]


class CheckpointTable(DataTable):
    """The checkpoints, one per row, in the order of `sort_column`."""

    BINDINGS = [Binding("enter", "select_cursor", "Read the details now", show=False)]

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.rows_shown: list[CheckpointRow] = []  # what the table shows, in order
        self.sort_column = "name"
        self.sort_reverse = False

    def on_mount(self) -> None:
        for key, header in COLUMNS:
            self.add_column(header, key=key)

    def show(self, rows: list[CheckpointRow]) -> None:
        """Sort and show `rows`; the cursor stays on the same checkpoint when it is still there."""
        current = self.current_row()
        rows = sorted(
            rows, key=lambda row: sort_key(row, self.sort_column), reverse=self.sort_reverse
        )
        self.rows_shown = rows
        self.clear()
        for index, row in enumerate(rows):
            self.add_row(*row_cells(row), key=f"{index}:{row.key}")
        if current is not None:
            for index, row in enumerate(rows):
                if row.key == current.key:
                    self.move_cursor(row=index)
                    break

    def current_row(self) -> CheckpointRow | None:
        if not self.rows_shown or self.row_count == 0:
            return None
        return self.rows_shown[min(max(self.cursor_row, 0), len(self.rows_shown) - 1)]

    def sort_next(self) -> None:
        """The next column; sizes and counts largest first."""
        keys = [key for key, _ in COLUMNS]
        self.sort_column = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self.sort_reverse = self.sort_column in LARGEST_FIRST

    def sort_by(self, column: str) -> None:
        """A header's column; the same one again reverses the order."""
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column = column
            self.sort_reverse = False

    def sort_description(self) -> str:
        header = dict(COLUMNS)[self.sort_column]
        return f"sorted by {header} ({'descending' if self.sort_reverse else 'ascending'})"

"""The Search screen's form: what to search and how long, two lines at the top of the screen.

Line one: a checkbox per parameter the method lets a search set, the layer groups, smooth. Line two:
the objective texts (perplexity, comma-separated, relative to the recipe's folder), the budget and
the seed. `show(settings)` fills it, `read()` gives the settings back or a UserError naming the
field; the core checks every value again (`search_spec_from_recipe`) before anything is loaded.
The form is disabled while a search runs.
"""

from __future__ import annotations

import dataclasses

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Checkbox, Input, Label

from mergetui.errors import UserError
from mergetui.tui.search.settings import SearchSettings

NUMBER_DIGITS = 10  # longer than any sane budget or seed: the core names the range


class SearchForm(Vertical):
    """Parameters, layer groups, smooth, texts, budget and seed."""

    DEFAULT_CSS = """
    SearchForm { height: auto; padding: 0 1; }
    SearchForm .form-row { height: 1; }
    SearchForm Label { padding: 0 1 0 0; color: $text-muted; }
    SearchForm .form-gap { padding: 0 1 0 2; }
    SearchForm #search-params { width: auto; height: 1; }
    SearchForm Checkbox { width: auto; margin: 0 1 0 0; }
    SearchForm Input { background: $boost; }
    SearchForm #search-groups { width: 5; }
    SearchForm #search-texts { width: 1fr; }
    SearchForm #search-budget { width: 8; }
    SearchForm #search-seed { width: 8; }
    SearchForm #search-params-none { color: $text-warning; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.settings: SearchSettings | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label("search")
            yield Horizontal(id="search-params")
            yield Label("groups", classes="form-gap")
            yield self._number("search-groups", "layer groups along the depth (1: one value)")
            yield Checkbox(
                "smooth",
                True,
                id="search-smooth",
                compact=True,
                tooltip="a gradient between the groups' values, else steps",
            )
        with Horizontal(classes="form-row"):
            yield Label("texts ")
            yield Input(
                placeholder="text files to score perplexity on, comma-separated",
                id="search-texts",
                compact=True,
                tooltip="perplexity texts, comma-separated, relative to the recipe's folder",
            )
            yield Label("budget", classes="form-gap")
            yield self._number("search-budget", "how many candidates to evaluate in all")
            yield Label("seed", classes="form-gap")
            yield self._number("search-seed", "the same seed gives the same candidates")

    def _number(self, id: str, tooltip: str) -> Input:
        return Input(type="integer", max_length=NUMBER_DIGITS, id=id, compact=True, tooltip=tooltip)

    async def show(self, settings: SearchSettings) -> None:
        """Fill the form (a recipe was opened, or a search ended and the form is free again)."""
        self.settings = settings
        params = self.query_one("#search-params", Horizontal)
        await params.remove_children()
        if settings.choices:
            await params.mount_all(
                Checkbox(name, name in settings.parameters, name=name, compact=True)
                for name in settings.choices
            )
        else:
            await params.mount(Label("no numbers to search", id="search-params-none"))
        self.query_one("#search-groups", Input).value = str(settings.layer_groups)
        self.query_one("#search-smooth", Checkbox).value = settings.smooth
        self.query_one("#search-texts", Input).value = ", ".join(settings.texts)
        self.query_one("#search-budget", Input).value = str(settings.budget)
        self.query_one("#search-seed", Input).value = str(settings.seed)

    def read(self) -> SearchSettings:
        """The settings as the form holds them; UserError naming the field that does not read."""
        if self.settings is None:
            raise UserError("the form is not ready yet", fix="try again in a moment")
        boxes = self.query_one("#search-params", Horizontal).query(Checkbox)
        parameters = tuple(box.name or "" for box in boxes if box.value)
        if not parameters:
            raise UserError(
                "no parameter is ticked",
                where="the Search screen's form",
                fix="tick one to search (space ticks the focused box)",
            )
        texts = tuple(
            text.strip()
            for text in self.query_one("#search-texts", Input).value.split(",")
            if text.strip()
        )
        return dataclasses.replace(
            self.settings,
            parameters=parameters,
            layer_groups=self._whole("search-groups", "layer groups"),
            smooth=self.query_one("#search-smooth", Checkbox).value,
            texts=texts,
            budget=self._whole("search-budget", "budget"),
            seed=self._whole("search-seed", "seed"),
        )

    def _whole(self, id: str, name: str) -> int:
        text = self.query_one(f"#{id}", Input).value.strip()
        try:
            return int(text)
        except ValueError:
            raise UserError(
                f"the {name} is {text!r}, not a whole number" if text else f"no {name} given",
                where="the Search screen's form",
                fix=f"type a whole number for the {name}",
            ) from None

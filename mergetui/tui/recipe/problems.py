"""The Problems tab: the validator's findings, refreshed on every edit.

The offline checks run at once; the ones that read checkpoint headers wait for a pause in the typing
and run in a worker. Each time the list changes the pane posts `Checked` (the screen's status line
counts the errors).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.message import Message
from textual.timer import Timer
from textual.widgets import OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from mergetui.errors import UserError
from mergetui.recipe.model import Recipe
from mergetui.recipe.problems import Problem
from mergetui.tui.recipe.base import RecipePart
from mergetui.tui.workers import reply

CHECK_DELAY = 0.3  # seconds without edits before the checkpoint checks run


def problem_text(problem: Any, severity: str) -> Text:
    """A validator finding as wrapped text: mark, where, what and how to fix it."""
    mark = {"error": "✗", "warning": "!"}.get(severity, "i")
    style = {"error": "bold red", "warning": "bold yellow"}.get(severity, "bold")
    where = getattr(problem, "location", None) or getattr(problem, "where", None) or "recipe"
    text = Text.assemble((f"{mark} ", style), (str(where), "bold"), "\n  ")
    text.append(getattr(problem, "message", str(problem)))
    fix = getattr(problem, "fix", None)
    if fix:
        text.append(f"\n  fix: {fix}", style="dim")
    return text


def severity_of(problem: Any) -> str:
    """error or warning: a finding's level, a UserError's severity (errors by default)."""
    return getattr(problem, "level", None) or getattr(problem, "severity", "error")


class ProblemsPane(RecipePart, TabPane):
    """The Problems tab (F9); its label counts the findings."""

    @dataclass
    class Checked(Message):
        """The findings changed."""

        problems: list[Any]

    def __init__(self, title: Callable[[str], str], *, id: str) -> None:
        super().__init__(title(""), id=id)
        self._tab_title = title  # the tab's title, given what to add to its name (the count)
        self.problems: list[Any] = []
        self._check_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="problems-summary")
        yield OptionList(id="problems-table")

    def validate(self) -> None:
        """Check the recipe now without reading checkpoints; read them after a pause in the edits."""
        from mergetui.recipe.validate import validate_recipe

        try:
            problems = validate_recipe(self.recipe, offline=True, base_dir=self.base_dir)
        except UserError as exc:
            problems = [exc]
        self._show(problems)
        if self._check_timer is not None:
            self._check_timer.stop()
        self._check_timer = self.set_timer(CHECK_DELAY, self._validate_checkpoints)

    @work(thread=True, exclusive=True, group="validate", exit_on_error=False)
    def _validate_checkpoints(self) -> None:
        """The slower checks that read checkpoint headers, off the UI thread."""
        from mergetui.recipe.validate import validate_recipe

        recipe = copy.deepcopy(self.recipe)
        try:
            problems = validate_recipe(recipe, offline=False, base_dir=self.base_dir)
        except UserError as exc:
            problems = [exc]
        except Exception as exc:  # a checkpoint that cannot be read is a finding, not a crash
            problems = [UserError(f"checking the checkpoints failed: {exc}")]
        reply(self, self._checked, recipe, problems)

    def _without_stage_outputs(self, problems: list[Any]) -> list[Any]:
        """In a multi-stage file, a model named after a stage is that stage's output (made by the
        run), not a Hub id to look for: the validator's findings about its source are dropped."""
        stages = self.document.stages
        if stages is None:
            return problems
        names = {stage.name for stage in stages if stage.name is not None}
        skip = {
            f"models.{model}.source"
            for model, entry in self.recipe.models.items()
            if entry.source in names
        }
        return [p for p in problems if not (isinstance(p, Problem) and p.where in skip)]

    def _checked(self, recipe: Recipe, problems: list[Any]) -> None:
        if self.is_mounted and recipe == self.recipe:  # not about a recipe changed since
            self._show(problems)

    def _show(self, problems: list[Any]) -> None:
        problems = self._without_stage_outputs(problems)
        self.problems = problems
        listing = self.query_one(OptionList)
        listing.clear_options()
        severities = [severity_of(problem) for problem in problems]
        for problem, severity in zip(problems, severities, strict=True):
            listing.add_option(Option(problem_text(problem, severity)))
        errors = severities.count("error")
        summary = self.query_one("#problems-summary", Static)
        if not problems:
            summary.update("[b]✓ No problems found.[/] The validator re-checks on every edit.")
        else:
            summary.update(
                f"[b]{errors} error(s), {len(problems) - errors} warning(s)[/] · updated on every edit"
            )
        tabs = self.query_ancestor(TabbedContent)
        tabs.get_tab(self).label = self._tab_title(f" ({len(problems)})" if problems else "")
        self.post_message(self.Checked(problems))

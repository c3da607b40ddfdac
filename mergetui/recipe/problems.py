"""A recipe's problems: what is wrong, how bad, where (a dotted recipe path and, when known,
the file and line), and the fix. The validator collects them; the planner stops at the first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mergetui.errors import UserError

if TYPE_CHECKING:
    from mergetui.recipe.model import Recipe

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing to fix: how bad, where (dotted recipe path), what, how, and file:line if known."""

    level: Level
    where: str | None
    message: str
    fix: str | None = None
    file: str | None = None
    line: int | None = None

    @property
    def is_error(self) -> bool:
        return self.level == "error"

    @property
    def location(self) -> str:
        """`recipe.toml:12 (models.b.parameters.weight)`, or what part of it is known."""
        place = self.file or ""
        if place and self.line is not None:
            place = f"{place}:{self.line}"
        if self.where:
            place = f"{place} ({self.where})" if place else self.where
        return place or "recipe"


class Problems:
    """Problems found in one recipe, in the order found, each once, located by the recipe's lines.

    An error marked `blocks_plan` is one the planner cannot get past (an unknown method, a model,
    base or slice source the recipe does not define, layer ranges that make no sense or do not fit
    their models): `make_plan` stops at the first of them, worded and placed as the validator has
    it. The other errors stop `mergetui merge` and the app's Run, which validate first.
    """

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.items: list[Problem] = []
        self.blocking: list[Problem] = []
        self._seen: set[tuple[str, str | None, str]] = set()

    def add(
        self,
        level: Level,
        where: str | None,
        message: str,
        fix: str | None = None,
        *,
        blocks_plan: bool = False,
    ) -> None:
        key = (level, where, message)
        if key in self._seen:
            return
        self._seen.add(key)
        line = self.recipe.line_of(where) if where else None
        problem = Problem(level, where, message, fix, self.recipe.source_path, line)
        self.items.append(problem)
        if blocks_plan and problem.is_error:
            self.blocking.append(problem)

    def error(
        self, where: str | None, message: str, fix: str | None = None, *, blocks_plan: bool = False
    ) -> None:
        self.add("error", where, message, fix, blocks_plan=blocks_plan)

    def warning(self, where: str | None, message: str, fix: str | None = None) -> None:
        self.add("warning", where, message, fix)

    def raise_blocking(self) -> None:
        """Stop at the first error the planner cannot get past, as a UserError placed where the
        validator places it (file:line and recipe path)."""
        if self.blocking:
            problem = self.blocking[0]
            where = problem.location if problem.where or problem.file else None
            raise UserError(problem.message, where=where, fix=problem.fix)

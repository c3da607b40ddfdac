"""The Recipe screen's view of an MoE recipe (docs/moe.md), shown instead of the tabs: the base
model, the gate mode, experts per token, dtype, output and seed, then each expert (and the shared
expert) with its positive and negative prompts. Read-only: the file is edited in a text editor.

A worker opens the models' headers as `mergetui validate` does (`merge.moe_plan.check_moe_models`:
architecture, depth, every MLP shape) and the view's check line says what would be assembled, or
the first thing a run would refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from mergetui.errors import UserError
from mergetui.tui.paths_text import short_path
from mergetui.tui.workers import reply


def moe_text(moe: Any, output: Path | None) -> str:
    """The recipe's own settings, in lines of markup (what the view shows above the experts)."""
    return "\n".join(
        [
            f"[b]base[/] {escape(moe.base)}",
            f"[b]gate mode[/] {escape(moe.gate_mode)} · [b]{moe.experts_per_token}[/] expert(s) "
            f"per token · [b]dtype[/] {escape(moe.dtype or 'as the base')}"
            + (f" · [b]architecture[/] {escape(moe.architecture)}" if moe.architecture else ""),
            "[b]output[/] "
            + (escape(short_path(output)) if output else "[$warning]not set[/] (F4 r asks)")
            + (f" · [b]seed[/] {moe.seed}" if moe.seed is not None else ""),
        ]
    )


def experts_table(moe: Any) -> Table:
    """Each expert (then the shared expert): its model, then one row per prompt (+ positive,
    − negative) and its scales, a long prompt wrapping under itself."""
    table = Table.grid(padding=(0, 1))
    table.add_column(justify="right", width=3, no_wrap=True)
    table.add_column(ratio=1, overflow="fold")
    groups = [("Experts", moe.experts)]
    if moe.shared_experts:
        groups.append(("Shared expert", moe.shared_experts))
    for number, (title, experts) in enumerate(groups):
        if number:
            table.add_row("", "")
        table.add_row("", Text(f"{title} ({len(experts)})", style="bold underline"))
        for index, expert in enumerate(experts, start=1):
            table.add_row(Text(str(index), style="bold"), Text(expert.source, style="bold"))
            for prompt in expert.positive_prompts:
                table.add_row(Text("+", style="green"), Text(f'"{prompt}"'))
            for prompt in expert.negative_prompts:
                table.add_row(Text("−", style="red"), Text(f'"{prompt}"'))
            extra = []
            if expert.noise_scale is not None:
                extra.append(f"noise_scale {expert.noise_scale:g}")
            if expert.residual_scale is not None:
                extra.append(f"residual_scale {expert.residual_scale:g}")
            if extra:
                table.add_row("", Text(" · ".join(extra), style="dim"))
    return table


def moe_plain(moe: Any, output: Path | None) -> str:
    """The view's text without styles (tests and the help read it)."""
    from rich.console import Console

    console = Console(width=200, color_system=None)
    with console.capture() as capture:
        console.print(experts_table(moe))
    return Text.from_markup(moe_text(moe, output).replace("$warning", "yellow")).plain + (
        "\n" + capture.get()
    )


class MoeView(VerticalScroll, can_focus=True):
    """An MoE recipe, read-only, with what its models' headers say of it."""

    DEFAULT_CSS = """
    MoeView { height: 1fr; padding: 0 1; display: none; }
    MoeView #moe-check, MoeView #moe-recipe { margin-bottom: 1; }
    MoeView #moe-hint { margin-top: 1; color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.check = ""  # the check line's text (tests read it)
        self.text = ""  # the recipe as the view shows it, without styles
        self._key: tuple = ()

    def compose(self) -> ComposeResult:
        yield Static(id="moe-check")
        yield Static(id="moe-recipe")
        yield Static(id="moe-experts")
        yield Static(
            "read-only: edit the file in a text editor · F4 then r assembles it",
            id="moe-hint",
        )

    def show(self, moe: Any, recipe_dir: Path) -> None:
        """Draw the recipe, and check its models in a worker when they changed."""
        from mergetui.recipe.paths import recipe_path

        output = recipe_path(moe.output, recipe_dir) if moe.output else None
        self.query_one("#moe-recipe", Static).update(moe_text(moe, output))
        self.query_one("#moe-experts", Static).update(experts_table(moe))
        self.text = moe_plain(moe, output)
        key = (id(moe), str(recipe_dir))
        if key == self._key:
            return
        self._key = key
        self._show_check("[dim]checking the models' headers…[/]")
        self._check(moe, recipe_dir)

    def _show_check(self, text: str) -> None:
        self.check = text
        self.query_one("#moe-check", Static).update(text)

    @work(thread=True, exclusive=True, group="moe-check", exit_on_error=False)
    def _check(self, moe: Any, recipe_dir: Path) -> None:
        from mergetui.merge.moe_plan import check_moe_models

        try:
            models, architecture = check_moe_models(moe, recipe_dir)
        except UserError as exc:
            text = f"[b $error]✗[/] {escape(str(exc))}"
        except Exception as exc:  # noqa: BLE001 - a bug: said, the app stays up
            text = f"[b $error]✗[/] internal error: {escape(repr(exc))}"
        else:
            layers = len(models["base"].layers)
            shared = " and a shared expert" if moe.shared_experts else ""
            text = (
                f"[b $success]✓[/] assembles a [b]{escape(architecture)}[/] of "
                f"{len(moe.experts)} experts{shared}, {layers} layers"
            )
        reply(self, self._checked, (id(moe), str(recipe_dir)), text)

    def _checked(self, key: tuple, text: str) -> None:
        if self.is_mounted and key == self._key:
            self._show_check(text)

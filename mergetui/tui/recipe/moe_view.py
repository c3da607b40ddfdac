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
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from mergetui.errors import UserError
from mergetui.tui.paths_text import short_path
from mergetui.tui.workers import reply


def _prompts(sign: str, style: str, prompts: list[str]) -> str:
    quoted = " · ".join(f'"{escape(p)}"' for p in prompts)
    return f"    [{style}]{sign}[/] {quoted}"


def moe_text(moe: Any, output: Path | None) -> str:
    """The recipe in lines of rich markup (what the view shows above the check line)."""
    gate = escape(moe.gate_mode)
    lines = [
        f"[b]base[/] {escape(moe.base)}",
        f"[b]gate mode[/] {gate} · [b]{moe.experts_per_token}[/] expert(s) per token · "
        f"[b]dtype[/] {escape(moe.dtype or 'as the base')}"
        + (f" · [b]architecture[/] {escape(moe.architecture)}" if moe.architecture else ""),
        "[b]output[/] "
        + (escape(short_path(output)) if output else "[$warning]not set[/] (F4 r asks)")
        + (f" · [b]seed[/] {moe.seed}" if moe.seed is not None else ""),
    ]
    groups = [("Experts", moe.experts)]
    if moe.shared_experts:
        groups.append(("Shared expert", moe.shared_experts))
    for title, experts in groups:
        lines.append("")
        lines.append(f"[b $accent]{title} ({len(experts)})[/]")
        for index, expert in enumerate(experts, start=1):
            lines.append(f"[b]{index:>2}[/] {escape(expert.source)}")
            if expert.positive_prompts:
                lines.append(_prompts("+", "$success", expert.positive_prompts))
            if expert.negative_prompts:
                lines.append(_prompts("−", "$error", expert.negative_prompts))
            extra = []
            if expert.noise_scale is not None:
                extra.append(f"noise_scale {expert.noise_scale:g}")
            if expert.residual_scale is not None:
                extra.append(f"residual_scale {expert.residual_scale:g}")
            if extra:
                lines.append(f"    [dim]{' · '.join(extra)}[/]")
    return "\n".join(lines)


class MoeView(VerticalScroll, can_focus=True):
    """An MoE recipe, read-only, with what its models' headers say of it."""

    DEFAULT_CSS = """
    MoeView { height: 1fr; padding: 0 1; display: none; }
    MoeView #moe-check { margin-bottom: 1; }
    MoeView #moe-hint { margin-top: 1; color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.check = ""  # the check line's text (tests read it)
        self._key: tuple = ()

    def compose(self) -> ComposeResult:
        yield Static(id="moe-check")
        yield Static(id="moe-recipe")
        yield Static(
            "read-only: edit the file in a text editor (docs/moe.md) · F4 then r assembles it",
            id="moe-hint",
        )

    def show(self, moe: Any, recipe_dir: Path) -> None:
        """Draw the recipe, and check its models in a worker when they changed."""
        from mergetui.recipe.paths import recipe_path

        output = recipe_path(moe.output, recipe_dir) if moe.output else None
        self.query_one("#moe-recipe", Static).update(moe_text(moe, output))
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

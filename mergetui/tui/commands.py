"""The command palette (ctrl+p): every action of the app and of the current screen, searchable.

Commands come from `MergeTuiApp.palette_commands(screen)`, which adds the screen's own
`palette_commands()`; this provider only matches and lists them. A screen builds its entries with
`binding_commands`: each names an action and says what it does, and the keys shown beside it are
read from the bindings that run that action, so the palette never names a key the screen lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple

from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode
from textual.keys import format_key


class PaletteCommand(NamedTuple):
    """One palette entry; `action` names the key binding it mirrors, if any (for the help and tests)."""

    title: str
    help: str
    callback: Callable[[], Any]
    action: str | None = None


class PaletteEntry(NamedTuple):
    """A palette entry for an action: its title and what it does; the keys come from bindings."""

    action: str
    title: str
    detail: str = ""


def binding_keys(bindings: Iterable[BindingType], action: str) -> str:
    """The keys bound to `action`, as the palette spells them: `ctrl+s`, `/`, `f1 or ?`."""
    keys: list[str] = []
    for item in bindings:
        if not isinstance(item, Binding) or item.action != action:
            continue
        for key in item.key.split(","):
            shown = item.key_display or format_key(key.strip())
            if shown not in keys:
                keys.append(shown)
    return " or ".join(keys)


def binding_commands(
    node: DOMNode,
    entries: Iterable[PaletteEntry],
    bindings: Iterable[BindingType] = (),
    *,
    where: str = "",
    run: Callable[[str], Any] | None = None,
) -> list[PaletteCommand]:
    """Palette commands for `entries`, each run as `node`'s action (or through `run`).

    The help text is the keys bound to the action in `bindings` (with `where` they work, e.g.
    "models list"), then the entry's detail: "a (models list) · a checkpoint by path or Hub id".
    """
    bindings = list(bindings)
    runner = run or node.run_action
    commands = []
    for action, title, detail in entries:
        keys = binding_keys(bindings, action)
        if keys and where:
            keys += f" ({where})"
        help_text = " · ".join(part for part in (keys, detail) if part)
        commands.append(PaletteCommand(title, help_text, partial(runner, action), action))
    return commands


class MergeTuiCommands(Provider):
    """Screens, files, themes, recipe and grid operations."""

    def _commands(self) -> list[PaletteCommand]:
        return list(self.app.palette_commands(self.screen))

    async def discover(self) -> Hits:
        for title, help_text, callback, _action in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback, _action in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)

"""The command palette (ctrl+p): every action of the app and of the current screen, searchable.

Commands come from `MergeTuiApp.palette_commands(screen)`, which adds the screen's own
`palette_commands()`; this provider only matches and lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from textual.command import DiscoveryHit, Hit, Hits, Provider


class PaletteCommand(NamedTuple):
    """One palette entry; `action` names the key binding it mirrors, if any (for the help and tests)."""

    title: str
    help: str
    callback: Callable[[], Any]
    action: str | None = None


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

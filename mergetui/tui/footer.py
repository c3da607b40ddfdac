"""The key footer of the app's screens: one widget, one line of text, no child widgets.

Textual's `Footer` recomposes itself whenever a screen's bindings are refreshed, which
`switch_mode` does on every F2..F5: it removes and mounts one `FooterKey` widget per key, and each
is restyled as it mounts. That was about half the cost of switching screens (~60 ms of ~130 ms on
the 2-core development machine). This footer shows the same keys (the screen's active bindings
with `show`, the first key of each action, displayed with `app.get_key_display`, the command
palette's key on the right) as one line of Rich text, recomputed when the screen publishes
`bindings_updated_signal` and repainted only when the keys actually changed.

Keys are clickable, as in Textual's footer: a mouse press on a key runs it (`app.simulate_key`).
A key that would not fit the width is left out whole (never a stray letter).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.widget import Widget

if TYPE_CHECKING:
    from textual.screen import Screen

PALETTE_SEPARATOR = "▏"  # Textual's footer draws the palette key with a `vkey` left border


@dataclass(frozen=True)
class FooterItem:
    """One key as the footer shows it."""

    key: str  # "" for a group's label, which is not a key
    display: str
    description: str
    enabled: bool = True
    tooltip: str = ""
    palette: bool = False  # the command palette's key, drawn on the right
    joined: bool = False  # a compact group's key: no space before the next key


@dataclass(frozen=True)
class FooterSpan:
    """Where a shown key lies on the line (columns start..end-1), for clicks and hover."""

    start: int
    end: int
    item: FooterItem


def footer_items(screen: Screen) -> tuple[FooterItem, ...]:
    """The keys Textual's footer would show for `screen`, in its order (palette key last)."""
    app = screen.app
    active = screen.active_bindings
    items: list[FooterItem] = []
    seen_actions: set[str] = set()
    grouped: list[tuple[FooterItem, Binding.Group | None]] = []
    for _namespace, binding, enabled, tooltip in active.values():
        if not binding.show or binding.action in seen_actions:
            continue  # Textual's footer shows the first key bound to each action
        seen_actions.add(binding.action)
        grouped.append(
            (
                FooterItem(
                    binding.key,
                    app.get_key_display(binding),
                    binding.description,
                    enabled,
                    tooltip or "",
                ),
                binding.group,
            )
        )
    for group, members in groupby(grouped, lambda pair: pair[1]):
        members = list(members)
        if group is not None and len(members) > 1:
            # A group's keys share one description, a label after them ("← → Move").
            for index, (item, _) in enumerate(members):
                last = index == len(members) - 1
                items.append(
                    FooterItem(
                        item.key,
                        item.display,
                        "",
                        item.enabled,
                        item.tooltip or item.description,
                        joined=group.compact and not last,
                    )
                )
            items.append(FooterItem("", "", group.description))
        else:
            items.extend(item for item, _ in members)
    if app.ENABLE_COMMAND_PALETTE:
        found = active.get(app.COMMAND_PALETTE_BINDING)
        if found is not None:
            _namespace, binding, enabled, _tooltip = found
            items.append(
                FooterItem(
                    binding.key,
                    app.get_key_display(binding),
                    binding.description,
                    enabled,
                    binding.tooltip or binding.description,
                    palette=True,
                )
            )
    return tuple(items)


class KeyFooter(Widget, can_focus=False):
    """The screen's keys on the bottom line, as Textual's compact footer draws them."""

    ALLOW_SELECT = False
    COMPONENT_CLASSES = {
        "key-footer--key",
        "key-footer--description",
        "key-footer--separator",
        "key-footer--hover",
    }
    DEFAULT_CSS = """
    KeyFooter {
        dock: bottom;
        height: 1;
        width: 1fr;
        color: $footer-foreground;
        background: $footer-background;
        text-wrap: nowrap;
        text-overflow: clip;
        .key-footer--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        .key-footer--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
        .key-footer--separator {
            color: $foreground 20%;
        }
        .key-footer--hover {
            background: $block-hover-background;
        }
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.items: tuple[FooterItem, ...] = ()
        self.spans: tuple[FooterSpan, ...] = ()  # of the last line drawn
        self._hover: FooterItem | None = None
        self._update_pending = False

    # -- which keys ---------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self.update_items()

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        # Signals come in bursts (focus, reactives, stack changes): read the bindings once, after
        # the burst, as Textual's footer does; an unfocused app keeps what it showed.
        if self._update_pending or not screen.app.app_focus or screen is not self.screen:
            return
        self._update_pending = True
        self.call_after_refresh(self.update_items)

    def update_items(self) -> None:
        """Read the screen's keys; repaint only when they differ from what is shown."""
        self._update_pending = False
        if not self.is_attached:
            return
        items = footer_items(self.screen)
        if items != self.items:
            self.items = items
            if self._hover is not None and self._hover not in items:
                self._hover = None
            self.refresh()

    @property
    def shown_keys(self) -> list[str]:
        """The keys on the line as last drawn (a key that did not fit is not among them)."""
        return [span.item.key for span in self.spans]

    # -- drawing ------------------------------------------------------------------------------

    def _item_text(self, item: FooterItem) -> Text:
        key_style = self.get_component_rich_style("key-footer--key")
        text = Text(end="")
        text.append(item.display, style=key_style)
        if item.description:
            description_style = self.get_component_rich_style("key-footer--description")
            gap = " " if item.display else ""
            text.append(gap + item.description, style=description_style)
        if not item.enabled:
            text.stylize(Style(dim=True))
        if item == self._hover:
            hover = self.get_component_rich_style("key-footer--hover")
            text.stylize(Style(bgcolor=hover.bgcolor))
        return text

    def footer_line(self, width: int) -> tuple[Text, tuple[FooterSpan, ...]]:
        """The line for `width` columns and where each key lies on it."""
        palette = [item for item in self.items if item.palette]
        keys = [item for item in self.items if not item.palette]
        right = Text(end="")
        if palette:
            separator = self.get_component_rich_style("key-footer--separator")
            right.append(PALETTE_SEPARATOR, style=separator)
            right.append_text(self._item_text(palette[0]))
            right.append(" ")
        # Textual's compact footer gives every key a margin of one column on its right.
        room = width - right.cell_len
        if room < 0:  # narrower than the palette key alone: keys only
            right, palette, room = Text(end=""), [], width
        line = Text(end="", no_wrap=True, overflow="crop")
        spans: list[FooterSpan] = []
        for item in keys:
            text = self._item_text(item)
            margin = 0 if item.joined else 1
            if line.cell_len + text.cell_len + margin > room:
                break  # left out whole, never cut
            start = line.cell_len
            line.append_text(text)
            if item.key:  # a group's label is drawn, not clicked
                spans.append(FooterSpan(start, line.cell_len, item))
            line.append(" " * margin)
        if palette:
            line.append(" " * (room - line.cell_len))
            start = line.cell_len + len(PALETTE_SEPARATOR)
            line.append_text(right)
            spans.append(FooterSpan(start, line.cell_len - 1, palette[0]))
        return line, tuple(spans)

    def render(self) -> Text:
        line, self.spans = self.footer_line(self.size.width)
        return line

    # -- mouse --------------------------------------------------------------------------------

    def item_at(self, x: int) -> FooterItem | None:
        """The key drawn at column `x`, if any."""
        for span in self.spans:
            if span.start <= x < span.end:
                return span.item
        return None

    def on_mouse_down(self, event: events.MouseDown) -> None:
        item = self.item_at(event.x)
        if item is None:
            return
        event.stop()
        if item.enabled:
            self.app.simulate_key(item.key)
        else:
            self.app.bell()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        self._set_hover(self.item_at(event.x))

    def on_leave(self, event: events.Leave) -> None:
        self._set_hover(None)

    def _set_hover(self, item: FooterItem | None) -> None:
        if item == self._hover:
            return
        self._hover = item
        self.tooltip = item.tooltip if item is not None and item.tooltip else None
        self.styles.pointer = "pointer" if item is not None else "default"
        self.refresh()

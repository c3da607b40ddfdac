"""The app's key footer (mergetui.tui.footer): Textual's footer's keys, one widget, clickable.

The reference for "the same keys, drawn the same way" is Textual's own `Footer(compact=True)`,
rendered in the same app at the same width.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import CommandPalette
from textual.widgets import Footer, Input

from mergetui.tui.footer import PALETTE_SEPARATOR, KeyFooter, footer_items


class KeysApp(App):
    """Bindings that exercise the footer's rules: hidden keys, two keys for one action, an
    action that is shown disabled (check_action None) and one that is hidden (False)."""

    BINDINGS = [
        Binding("f1", "note('help')", "Help"),
        Binding("question_mark", "note('help')", "Help", show=False),
        Binding("a", "note('add')", "Add"),
        Binding("shift+a", "note('add')", "Add again"),  # same action: only the first shows
        Binding("ctrl+s", "note('save')", "Save"),
        Binding("x", "remove", "Remove"),
        Binding("g", "grow", "Grow"),
        Binding("ctrl+q", "quit", "Quit", show=False),
    ]

    def __init__(self, *, textual_footer: bool = False, with_input: bool = False) -> None:
        super().__init__()
        self.textual_footer = textual_footer
        self.with_input = with_input
        self.notes: list[str] = []
        self.can_remove: bool | None = True  # None: shown dim; False: hidden
        self.can_grow = True

    def compose(self) -> ComposeResult:
        if self.with_input:
            yield Input()
        yield Footer(compact=True) if self.textual_footer else KeyFooter()

    def action_note(self, what: str) -> None:
        self.notes.append(what)

    def action_remove(self) -> None:
        self.notes.append("remove")

    def action_grow(self) -> None:
        self.notes.append("grow")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "remove":
            return self.can_remove
        if action == "grow":
            return self.can_grow
        return True


def bottom_line(app: App) -> str:
    return app.screen._compositor.render_strips()[-1].text


async def draw(app: App, pilot) -> None:
    await pilot.pause()
    await pilot.pause(0.05)


async def textual_footer_line(
    width: int, can_remove: bool | None = True, with_input: bool = False
) -> str:
    app = KeysApp(textual_footer=True, with_input=with_input)
    app.can_remove = can_remove
    async with app.run_test(size=(width, 8)) as pilot:
        await draw(app, pilot)
        return bottom_line(app)


async def test_same_keys_and_same_line_as_textuals_compact_footer() -> None:
    for can_remove in (True, None, False):
        expected = await textual_footer_line(100, can_remove)
        app = KeysApp()
        app.can_remove = can_remove
        async with app.run_test(size=(100, 8)) as pilot:
            await draw(app, pilot)
            footer = app.query_one(KeyFooter)
            assert bottom_line(app) == expected
            assert expected.startswith("f1 Help a Add ^s Save ")
            assert expected.rstrip().endswith(f"{PALETTE_SEPARATOR}^p palette")
            keys = footer.shown_keys
            assert keys[:3] == ["f1", "a", "ctrl+s"]
            assert keys[-1] == "ctrl+p"
            assert "question_mark" not in keys and "shift+a" not in keys and "ctrl+q" not in keys
            assert ("x" in keys) is (can_remove is not False)
            assert len(footer.query("*")) == 0  # one widget, no children


async def test_keys_a_focused_input_types_are_left_out_as_textual_does() -> None:
    expected = await textual_footer_line(100, with_input=True)
    app = KeysApp(with_input=True)
    async with app.run_test(size=(100, 8)) as pilot:
        await draw(app, pilot)
        assert bottom_line(app) == expected
        keys = app.query_one(KeyFooter).shown_keys
        assert "a" not in keys and "x" not in keys  # the input takes them as text
        assert {"f1", "ctrl+s", "ctrl+p"} <= set(keys)


async def test_disabled_key_is_dim_and_click_rings_instead_of_running() -> None:
    app = KeysApp()
    app.can_remove = None
    async with app.run_test(size=(100, 8)) as pilot:
        await draw(app, pilot)
        footer = app.query_one(KeyFooter)
        span = next(s for s in footer.spans if s.item.key == "x")
        assert not span.item.enabled
        line, _ = footer.footer_line(100)
        assert line.get_style_at_offset(app.console, span.start).dim
        enabled = next(s for s in footer.spans if s.item.key == "a")
        assert not line.get_style_at_offset(app.console, enabled.start).dim
        await pilot.click(KeyFooter, offset=(span.start, 0))
        await pilot.pause()
        assert "remove" not in app.notes


async def test_clicking_a_key_runs_its_action() -> None:
    app = KeysApp()
    async with app.run_test(size=(100, 8)) as pilot:
        await draw(app, pilot)
        footer = app.query_one(KeyFooter)
        spans = {span.item.key: span for span in footer.spans}
        # The description is part of the key, as in Textual's footer: its last column clicks too.
        await pilot.click(KeyFooter, offset=(spans["a"].end - 1, 0))
        await pilot.click(KeyFooter, offset=(spans["ctrl+s"].start, 0))
        await pilot.click(KeyFooter, offset=(spans["x"].start + 1, 0))
        await pilot.pause()
        assert app.notes == ["add", "save", "remove"]
        # The gap between two keys and the empty middle run nothing.
        await pilot.click(KeyFooter, offset=(spans["a"].end, 0))
        await pilot.click(KeyFooter, offset=(spans["ctrl+p"].start - 3, 0))
        await pilot.pause()
        assert app.notes == ["add", "save", "remove"]
        assert footer.item_at(spans["ctrl+p"].start - 1) is None  # the separator
        await pilot.click(KeyFooter, offset=(spans["ctrl+p"].start, 0))
        await pilot.pause()
        assert isinstance(app.screen, CommandPalette)  # the palette key opened it


async def test_follows_binding_changes_and_repaints_only_when_they_change() -> None:
    app = KeysApp()
    async with app.run_test(size=(100, 8)) as pilot:
        await draw(app, pilot)
        footer = app.query_one(KeyFooter)
        renders: list[int] = []
        original = footer.render

        def counting_render():
            renders.append(1)
            return original()

        footer.render = counting_render  # type: ignore[method-assign]
        app.screen.refresh_bindings()  # nothing changed: no repaint
        await draw(app, pilot)
        assert renders == []
        assert "g" in footer.shown_keys
        app.can_grow = False
        app.refresh_bindings()
        await draw(app, pilot)
        assert len(renders) == 1
        assert "g" not in footer.shown_keys
        assert "Grow" not in bottom_line(app)
        assert [item.key for item in footer.items] == [
            item.key for item in footer_items(app.screen)
        ]


async def test_narrow_terminal_leaves_keys_out_whole_never_a_stray_letter() -> None:
    for width in (40, 30, 24, 20, 12):
        app = KeysApp()
        async with app.run_test(size=(width, 8)) as pilot:
            await draw(app, pilot)
            footer = app.query_one(KeyFooter)
            line, spans = footer.footer_line(width)
            assert line.cell_len <= width
            text = bottom_line(app)
            shown = [span.item for span in spans]
            for span in spans:  # each shown key is drawn in full where its span says
                label = span.item.display + (
                    " " + span.item.description if span.item.description else ""
                )
                assert text[span.start : span.end] == label
            left = [item for item in shown if not item.palette]
            all_left = [item for item in footer.items if not item.palette]
            assert left == all_left[: len(left)]  # the first keys, in order
            if len(left) < len(all_left):  # the first key left out would not have fitted
                missing = all_left[len(left)]
                used = spans[len(left) - 1].end + 1 if left else 0
                palette_width = sum(s.end - s.start + 2 for s in spans if s.item.palette)
                needed = len(missing.display) + 1 + len(missing.description) + 1
                assert used + needed > width - palette_width


async def test_hover_highlights_the_key_under_the_mouse() -> None:
    app = KeysApp()
    async with app.run_test(size=(100, 8)) as pilot:
        await draw(app, pilot)
        footer = app.query_one(KeyFooter)
        span = next(s for s in footer.spans if s.item.key == "ctrl+s")
        plain, _ = footer.footer_line(100)
        before = plain.get_style_at_offset(app.console, span.start).bgcolor
        await pilot.hover(KeyFooter, offset=(span.start + 1, 0))
        await pilot.pause()
        hovered, _ = footer.footer_line(100)
        assert hovered.get_style_at_offset(app.console, span.start).bgcolor != before
        other = next(s for s in footer.spans if s.item.key == "f1")
        assert hovered.get_style_at_offset(app.console, other.start).bgcolor == before
        await pilot.hover(KeyFooter, offset=(span.end, 0))  # the gap: nothing highlighted
        await pilot.pause()
        cleared, _ = footer.footer_line(100)
        assert cleared.get_style_at_offset(app.console, span.start).bgcolor == before


class GroupsApp(App):
    """Keys in binding groups: one label after the group's keys (compact: no space between)."""

    MOVE = Binding.Group("Move")
    NUDGE = Binding.Group("Nudge", compact=True)
    BINDINGS = [
        Binding("f1", "note('help')", "Help"),
        Binding("left", "note('left')", "Left", group=MOVE),
        Binding("right", "note('right')", "Right", group=MOVE),
        Binding("plus", "note('up')", "Up", group=NUDGE),
        Binding("minus", "note('down')", "Down", group=NUDGE),
        Binding("x", "note('remove')", "Remove"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def compose(self) -> ComposeResult:
        yield KeyFooter()

    def action_note(self, what: str) -> None:
        self.notes.append(what)


async def test_binding_groups_share_one_label_that_is_not_a_key() -> None:
    app = GroupsApp()
    async with app.run_test(size=(80, 6)) as pilot:
        await draw(app, pilot)
        footer = app.query_one(KeyFooter)
        # Textual's compact footer draws "f1 Help  ← → Move +- Nudgex Remove" (a doubled and a
        # missing space); this footer keeps one space between keys and labels.
        assert bottom_line(app).startswith("f1 Help ← → Move +- Nudge x Remove ")
        assert footer.shown_keys == ["f1", "left", "right", "plus", "minus", "x", "ctrl+p"]
        spans = {span.item.key: span for span in footer.spans}
        right = spans["right"]
        assert right.end - right.start == 1  # the key alone: the label is not part of it
        await pilot.click(KeyFooter, offset=(right.start, 0))
        await pilot.click(KeyFooter, offset=(right.end + 2, 0))  # on the label "Move"
        await pilot.click(KeyFooter, offset=(spans["minus"].start, 0))
        await pilot.pause()
        assert app.notes == ["right", "down"]
        tooltips = {span.item.key: span.item.tooltip for span in footer.spans}
        assert tooltips["left"] == "Left" and tooltips["minus"] == "Down"

"""The Settings tab (F9): system prompt, temperature, top_p, max new tokens, device and dtype.

A value that does not parse, or is out of range, is named and the last good value stays; the
device and dtype apply to the next model loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Label, Select, Static

from mergetui.chat.dtype import DTYPES
from mergetui.chat.generate import SETTING_RANGES, setting_problem
from mergetui.tui.chat.tab import SessionTab

DEVICES = ("auto", "cpu", "cuda", "mps")
# How each numeric setting's text is read; its range is GenerationSettings' (chat.generate).
NUMBERS: dict[str, Callable[[str], float]] = {
    "temperature": float,
    "top_p": float,
    "max_new_tokens": int,
}


class SettingsTab(SessionTab):
    """How replies are generated, and where and in which dtype the next model loads."""

    def __init__(self, settings: Any, dtype: str) -> None:
        super().__init__("Settings [dim]F9[/]", id="settings")
        self.settings = settings  # the screen's GenerationSettings, edited in place
        self.dtype = dtype

    def compose(self) -> ComposeResult:
        settings = self.settings
        with VerticalScroll(id="chat-settings"):
            yield from self._setting("system prompt", "system", "", "none")
            yield from self._setting(
                "temperature", "temperature", f"{settings.temperature:g}", "0 = greedy"
            )
            yield from self._setting("top_p", "top_p", f"{settings.top_p:g}", "")
            yield from self._setting(
                "max new tokens", "max_new_tokens", str(settings.max_new_tokens), ""
            )
            yield from self._choice("device", DEVICES, "auto")
            yield from self._choice("dtype", DTYPES, self.dtype)
            yield Static(id="settings-message", classes="hint")

    def _setting(self, label: str, key: str, value: str, placeholder: str) -> ComposeResult:
        with Horizontal(classes="setting"):
            yield Label(label, classes="setting-name")
            yield Input(value, placeholder=placeholder, id=f"setting-{key}", compact=True)

    def _choice(self, key: str, values: tuple[str, ...], value: str) -> ComposeResult:
        with Horizontal(classes="setting"):
            yield Label(key, classes="setting-name")
            yield Select(
                [(v, v) for v in values],
                value=value,
                allow_blank=False,
                id=f"setting-{key}",
                compact=True,
            )

    @on(Input.Changed, "#chat-settings Input")
    def setting_changed(self, event: Input.Changed) -> None:
        key = (event.input.id or "").removeprefix("setting-")
        message = self.query_one("#settings-message", Static)
        if key == "system":
            self.settings.system_prompt = event.value
        elif key in NUMBERS:
            try:
                number = NUMBERS[key](event.value.strip())
            except ValueError:
                number = None
            words = SETTING_RANGES[key][1] if number is None else setting_problem(key, number)
            if words is not None:
                message.update(f"[b $error]{key}[/]: {words}; the last good value stays")
                return
            setattr(self.settings, key, number)
        message.update("")

    @on(Select.Changed, "#setting-device")
    @on(Select.Changed, "#setting-dtype")
    def device_changed(self, event: Select.Changed) -> None:
        key = (event.select.id or "").removeprefix("setting-")
        setattr(self.chat, key, str(event.value))
        self.query_one("#settings-message", Static).update(
            f"{key} {event.value}: used by the next model loaded"
        )

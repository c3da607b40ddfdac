"""The Chat screen: load a checkpoint, talk to it, compare it with its parents, check its perplexity.

Four tabs (F6..F9): Chat (streamed replies as Markdown, the tokenizer's chat template or a plain
prompt; escape stops a reply, ctrl+n clears), Compare (one prompt to the loaded model and the recipe's
models, replies side by side), Quick check (perplexity of each on the bundled sample or a named
file) and Settings (system prompt, temperature, top_p, max_new_tokens, device, dtype). Loading, generation
and scoring run in thread workers (`mergetui.chat`); the UI only receives messages, the reply text
coalesced to at most one update per STREAM_INTERVAL. torch and transformers are imported by those
workers, never by the first frame.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import (
    Button,
    Checkbox,
    DataTable,
    Header,
    Input,
    Label,
    Markdown,
    OptionList,
    ProgressBar,
    Select,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.option_list import Option

from mergetui.chat.dtype import DTYPES
from mergetui.errors import CancelledError, UserError
from mergetui.tui.commands import PaletteCommand
from mergetui.tui.dialogs.base import DialogScreen
from mergetui.tui.dialogs.paths import PathInput
from mergetui.tui.footer import KeyFooter
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen
from mergetui.tui.run_screen import short_path
from mergetui.tui.status_line import StatusLine

STREAM_INTERVAL = 0.05  # seconds between two updates of a growing reply
DEVICES = ("auto", "cpu", "cuda", "mps")
# In the app, a .bin checkpoint is allowed by a tick in the load dialog, not a flag.
BIN_FIX = ("pass --allow-bin", "tick 'allow pytorch_model.bin' in the load dialog (ctrl+l)")
FINISH_NOTES = {
    "end": "end of turn",
    "length": "hit max new tokens",
    "context": "the model's context window is full",
    "stopped": "stopped",
}
# The same, short enough for a Compare column's status line.
COMPARE_NOTES = {
    "end": "end of turn",
    "length": "max tokens",
    "context": "context full",
    "stopped": "stopped",
}


# ----------------------------------------------------------------------------------------------
# Messages from the workers


class LoadProgress(Message):
    def __init__(self, stage: str, fraction: float) -> None:
        super().__init__()
        self.stage = stage
        self.fraction = fraction


class ModelLoaded(Message):
    def __init__(self, loaded: Any, choice: LoadChoice) -> None:
        super().__init__()
        self.loaded = loaded
        self.choice = choice


class LoadFailed(Message):
    def __init__(self, source: str, error: str) -> None:
        super().__init__()
        self.source = source
        self.error = error


class ReplyText(Message):
    """The reply so far (the whole text, not a delta: a dropped update loses nothing)."""

    def __init__(self, target: str, text: str) -> None:
        super().__init__()
        self.target = target
        self.text = text


class ReplyDone(Message):
    def __init__(self, target: str, reply: Any, error: str = "") -> None:
        super().__init__()
        self.target = target
        self.reply = reply
        self.error = error


class CompareStatus(Message):
    def __init__(self, column: int, text: str) -> None:
        super().__init__()
        self.column = column
        self.text = text


class CheckRow(Message):
    def __init__(self, row: int, status: str, result: Any = None) -> None:
        super().__init__()
        self.row = row
        self.status = status
        self.result = result


class WorkEnded(Message):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind


class _Coalescer:
    """Posts the latest reply text at most once per interval, and always the last one."""

    def __init__(self, screen: ChatScreen, target: str, interval: float) -> None:
        self.screen = screen
        self.target = target
        self.interval = interval
        self.last = 0.0
        self.text = ""
        self.posted = ""

    def __call__(self, text: str) -> None:
        self.text = text
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.flush()

    def flush(self) -> None:
        if self.text != self.posted:
            self.posted = self.text
            self.screen.post_message(ReplyText(self.target, self.text))


# ----------------------------------------------------------------------------------------------
# The load dialog


@dataclass
class LoadChoice:
    source: str
    trust_remote_code: bool
    allow_bin: bool = False


class LoadModelDialog(DialogScreen):
    """Pick the merge just made, one of the recipe's models, a past merge, or type any folder."""

    DEFAULT_CSS = """
    LoadModelDialog OptionList { height: auto; max-height: 10; }
    """

    def __init__(
        self,
        candidates: list[tuple[str, str]],
        trusted: set[str],
        bin_allowed: set[str] | None = None,
    ) -> None:
        super().__init__()
        self.candidates = candidates
        self.trusted = trusted
        self.bin_allowed = bin_allowed or set()
        # True once a key typed in the list started a folder: keys typed quickly can still reach
        # the list before the field has focus, and they continue it.
        self.typing = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Load a model to chat with", classes="dialog-title")
            if self.candidates:
                yield OptionList(
                    *(
                        Option(f"{escape(label)}  [dim]{escape(short_path(path))}[/]", id=str(i))
                        for i, (label, path) in enumerate(self.candidates)
                    ),
                    id="candidates",
                )
            yield Label("or a checkpoint folder (or a downloaded Hub id)")
            yield PathInput(
                self.candidates[0][1] if self.candidates else "",
                placeholder="./merges/my-merge",
                id="source",
                select_on_focus=False,  # a character typed in the list lands here, kept
            )
            yield Checkbox(
                "trust remote code for this model (runs Python shipped with it)",
                False,
                id="trust",
                compact=True,
            )
            yield Checkbox(
                "allow pytorch_model.bin weights (a pickle: only files you trust)",
                False,
                id="allow-bin",
                compact=True,
            )
            yield Static(
                "enter loads · type (or tab) for a folder · escape cancels",
                classes="hint",
                id="message",
            )

    def on_mount(self) -> None:
        if self.candidates:
            self.query_one(OptionList).highlighted = 0
            self.query_one(OptionList).focus()
        else:
            self.query_one("#source", Input).focus()
        self._sync_trust()

    def on_key(self, event: events.Key) -> None:
        # Typing while the list has focus starts a folder: the keys would otherwise be lost and
        # enter would load the highlighted model instead of the one typed.
        if isinstance(self.focused, OptionList) and event.is_printable and event.character:
            event.stop()
            event.prevent_default()
            field_ = self.query_one("#source", Input)
            if self.typing:
                field_.insert_text_at_cursor(event.character)
            else:
                field_.value = event.character
                field_.cursor_position = len(field_.value)
                self.typing = True
            field_.focus()
            self._sync_trust()

    def _sync_trust(self) -> None:
        source = self.query_one("#source", Input).value.strip()
        self.query_one("#trust", Checkbox).value = source in self.trusted
        self.query_one("#allow-bin", Checkbox).value = source in self.bin_allowed

    @on(OptionList.OptionHighlighted)
    def highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.typing = False  # a model chosen in the list: the next key typed starts afresh
        self.query_one("#source", Input).value = self.candidates[int(str(event.option.id))][1]
        self._sync_trust()

    @on(OptionList.OptionSelected)
    def selected(self, event: OptionList.OptionSelected) -> None:
        self._answer(self.candidates[int(str(event.option.id))][1])

    @on(Input.Submitted, "#source")
    def submitted(self, event: Input.Submitted) -> None:
        self._answer(event.value.strip())

    def _answer(self, source: str) -> None:
        if not source:
            message = self.query_one("#message", Static)
            message.update("name a checkpoint folder")
            message.add_class("error")
            return
        self.dismiss(
            LoadChoice(
                source,
                self.query_one("#trust", Checkbox).value,
                self.query_one("#allow-bin", Checkbox).value,
            )
        )


# ----------------------------------------------------------------------------------------------
# The screen


class ChatInput(Input):
    """The message box: enter sends."""


class ChatScreen(ModeScreen):
    """Talk to a checkpoint; compare it with its parents; check its perplexity."""

    DEFAULT_CSS = """
    ChatScreen #chat-model { height: 1; padding: 0 1; background: $panel; overflow: hidden; }
    ChatScreen #chat-loading { height: 1; padding: 0 1; }
    ChatScreen #chat-load-bar { width: 40; }
    ChatScreen #chat-load-stage { width: 1fr; color: $text-muted; }
    ChatScreen #chat-tabs { height: 1fr; }
    ChatScreen #chat-tabs TabPane { padding: 0; }
    ChatScreen #chat-log { height: 1fr; padding: 0 1; }
    ChatScreen .user-msg { margin-top: 1; color: $text-accent; }
    ChatScreen .reply-name { color: $text-primary; }
    ChatScreen Markdown.reply { margin: 0; padding: 0 0 0 2; }
    ChatScreen #chat-input, ChatScreen #compare-input { margin: 0 1; background: $boost; }
    ChatScreen #check-file { background: $boost; }
    ChatScreen #compare-models, ChatScreen #check-help { padding: 0 1; height: auto; }
    ChatScreen #compare-columns { height: 1fr; }
    ChatScreen .compare-column { width: 1fr; height: 1fr; border-left: vkey $panel; padding: 0 1; }
    ChatScreen .compare-title { height: 1; }
    ChatScreen .compare-body { height: 1fr; }
    ChatScreen .compare-body Markdown { margin: 0; padding: 0; }
    ChatScreen #check-row { height: auto; padding: 0 1; }
    ChatScreen #check-file { width: 1fr; }
    ChatScreen #check-run { margin-left: 1; }
    ChatScreen #check-table { height: 1fr; }
    ChatScreen #chat-settings { padding: 0 1; }
    ChatScreen .setting { height: auto; }
    ChatScreen .setting-name { width: 16; }
    ChatScreen .setting Input { width: 1fr; }
    ChatScreen .setting Select { width: 20; }
    ChatScreen #chat-status { height: 1; padding: 0 1; background: $panel; overflow: hidden; }
    """

    AUTO_FOCUS = "#chat-input"
    BINDINGS = [
        Binding("ctrl+l", "load_model", "Load model"),
        # esc and ctrl+n are named in the input's hint line; the footer keeps to 80 columns.
        Binding("escape", "stop", "Stop reply", show=False),
        Binding("ctrl+n", "clear", "New chat", show=False),
        Binding("f6", "tab('chat')", "Chat tab", show=False),
        Binding("f7", "tab('compare')", "Compare tab", show=False),
        Binding("f8", "tab('check')", "Quick check tab", show=False),
        Binding("f9", "tab('settings')", "Settings tab", show=False),
    ]

    def __init__(self) -> None:
        from mergetui.chat.generate import GenerationSettings

        super().__init__()
        self.loaded: Any = None
        # Not `loading`: that is Textual's reactive, which covers the whole screen with a spinner
        # (hiding the load's progress bar and stage).
        self.model_loading = False
        self.busy: str | None = None  # "reply", "compare" or "check" while a worker runs
        self.stop_event = threading.Event()
        self.settings = GenerationSettings()
        self.device = "auto"
        self.dtype = "auto"  # mergetui.chat.dtype: auto, float32, bfloat16, float16
        self.trusted: set[str] = set()
        self.bin_allowed: set[str] = set()  # sources whose pytorch_model.bin may be read
        self.messages: list[Any] = []  # mergetui.chat.prompt.Message, the conversation
        self.extra: dict[str, Any] = {}  # parents kept loaded for compare / check, by path
        self.reply_count = 0
        self.last_reply: Any = None
        self.compare_sources: list[tuple[str, str]] = []
        self.check_results: list[Any] = []
        self.reply_updates = 0  # ReplyText messages shown (the streaming test counts them)
        self.load_stages: list[tuple[str, float]] = []  # the current (or last) load's steps

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="chat-model")
        with Horizontal(id="chat-loading"):
            yield ProgressBar(total=100, show_eta=False, id="chat-load-bar")
            yield Static(id="chat-load-stage")
        with TabbedContent(id="chat-tabs", initial="chat"):
            with TabPane("Chat [dim]F6[/]", id="chat"):
                with VerticalScroll(id="chat-log"):
                    yield Static(
                        "Load a model with [b]ctrl+l[/] (the merge just made, one of the "
                        "recipe's models, or any checkpoint folder), then type below.",
                        id="chat-empty",
                        classes="hint",
                    )
                yield ChatInput(
                    placeholder="message · enter sends · esc stops a reply · ctrl+n new chat",
                    id="chat-input",
                    compact=True,
                )
            with TabPane("Compare [dim]F7[/]", id="compare"):
                yield Static(id="compare-models", classes="hint")
                yield Input(
                    placeholder="a prompt for every model · enter sends · esc stops",
                    id="compare-input",
                    compact=True,
                )
                yield Horizontal(id="compare-columns")
            with TabPane("Quick check [dim]F8[/]", id="check"):
                yield Static(
                    "Perplexity of each model on a text (lower is better; a broken merge scores "
                    "far above its parents). Enter runs; a file path replaces the bundled sample.",
                    classes="hint",
                    id="check-help",
                )
                with Horizontal(id="check-row"):
                    yield PathInput(
                        placeholder="text file (empty: the bundled sample)",
                        id="check-file",
                        compact=True,
                    )
                    yield Button("Run", id="check-run", compact=True)
                yield DataTable(id="check-table", cursor_type="row")
            with TabPane("Settings [dim]F9[/]", id="settings"):
                with VerticalScroll(id="chat-settings"):
                    yield from self._setting("system prompt", "system", "", "none")
                    yield from self._setting(
                        "temperature", "temperature", f"{self.settings.temperature:g}", "0 = greedy"
                    )
                    yield from self._setting("top_p", "top_p", f"{self.settings.top_p:g}", "")
                    yield from self._setting(
                        "max new tokens", "max_new_tokens", str(self.settings.max_new_tokens), ""
                    )
                    with Horizontal(classes="setting"):
                        yield Label("device", classes="setting-name")
                        yield Select(
                            [(d, d) for d in DEVICES],
                            value="auto",
                            allow_blank=False,
                            id="setting-device",
                            compact=True,
                        )
                    with Horizontal(classes="setting"):
                        yield Label("dtype", classes="setting-name")
                        yield Select(
                            [(d, d) for d in DTYPES],
                            value=self.dtype,
                            allow_blank=False,
                            id="setting-dtype",
                            compact=True,
                        )
                    yield Static(id="settings-message", classes="hint")
        yield StatusLine(id="chat-status")
        yield KeyFooter()

    def _setting(self, label: str, key: str, value: str, placeholder: str) -> ComposeResult:
        with Horizontal(classes="setting"):
            yield Label(label, classes="setting-name")
            yield Input(value, placeholder=placeholder, id=f"setting-{key}", compact=True)

    def on_mount(self) -> None:
        self.query_one("#chat-loading").display = False
        self.query_one("#check-table", DataTable).add_columns(
            "model", "perplexity", "tokens", "time", "status"
        )
        self._show_model()
        self._refresh_compare_sources()
        self._take_pending()

    def stop_work(self) -> None:
        """The app is quitting: stop a reply, compare or check at its next token, as esc does, so
        the process is not kept alive (its terminal blank) until the reply would have ended."""
        self.stop_event.set()

    def on_unmount(self) -> None:
        self.stop_work()  # however the app closes

    def on_screen_resume(self) -> None:
        self.app.refresh_title()
        self._refresh_compare_sources()
        self._take_pending()

    def _take_pending(self) -> None:
        pending = getattr(self.app, "pending_chat_model", None)
        if pending:
            self.app.pending_chat_model = None
            # `mergetui chat MODEL --device/--dtype/--allow-bin/--trust-remote-code`
            options = getattr(self.app, "pending_chat_options", None) or {}
            self.app.pending_chat_options = None
            for key in ("device", "dtype"):
                if options.get(key):
                    setattr(self, key, options[key])
                    self.query_one(f"#setting-{key}", Select).value = options[key]
            self.load_model(
                str(pending),
                trust_remote_code=bool(options.get("trust_remote_code"))
                or str(pending) in self.trusted,
                allow_bin=bool(options.get("allow_bin")) or str(pending) in self.bin_allowed,
            )

    # -- what the screen shows -----------------------------------------------------------------

    def _show_model(self) -> None:
        label = self.query_one("#chat-model", Static)
        if self.loaded is not None:
            label.update(f"[b $success]●[/] {escape(self.loaded.describe())}")
        elif self.model_loading:
            label.update("[b $warning]●[/] loading…")
        else:
            label.update("[dim]●[/] no model loaded · [b]ctrl+l[/] loads one")

    def _status(self, *parts: str) -> None:
        """Parts (markup, most important first), fitted to the width by StatusLine."""
        self.query_one("#chat-status", StatusLine).show(parts)

    def _base_dir(self) -> Path:
        from mergetui.recipe.paths import recipe_folder

        document = self.app.document
        return recipe_folder(document.path or document.origin)

    def load_candidates(self) -> list[tuple[str, str]]:
        """The merge just made, the recipe's models, then past finished merges that still exist."""
        from mergetui.merge.history import load_history

        seen: set[str] = set()
        found: list[tuple[str, str]] = []

        def add(label: str, path: Path | str) -> None:
            text = str(path)
            if text not in seen:
                seen.add(text)
                found.append((label, text))

        last = getattr(self.app, "last_merge_output", None)
        if last and Path(last).is_dir():
            add("the merge just made", last)
        from mergetui.recipe.paths import local_model_path

        base = self._base_dir()
        for name, entry in self.app.document.recipe.models.items():
            candidate = local_model_path(entry.source, base)
            if candidate.is_dir():
                add(f"recipe model {name}", candidate.resolve())
        try:
            history = load_history()
        except Exception:  # the history is a convenience
            history = []
        for record in reversed(history):
            if record.outcome == "finished" and Path(record.output_dir).is_dir():
                add(f"merge of {record.when()}", record.output_dir)
            if len(found) >= 12:
                break
        return found

    def _refresh_compare_sources(self) -> None:
        """The loaded model (or the last merge) first, then the recipe's models."""
        sources: list[tuple[str, str]] = []
        if self.loaded is not None:
            sources.append((self.loaded.name, str(self.loaded.path)))
        else:
            last = getattr(self.app, "last_merge_output", None)
            if last and Path(last).is_dir():
                sources.append((Path(last).name, str(Path(last).resolve())))
        from mergetui.recipe.paths import local_model_path

        base = self._base_dir()
        for name, entry in self.app.document.recipe.models.items():
            candidate = local_model_path(entry.source, base)
            if candidate.is_dir():
                sources.append((name, str(candidate.resolve())))
            else:
                from mergetui.checkpoints.locate import find_local

                found = find_local(entry.source, entry.revision)
                if found is not None:
                    sources.append((name, str(found)))
        unique: list[tuple[str, str]] = []
        for name, path in sources:
            if all(path != p for _, p in unique):
                unique.append((name, path))
        self.compare_sources = unique
        names = ", ".join(name for name, _ in unique) or "none yet (load a model, or open a recipe)"
        self.query_one("#compare-models", Static).update(
            f"models: {escape(names)} · loaded one after another if memory is short"
        )

    # -- loading -------------------------------------------------------------------------------

    def action_load_model(self) -> None:
        self.app.push_screen(
            LoadModelDialog(self.load_candidates(), self.trusted, self.bin_allowed),
            self._load_chosen,
        )

    def _load_chosen(self, choice: LoadChoice | None) -> None:
        if choice is None:
            return
        self.load_model(
            choice.source, trust_remote_code=choice.trust_remote_code, allow_bin=choice.allow_bin
        )

    def load_model(
        self, source: str, *, trust_remote_code: bool = False, allow_bin: bool = False
    ) -> None:
        """Load `source` for chatting in a worker (a reply in progress is stopped first)."""
        if trust_remote_code:
            self.trusted.add(source)
        if allow_bin:
            self.bin_allowed.add(source)
        self.stop_event.set()
        self.model_loading = True
        self._show_model()
        self.query_one("#chat-loading").display = True
        self.load_stages = []
        self.query_one("#chat-load-bar", ProgressBar).update(total=100, progress=0)
        self.query_one("#chat-load-stage", Static).update(f"loading {escape(source)}")
        choice = LoadChoice(source, trust_remote_code, allow_bin)
        self._load(choice, self.device, self.dtype, self._base_dir())

    @work(thread=True, exclusive=True, group="chat-load", exit_on_error=False)
    def _load(self, choice: LoadChoice, device: str, dtype: str, base_dir: Path) -> None:
        from mergetui.chat.loader import load_for_chat

        previous, self.loaded = self.loaded, None
        if previous is not None:
            previous.unload()
        try:
            loaded = load_for_chat(
                choice.source,
                device=device,
                dtype=dtype,
                trust_remote_code=choice.trust_remote_code,
                allow_bin=choice.allow_bin,
                base_dir=base_dir,
                on_progress=lambda stage, f: self.post_message(LoadProgress(stage, f)),
            )
        except UserError as exc:
            if exc.fix:
                exc.fix = exc.fix.replace(*BIN_FIX)
            self.post_message(LoadFailed(choice.source, str(exc)))
            return
        except Exception as exc:  # a broken checkpoint must not take the app down
            self.post_message(LoadFailed(choice.source, f"unexpected error: {exc!r}"))
            return
        self.post_message(ModelLoaded(loaded, choice))

    @on(LoadProgress)
    def load_progress(self, event: LoadProgress) -> None:
        self.load_stages.append((event.stage, event.fraction))
        self.query_one("#chat-load-bar", ProgressBar).update(progress=int(event.fraction * 100))
        self.query_one("#chat-load-stage", Static).update(escape(event.stage))

    @on(ModelLoaded)
    def model_loaded(self, event: ModelLoaded) -> None:
        self.model_loading = False
        self.loaded = event.loaded
        self.query_one("#chat-loading").display = False
        self._show_model()
        self._refresh_compare_sources()
        # Compare and Quick check load it again by its folder: the same permissions apply.
        if event.choice.trust_remote_code:
            self.trusted.add(str(event.loaded.path))
        if event.choice.allow_bin:
            self.bin_allowed.add(str(event.loaded.path))
        self._status(
            f"loaded in {event.loaded.seconds:.1f} s",
            f"{event.loaded.dtype} ({escape(event.loaded.dtype_reason)})",
        )
        for empty in self.query("#chat-empty"):
            if isinstance(empty, Static):
                empty.update(
                    f"Talking to [b]{escape(event.loaded.name)}[/]: type below, enter sends. "
                    "F7 compares it with the recipe's models, F8 checks perplexity."
                )
        if event.loaded.message:
            self.notify(event.loaded.message, severity="warning", timeout=8)
        self.notify(f"loaded {event.loaded.name}", timeout=3)
        self.query_one("#chat-input", Input).focus()

    @on(LoadFailed)
    def load_failed(self, event: LoadFailed) -> None:
        self.model_loading = False
        self.query_one("#chat-loading").display = False
        self._show_model()
        self._status(f"[b $error]not loaded[/]: {escape(event.error)}")
        self.notify(event.error, title="Model not loaded", severity="error", timeout=10)

    # -- chat ----------------------------------------------------------------------------------

    @on(Input.Submitted, "#chat-input")
    def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.loaded is None:
            if self.model_loading:  # the message stays in the field: enter again once loaded
                self.notify("the model is still loading: send it once it is loaded")
            else:
                self.notify("load a model first (ctrl+l)", severity="warning")
            return
        if self.busy is not None:
            self.notify(f"wait for the {self.busy} to end, or press esc", severity="warning")
            return
        from mergetui.chat.prompt import Message as ChatMessage
        from mergetui.chat.prompt import conversation

        event.input.value = ""
        log = self.query_one("#chat-log", VerticalScroll)
        for empty in self.query("#chat-empty"):
            empty.remove()
        self.reply_count += 1
        target = f"reply-{self.reply_count}"
        log.mount(Static(f"[b]you[/] {escape(text)}", classes="user-msg"))
        log.mount(Static(f"[b]{escape(self.loaded.name)}[/]", classes="reply-name"))
        log.mount(Markdown("…", id=target, classes="reply"))
        log.scroll_end(animate=False)
        messages = conversation(self.messages, text, self.settings.system_prompt)
        self.messages.append(ChatMessage("user", text))
        self.busy = "reply"
        self.stop_event = threading.Event()
        self._status("[b]generating[/]… esc stops")
        self._reply(self.loaded, messages, self._settings_copy(), target, self.stop_event)

    def _settings_copy(self) -> Any:
        from dataclasses import replace

        return replace(self.settings)

    @work(thread=True, exclusive=True, group="chat-reply", exit_on_error=False)
    def _reply(
        self, loaded: Any, messages: list[Any], settings: Any, target: str, stop: Any
    ) -> None:
        from mergetui.chat.generate import generate_reply

        relay = _Coalescer(self, target, STREAM_INTERVAL)
        try:
            reply = generate_reply(loaded, messages, settings, on_text=relay, stop=stop)
        except UserError as exc:
            relay.flush()
            self.post_message(ReplyDone(target, None, str(exc)))
            return
        except Exception as exc:
            relay.flush()
            self.post_message(ReplyDone(target, None, f"generation failed: {exc!r}"))
            return
        relay.text = reply.text
        relay.flush()
        self.post_message(ReplyDone(target, reply))

    @on(ReplyText)
    def reply_text(self, event: ReplyText) -> None:
        for view in self.query(f"#{event.target}"):
            if isinstance(view, Markdown):
                view.update(event.text or "…")
                self.reply_updates += 1
        if event.target.startswith("reply-"):
            self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    @on(ReplyDone)
    def reply_done(self, event: ReplyDone) -> None:
        from mergetui.chat.prompt import Message as ChatMessage

        if event.target.startswith("compare-"):
            return
        self.busy = None
        if event.reply is None:
            self._status(f"[b $error]✗[/] {escape(event.error)}")
            self.notify(event.error, title="No reply", severity="error")
            if self.messages and self.messages[-1].role == "user":
                self.messages.pop()
            return
        reply = event.reply
        self.last_reply = reply
        self.messages.append(ChatMessage("assistant", reply.text))
        dtype = f", {self.loaded.dtype}" if self.loaded is not None else ""
        self._status(
            f"{reply.tokens} tokens in {reply.seconds:.1f} s "
            f"({reply.tokens_per_second:.1f} tokens/s{dtype})",
            FINISH_NOTES.get(reply.finish, ""),
        )
        for view in self.query(f"#{event.target}"):
            if isinstance(view, Markdown) and not reply.text:
                view.update("*(no visible text)*")

    def action_stop(self) -> None:
        if self.busy is None:
            return
        self.stop_event.set()
        self._status("[b $warning]stopping[/]…")

    def action_clear(self) -> None:
        if self.busy == "reply":
            self.stop_event.set()
        self.messages.clear()
        log = self.query_one("#chat-log", VerticalScroll)
        log.remove_children()
        log.mount(Static("New conversation.", id="chat-empty", classes="hint"))
        self._status("conversation cleared")

    # -- compare -------------------------------------------------------------------------------

    @on(Input.Submitted, "#compare-input")
    def compare(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt:
            return
        if self.busy is not None:
            self.notify(f"wait for the {self.busy} to end, or press esc", severity="warning")
            return
        self._refresh_compare_sources()
        if not self.compare_sources:
            self.notify("no models to compare: load one or open a recipe", severity="warning")
            return
        columns = self.query_one("#compare-columns", Horizontal)
        columns.remove_children()
        for index, (name, _path) in enumerate(self.compare_sources):
            column = Vertical(
                Static(f"[b]{escape(name)}[/]", classes="compare-title"),
                Static("waiting", id=f"compare-status-{index}", classes="hint"),
                VerticalScroll(Markdown("", id=f"compare-{index}"), classes="compare-body"),
                classes="compare-column",
            )
            columns.mount(column)
        self.busy = "compare"
        self.stop_event = threading.Event()
        self._status("[b]comparing[/]… esc stops")
        self._compare(list(self.compare_sources), prompt, self._settings_copy(), self.stop_event)

    def _get_model(self, path: str, keep: bool, report: Any) -> tuple[Any, bool]:
        """A loaded model for `path` (the chat model, a kept parent, or freshly loaded)."""
        from mergetui.chat.loader import load_for_chat

        if self.loaded is not None and str(self.loaded.path) == path:
            return self.loaded, False
        if path in self.extra and self.extra[path].model is not None:
            return self.extra[path], False
        loaded = load_for_chat(
            path,
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=path in self.trusted,
            allow_bin=path in self.bin_allowed,
            on_progress=lambda stage, _f: report(stage),
        )
        if keep:
            self.extra[path] = loaded
            return loaded, False
        return loaded, True

    def _keep_all(self, sources: list[tuple[str, str]]) -> bool:
        """True when every model fits in memory at once (else they take turns)."""
        from mergetui.chat.memory import available_ram, needed_bytes, weights_bytes

        try:
            total = sum(
                needed_bytes(weights_bytes(path, allow_bin=path in self.bin_allowed))
                for _, path in sources
            )
        except Exception:
            return False
        free = available_ram()
        return free is not None and total < free * 0.8

    @work(thread=True, exclusive=True, group="chat-compare", exit_on_error=False)
    def _compare(
        self, sources: list[tuple[str, str]], prompt: str, settings: Any, stop: Any
    ) -> None:
        from mergetui.chat.generate import generate_reply
        from mergetui.chat.prompt import conversation

        keep = self._keep_all(sources)
        if not keep:
            for path in list(self.extra):
                self.extra.pop(path).unload()
        messages = conversation([], prompt, settings.system_prompt)
        for index, (_name, path) in enumerate(sources):
            if stop.is_set():
                self.post_message(CompareStatus(index, "stopped"))
                continue
            status = partial(self._post_compare_status, index)
            status("loading…")
            try:
                loaded, dispose = self._get_model(path, keep, status)
            except UserError as exc:
                status(f"not loaded: {exc}")
                continue
            except Exception as exc:
                status(f"not loaded: {exc!r}")
                continue
            status("generating…")
            relay = _Coalescer(self, f"compare-{index}", STREAM_INTERVAL)
            try:
                reply = generate_reply(loaded, messages, settings, on_text=relay, stop=stop)
                relay.text = reply.text or "*(no visible text)*"
                relay.flush()
                why = COMPARE_NOTES.get(reply.finish, reply.finish)
                status(f"{reply.tokens} tokens · {reply.tokens_per_second:.1f}/s · {why}")
            except Exception as exc:
                status(f"failed: {exc}")
            finally:
                if dispose:
                    loaded.unload()
        self.post_message(WorkEnded("compare"))

    def _post_compare_status(self, index: int, text: str) -> None:
        self.post_message(CompareStatus(index, text))

    @on(CompareStatus)
    def compare_status(self, event: CompareStatus) -> None:
        for view in self.query(f"#compare-status-{event.column}"):
            if isinstance(view, Static):
                view.update(escape(event.text))

    @on(WorkEnded)
    def work_ended(self, event: WorkEnded) -> None:
        if self.busy == event.kind:
            self.busy = None
        stopped = self.stop_event.is_set()
        self._status(f"{event.kind} {'stopped' if stopped else 'done'}")

    # -- quick check ---------------------------------------------------------------------------

    @on(Input.Submitted, "#check-file")
    @on(Button.Pressed, "#check-run")
    def quick_check(self) -> None:
        if self.busy is not None:
            self.notify(f"wait for the {self.busy} to end, or press esc", severity="warning")
            return
        from mergetui.chat.perplexity import read_text, sample_text

        name = self.query_one("#check-file", Input).value.strip()
        try:
            text, text_name = read_text(name) if name else sample_text()
        except UserError as exc:
            self.notify(str(exc), title="No text", severity="error")
            return
        self._refresh_compare_sources()
        if not self.compare_sources:
            self.notify("no models to check: load one or open a recipe", severity="warning")
            return
        table = self.query_one("#check-table", DataTable)
        table.clear()
        for model_name, _ in self.compare_sources:
            table.add_row(model_name, "", "", "", "waiting")
        self.check_results = [None] * len(self.compare_sources)
        self.busy = "check"
        self.stop_event = threading.Event()
        self._status(f"[b]scoring[/] on the {escape(text_name)}… esc stops")
        self._check(list(self.compare_sources), text, text_name, self.stop_event)

    @work(thread=True, exclusive=True, group="chat-check", exit_on_error=False)
    def _check(self, sources: list[tuple[str, str]], text: str, text_name: str, stop: Any) -> None:
        from mergetui.chat.perplexity import perplexity

        keep = self._keep_all(sources)
        for index, (_name, path) in enumerate(sources):
            if stop.is_set():
                self.post_message(CheckRow(index, "stopped"))
                continue
            self.post_message(CheckRow(index, "loading…"))
            try:
                loaded, dispose = self._get_model(
                    path, keep, lambda stage, i=index: self.post_message(CheckRow(i, stage))
                )
            except Exception as exc:
                self.post_message(CheckRow(index, f"not loaded: {exc}"))
                continue
            try:
                self.post_message(CheckRow(index, "scoring…"))
                result = perplexity(
                    loaded,
                    text,
                    text_name=text_name,
                    cancel=stop,
                    on_progress=lambda f, i=index: self.post_message(
                        CheckRow(i, f"scoring {f:.0%}")
                    ),
                )
                self.post_message(CheckRow(index, "done", result))
            except CancelledError:
                self.post_message(CheckRow(index, "stopped"))
            except Exception as exc:
                self.post_message(CheckRow(index, f"failed: {exc}"))
            finally:
                if dispose:
                    loaded.unload()
        self.post_message(WorkEnded("check"))

    @on(CheckRow)
    def check_row(self, event: CheckRow) -> None:
        table = self.query_one("#check-table", DataTable)
        if event.row >= table.row_count:
            return
        if event.result is not None:
            result = event.result
            self.check_results[event.row] = result
            table.update_cell_at((event.row, 1), f"{result.perplexity:.2f}", update_width=True)
            table.update_cell_at((event.row, 2), str(result.tokens), update_width=True)
            table.update_cell_at((event.row, 3), f"{result.seconds:.1f} s", update_width=True)
        table.update_cell_at((event.row, 4), event.status, update_width=True)

    # -- settings ------------------------------------------------------------------------------

    @on(Input.Changed, "#chat-settings Input")
    def setting_changed(self, event: Input.Changed) -> None:
        key = (event.input.id or "").removeprefix("setting-")
        message = self.query_one("#settings-message", Static)
        value = event.value.strip()
        try:
            if key == "system":
                self.settings.system_prompt = event.value
            elif key == "temperature":
                number = float(value)
                if number < 0:
                    raise ValueError
                self.settings.temperature = number
            elif key == "top_p":
                number = float(value)
                if not 0 < number <= 1:
                    raise ValueError
                self.settings.top_p = number
            elif key == "max_new_tokens":
                number = int(value)
                if number < 1:
                    raise ValueError
                self.settings.max_new_tokens = number
        except ValueError:
            ranges = {
                "temperature": "a number, 0 or more (0 = greedy)",
                "top_p": "a number above 0, at most 1",
                "max_new_tokens": "a whole number, 1 or more",
            }
            message.update(f"[b $error]{key}[/]: {ranges.get(key, '')}; the last good value stays")
            return
        message.update("")

    @on(Select.Changed, "#setting-device")
    @on(Select.Changed, "#setting-dtype")
    def device_changed(self, event: Select.Changed) -> None:
        key = (event.select.id or "").removeprefix("setting-")
        setattr(self, key, str(event.value))
        self.query_one("#settings-message", Static).update(
            f"{key} {event.value}: used by the next model loaded"
        )

    # -- tabs, help and palette ----------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        focus = {
            "chat": "#chat-input",
            "compare": "#compare-input",
            "check": "#check-file",
            "settings": "#setting-system",
        }[tab]
        self.query_one(focus).focus()

    def help_sections(self) -> list[HelpSection]:
        return [
            ("Chat screen", binding_rows(self.app, self.BINDINGS)),
            (
                "Tabs",
                [
                    ("enter", "Chat: send · Compare: send to every model · Quick check: run"),
                ],
            ),
        ]

    def palette_commands(self) -> list[PaletteCommand]:
        entries = [
            ("Chat: Chat tab", "f6 · talk to the loaded model", "tab('chat')"),
            (
                "Chat: Compare tab",
                "f7 · the same prompt to the model and its parents",
                "tab('compare')",
            ),
            ("Chat: Quick check tab", "f8 · perplexity of each model", "tab('check')"),
            (
                "Chat: Settings tab",
                "f9 · system prompt, temperature, top_p, tokens",
                "tab('settings')",
            ),
            ("Chat: stop the reply", "esc", "stop"),
            ("Chat: new conversation", "ctrl+n · clear the conversation", "clear"),
        ]
        return [
            PaletteCommand(title, help_text, partial(self.run_action, action), action)
            for title, help_text, action in entries
        ]


def open_chat(app: Any, source: str) -> None:
    """Switch to the Chat screen and load `source` there."""
    app.pending_chat_model = source
    app.switch_mode("chat")

    def take() -> None:
        if isinstance(app.screen, ChatScreen):
            app.screen._take_pending()

    app.call_after_refresh(take)


def ask_load_model(app: Any) -> None:
    """The palette's "Chat: load a model…" from any screen."""
    app.switch_mode("chat")

    def ask() -> None:
        if isinstance(app.screen, ChatScreen):
            app.screen.action_load_model()

    app.call_after_refresh(ask)

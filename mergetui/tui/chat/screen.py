"""The Chat screen: load a checkpoint, talk to it, compare it with its parents, check its perplexity.

Four tabs (F6..F9), a pane each: Chat (`chat_tab.py`), Compare (`compare_tab.py`), Quick check
(`check_tab.py`) and Settings (`settings_tab.py`). The screen holds what they share, the session:
the loaded model and its permissions, the settings, and the one job (a reply, a compare or a check)
that may run, which escape stops. Loading, generation and scoring run in thread workers
(`mergetui.chat`); the UI only receives messages (`messages.py`). torch and transformers are
imported by those workers, never by the first frame.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Header, Input, ProgressBar, Select, Static, TabbedContent

from mergetui.errors import UserError
from mergetui.tui.chat.chat_tab import ChatTab
from mergetui.tui.chat.check_tab import CheckTab
from mergetui.tui.chat.compare_tab import CompareTab
from mergetui.tui.chat.load_dialog import LoadModelDialog
from mergetui.tui.chat.messages import (
    LoadFailed,
    LoadProgress,
    ModelLoaded,
    WorkEnded,
)
from mergetui.tui.chat.settings_tab import SettingsTab
from mergetui.tui.chat.sources import (
    LoadChoice,
    compare_sources,
    fit_together,
    load_candidates,
)
from mergetui.tui.commands import PaletteCommand, PaletteEntry, binding_commands
from mergetui.tui.footer import KeyFooter
from mergetui.tui.help import HelpSection, binding_rows
from mergetui.tui.mode_screen import ModeScreen
from mergetui.tui.paths_text import document_folder
from mergetui.tui.status_line import StatusLine

# In the app, a .bin checkpoint is allowed by a tick in the load dialog, not a flag.
BIN_FIX = ("pass --allow-bin", "tick 'allow pytorch_model.bin' in the load dialog (ctrl+l)")


class TabSpec(NamedTuple):
    """A tab: its id, its key, its name, the field its key focuses, and what it is for."""

    id: str
    key: str
    name: str
    focus: str
    what: str


TABS = [
    TabSpec("chat", "f6", "Chat", "#chat-input", "talk to the loaded model"),
    TabSpec(
        "compare", "f7", "Compare", "#compare-input", "the same prompt to the model and its parents"
    ),
    TabSpec("check", "f8", "Quick check", "#check-file", "perplexity of each model"),
    TabSpec(
        "settings", "f9", "Settings", "#setting-system", "system prompt, temperature, top_p, tokens"
    ),
]


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
        *(Binding(tab.key, f"tab('{tab.id}')", f"{tab.name} tab", show=False) for tab in TABS),
    ]
    # The palette's entries for these keys (the keys are read from BINDINGS).
    PALETTE = [
        *(PaletteEntry(f"tab('{tab.id}')", f"Chat: {tab.name} tab", tab.what) for tab in TABS),
        PaletteEntry("stop", "Chat: stop the reply"),
        PaletteEntry("clear", "Chat: new conversation", "clear the conversation"),
    ]

    def __init__(self) -> None:
        from mergetui.chat.generate import GenerationSettings

        super().__init__()
        # The session, shared by the tabs.
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
        self.extra: dict[str, Any] = {}  # parents kept loaded for compare / check, by path
        self.compare_sources: list[tuple[str, str]] = []
        self.load_stages: list[tuple[str, float]] = []  # the current (or last) load's steps

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="chat-model")
        with Horizontal(id="chat-loading"):
            yield ProgressBar(total=100, show_eta=False, id="chat-load-bar")
            yield Static(id="chat-load-stage")
        with TabbedContent(id="chat-tabs", initial="chat"):
            yield ChatTab()
            yield CompareTab()
            yield CheckTab()
            yield SettingsTab(self.settings, self.dtype)
        yield StatusLine(id="chat-status")
        yield KeyFooter()

    # What the tabs did last (the tests read them here).

    @property
    def messages(self) -> list[Any]:
        """The conversation (`mergetui.chat.prompt.Message`s)."""
        return self.query_one(ChatTab).messages

    @property
    def last_reply(self) -> Any:
        return self.query_one(ChatTab).last_reply

    @property
    def reply_updates(self) -> int:
        return self.query_one(ChatTab).reply_updates

    @property
    def check_results(self) -> list[Any]:
        return self.query_one(CheckTab).check_results

    def on_mount(self) -> None:
        self.query_one("#chat-loading").display = False
        self._show_model()
        self.refresh_sources()
        self._take_pending()

    def stop_work(self) -> None:
        """The app is quitting: stop a reply, compare or check at its next token, as esc does, so
        the process is not kept alive (its terminal blank) until the reply would have ended."""
        self.stop_event.set()

    def on_unmount(self) -> None:
        self.stop_work()  # however the app closes

    def on_screen_resume(self) -> None:
        self.app.refresh_title()
        self.refresh_sources()
        self._take_pending()

    def _take_pending(self) -> None:
        pending = getattr(self.app, "pending_chat_model", None)
        if not pending:
            return
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

    def status(self, *parts: str) -> None:
        """Parts (markup, most important first), fitted to the width by StatusLine."""
        self.query_one("#chat-status", StatusLine).show(parts)

    def refresh_sources(self) -> None:
        """The models a compare or a check goes to: the loaded one (or the last merge) first,
        then the recipe's models."""
        last = getattr(self.app, "last_merge_output", None)
        self.compare_sources = compare_sources(self.app.document, self.loaded, last)
        self.query_one(CompareTab).show_sources(self.compare_sources)

    # -- the one job -----------------------------------------------------------------------------

    def can_start(self) -> bool:
        """Whether a reply, compare or check may start now (if not, says what is running)."""
        if self.busy is not None:
            self.notify(f"wait for the {self.busy} to end, or press esc", severity="warning")
            return False
        return True

    def begin(self, kind: str, status: str) -> threading.Event:
        """A `kind` job starts: the screen is busy until it ends; the event stops it."""
        self.busy = kind
        self.stop_event = threading.Event()
        self.status(status)
        return self.stop_event

    @on(WorkEnded)
    def work_ended(self, event: WorkEnded) -> None:
        if self.busy == event.kind:
            self.busy = None
        stopped = self.stop_event.is_set()
        self.status(f"{event.kind} {'stopped' if stopped else 'done'}")

    def settings_copy(self) -> Any:
        """The settings as they are now (a worker keeps them while they are edited)."""
        return replace(self.settings)

    def action_stop(self) -> None:
        if self.busy is None:
            return
        self.stop_event.set()
        self.status("[b $warning]stopping[/]…")

    def action_clear(self) -> None:
        if self.busy == "reply":
            self.stop_event.set()
        self.query_one(ChatTab).clear()
        self.status("conversation cleared")

    # -- models --------------------------------------------------------------------------------

    def get_model(self, path: str, keep: bool, report: Any) -> tuple[Any, bool]:
        """A loaded model for `path` (the chat model, a kept parent, or freshly loaded), and
        whether the caller must unload it when done."""
        if self.loaded is not None and str(self.loaded.path) == path:
            return self.loaded, False
        if path in self.extra and self.extra[path].model is not None:
            return self.extra[path], False
        choice = LoadChoice(path, path in self.trusted, path in self.bin_allowed)
        loaded = choice.load(self.device, self.dtype, on_progress=lambda stage, _f: report(stage))
        if keep:
            self.extra[path] = loaded
            return loaded, False
        return loaded, True

    def models_in_turn(
        self,
        sources: list[tuple[str, str]],
        keep: bool,
        stop: threading.Event,
        report: Callable[[int, str], Any],
        describe: Callable[[Exception], str] = str,
    ) -> Iterator[tuple[int, Any]]:
        """Each source's model in turn (in a worker's thread): kept loaded with `keep` (they all
        fit in memory), else loaded for its turn and freed after it. Once stopped, the rest report
        "stopped"; a model that does not load reports why (`describe`d) and is passed over."""
        for index, (_name, path) in enumerate(sources):
            if stop.is_set():
                report(index, "stopped")
                continue
            report(index, "loading…")
            try:
                loaded, dispose = self.get_model(path, keep, partial(report, index))
            except Exception as exc:
                report(index, f"not loaded: {describe(exc)}")
                continue
            try:
                yield index, loaded
            finally:
                if dispose:
                    loaded.unload()

    def keep_all(self, sources: list[tuple[str, str]]) -> bool:
        """True when every model fits in memory at once (else they take turns)."""
        return fit_together(sources, self.bin_allowed)

    def action_load_model(self) -> None:
        last = getattr(self.app, "last_merge_output", None)
        self.app.push_screen(
            LoadModelDialog(
                load_candidates(self.app.document, last), self.trusted, self.bin_allowed
            ),
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
        self._load(choice, self.device, self.dtype, document_folder(self.app.document))

    @work(thread=True, exclusive=True, group="chat-load", exit_on_error=False)
    def _load(self, choice: LoadChoice, device: str, dtype: str, base_dir: Path) -> None:
        previous, self.loaded = self.loaded, None
        if previous is not None:
            previous.unload()
        try:
            loaded = choice.load(
                device,
                dtype,
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
        loaded = event.loaded
        self.model_loading = False
        self.loaded = loaded
        self.query_one("#chat-loading").display = False
        self._show_model()
        self.refresh_sources()
        # Compare and Quick check load it again by its folder: the same permissions apply.
        if event.choice.trust_remote_code:
            self.trusted.add(str(loaded.path))
        if event.choice.allow_bin:
            self.bin_allowed.add(str(loaded.path))
        self.status(
            f"loaded in {loaded.seconds:.1f} s",
            f"{loaded.dtype} ({escape(loaded.dtype_reason)})",
        )
        self.query_one(ChatTab).greet(loaded)
        if loaded.message:
            self.notify(loaded.message, severity="warning", timeout=8)
        self.notify(f"loaded {loaded.name}", timeout=3)
        self.query_one("#chat-input", Input).focus()

    @on(LoadFailed)
    def load_failed(self, event: LoadFailed) -> None:
        self.model_loading = False
        self.query_one("#chat-loading").display = False
        self._show_model()
        self.status(f"[b $error]not loaded[/]: {escape(event.error)}")
        self.notify(event.error, title="Model not loaded", severity="error", timeout=10)

    # -- tabs, help and palette ----------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one(next(spec.focus for spec in TABS if spec.id == tab)).focus()

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
        return binding_commands(self, self.PALETTE, self.BINDINGS)


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

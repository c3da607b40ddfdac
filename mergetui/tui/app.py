"""The mergetui app: five screens (F2..F5, F10), the recipe document, files, themes and settings.

Start-up stays light: nothing here imports torch or transformers (the checkpoint headers are read
without them, in a worker), so the first frame appears at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from mergetui.editing.document import RecipeDocument
from mergetui.errors import UserError
from mergetui.paths import user_themes_dir
from mergetui.resources import themes_dir
from mergetui.settings import DEFAULT_THEME, AppConfig
from mergetui.tui.chat.screen import ChatScreen, ask_load_model, open_chat
from mergetui.tui.checkpoints.screen import CheckpointsScreen
from mergetui.tui.commands import (
    MergeTuiCommands,
    PaletteCommand,
    PaletteEntry,
    binding_commands,
    binding_keys,
)
from mergetui.tui.dialogs.confirm import ConfirmDialog, ConfirmQuit
from mergetui.tui.dialogs.paths import TextPrompt
from mergetui.tui.help import HelpScreen, active_sections
from mergetui.tui.recipe.screen import RecipeScreen
from mergetui.tui.run.messages import ChatWith
from mergetui.tui.run.screen import RunScreen, start_merge
from mergetui.tui.search.apply import apply_best
from mergetui.tui.search.messages import ApplyBest
from mergetui.tui.search.screen import SearchScreen
from mergetui.tui.themes import Heatmap, LoadedTheme, default_heatmap, load_themes

SCREENS: dict[str, tuple[str, str]] = {
    # mode: (key, title)
    "checkpoints": ("f2", "Checkpoints"),
    "recipe": ("f3", "Recipe"),
    "run": ("f4", "Run"),
    "chat": ("f5", "Chat"),
    "search": ("f10", "Search"),
}
# Screens whose key the footer leaves out: at 80 columns there is no room for it after the other
# four (F1 and the palette list it, as they list every key).
FOOTER_HIDDEN = {"search"}
MODIFIED_MARK = "[modified]"
T = TypeVar("T")


class MergeTuiApp(App):
    """Build merge recipes in a terminal: checkpoints, recipe and layer grid, run, chat, search."""

    TITLE = "mergetui"
    CSS_PATH = "app.tcss"
    MODES = {
        "checkpoints": CheckpointsScreen,
        "recipe": RecipeScreen,
        "run": RunScreen,
        "chat": ChatScreen,
        "search": SearchScreen,
    }
    DEFAULT_MODE = "recipe"
    COMMANDS = App.COMMANDS | {MergeTuiCommands}
    # The palette's entries for the app's actions: (action, title, what it does); the keys come
    # from BINDINGS.
    PALETTE = [
        PaletteEntry("save", "Save recipe", "write the recipe as TOML"),
        PaletteEntry("save_as", "Save recipe as…", "write the recipe to another TOML file"),
        PaletteEntry("open", "Open recipe…", "a TOML recipe or a mergekit YAML config"),
        PaletteEntry("new_recipe", "New recipe", "start from an empty recipe"),
        PaletteEntry("export_yaml", "Export mergekit YAML…", "write a config for mergekit-yaml"),
        PaletteEntry(
            "push_to_hub",
            "Push a folder to the Hub…",
            "upload a merged model with its card (needs HF_TOKEN)",
        ),
        PaletteEntry("help", "Help: keys of this screen", ""),
        PaletteEntry(
            "quit", "Quit", "asks first if there are unsaved changes or a merge is running"
        ),
    ]
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("question_mark", "help", "Help", show=False),
        *(
            Binding(key, f"switch_mode('{mode}')", title, show=mode not in FOOTER_HIDDEN)
            for mode, (key, title) in SCREENS.items()
        ),
        Binding("ctrl+s", "save", "Save", show=False),  # shown by the Recipe screen's footer
        Binding("ctrl+o", "open", "Open recipe", show=False),
        # Quit stays out of the footer (F1 and the palette list it): at 80 columns the screens'
        # own keys need the room.
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False),
    ]

    def __init__(
        self,
        document: RecipeDocument | None = None,
        *,
        initial_screen: str = "recipe",
        config: AppConfig | None = None,
        models_dirs: Sequence[str | Path] = (),
    ) -> None:
        if initial_screen not in self.MODES:
            raise UserError(
                f"no screen called {initial_screen!r}", fix=f"use one of {', '.join(self.MODES)}"
            )
        self.document = document or RecipeDocument.new()
        self.config = config or AppConfig.load()
        self.initial_screen = initial_screen
        # Folders of checkpoints the Checkpoints screen lists in this session only, beside the
        # remembered ones (`mergetui demo` passes its folder); never written to the settings.
        self.session_models_dirs = [str(Path(d).expanduser().resolve()) for d in models_dirs]
        super().__init__()
        self.themes: dict[str, LoadedTheme] = {}
        # Run and Chat: the last finished merge, and a checkpoint the Chat screen should load.
        self.last_merge_output: str | None = None
        self.pending_chat_model: str | None = None
        self.pending_chat_options: dict[str, Any] | None = None  # `mergetui chat`'s flags
        self._quit_merge_dialog: ConfirmDialog | None = None  # open while asking
        self.theme_errors: list[str] = []
        self._load_themes()
        wanted = self.config.theme
        self._missing_theme = wanted if wanted not in self.available_themes else None
        self.theme = wanted if self._missing_theme is None else DEFAULT_THEME

    # -- themes and settings -------------------------------------------------------------------

    def _load_themes(self) -> None:
        found = load_themes(themes_dir(), user_themes_dir())
        self.theme_errors = found.errors
        for name, loaded in found.themes.items():
            self.register_theme(loaded.theme)
            self.themes[name] = loaded

    @property
    def heatmap(self) -> Heatmap:
        """The grid's colours for the current theme (Textual's own themes get a default)."""
        loaded = self.themes.get(self.theme)
        return loaded.heatmap if loaded else default_heatmap(self.current_theme)

    def save_config(self) -> None:
        try:
            self.config.save()
        except OSError as exc:
            self.notify(f"could not save settings: {exc}", severity="warning")

    def _theme_changed(self, theme: Any) -> None:
        if self.config.theme != self.theme:
            self.config.theme = self.theme
            self.save_config()

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        for error in self.theme_errors:
            self.notify(f"theme skipped: {error}", severity="warning", timeout=8)
        if self._missing_theme:
            self.notify(
                f"theme {self._missing_theme!r} is not installed; using {DEFAULT_THEME}",
                severity="warning",
            )
        self.switch_mode(self.initial_screen)
        self.refresh_title()

    # -- title ---------------------------------------------------------------------------------

    def refresh_title(self) -> None:
        """The header names the file, and says when it has unsaved changes."""
        mark = f" {MODIFIED_MARK}" if self.document.modified else ""
        self.sub_title = f"{self.document.display_name}{mark}"

    def _recipe_screens(self) -> Iterable[RecipeScreen]:
        for stack in self._screen_stacks.values():
            for screen in stack:
                if isinstance(screen, RecipeScreen):
                    yield screen

    def document_replaced(self) -> None:
        for screen in self._recipe_screens():
            screen.reload_document()
        self.refresh_title()

    def recipe_edited(self) -> None:
        """Another screen changed the recipe through the document (e.g. Checkpoints › add)."""
        for screen in self._recipe_screens():
            screen.recipe_changed()
        self.refresh_title()

    # -- actions -------------------------------------------------------------------------------

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        screen = self.screen
        sections = screen.help_sections() if hasattr(screen, "help_sections") else []
        everywhere = [s for s in active_sections(screen) if s[0] == "Everywhere"]
        sections = [*sections, *everywhere] if sections else active_sections(screen)
        title = SCREENS.get(self.current_mode, ("", self.current_mode.title()))[1]
        self.push_screen(HelpScreen(title, sections))

    def _running_merges(self) -> list[RunScreen]:
        return [
            screen
            for stack in self._screen_stacks.values()
            for screen in stack
            if isinstance(screen, RunScreen) and screen.running
        ]

    def merge_running(self) -> bool:
        """Whether the Run screen has a merge in progress (quitting would cancel it)."""
        return bool(self._running_merges())

    def _leave(self) -> None:
        """Quit; a running merge is told to stop first (it removes its temporary folder), and so
        is the Chat screen's reply, compare or check (else the process, its terminal blank, waits
        for the reply to end)."""
        for screen in self._running_merges():
            if screen.cancel_event is not None:
                screen.cancel_event.set()
        for stack in self._screen_stacks.values():
            for screen in stack:
                if isinstance(screen, ChatScreen):
                    screen.stop_work()
                elif isinstance(screen, SearchScreen):
                    screen.stop_search()  # after its candidate; a later start resumes it
        self.exit()

    async def action_quit(self) -> None:
        if isinstance(self.screen, ConfirmQuit) or (
            self._quit_merge_dialog is not None and self.screen is self._quit_merge_dialog
        ):
            return  # already asking
        if self.merge_running():
            # Quitting stops the merge, so ask first, as `c` does.
            self._quit_merge_dialog = ConfirmDialog(
                "Quit and cancel the merge?",
                "A merge is running. Quitting stops it at the next tensor and removes its "
                "temporary folder: nothing is written.",
                yes="Quit",
                no="Keep merging",
            )
            self.push_screen(self._quit_merge_dialog, self._quit_merge_answer)
            return
        self._quit_unless_unsaved()

    @on(ChatWith)
    def _chat_with(self, message: ChatWith) -> None:
        """The Run screen's "chat with it": the Chat screen loads the finished merge."""
        open_chat(self, message.source)

    @on(ApplyBest)
    def _apply_best(self, message: ApplyBest) -> None:
        """The Search screen's "apply the best": its values into the recipe, one undo step."""
        changed = self._attempt(
            "Not applied",
            partial(apply_best, self.document, message.recipe, message.parameters, message.label),
        )
        if changed is None:
            return
        if not changed:
            self.notify("the recipe already has the best values", timeout=4)
            return
        self.recipe_edited()
        self.notify(
            f"{message.label}: {changed} setting(s) changed · ctrl+z undoes · F4 then r merges",
            timeout=6,
        )

    def merge_ended(self, outcome: str) -> None:
        """The Run screen's merge ended: "Quit and cancel the merge?" no longer asks anything, so
        it closes (as the cancel question does), and ctrl+q now quits without it."""
        dialog = self._quit_merge_dialog
        if dialog is None or self.merge_running():
            return
        if self.screen is dialog:
            dialog.dismiss(None)
        self._quit_merge_dialog = None
        what = "finished" if outcome == "finished" else f"ended ({outcome})"
        self.notify(f"the merge {what}: nothing to cancel any more · ctrl+q quits", timeout=6)

    def _quit_merge_answer(self, yes: bool | None) -> None:
        self._quit_merge_dialog = None
        if yes:
            self._quit_unless_unsaved()

    def _quit_unless_unsaved(self) -> None:
        if not self.document.modified:
            self._leave()
            return
        self.push_screen(ConfirmQuit(self.document.display_name), self._quit_answer)

    def _quit_answer(self, answer: str | None) -> None:
        if answer == "discard":
            self._leave()
        elif answer == "save":
            self.save_document(then=self._leave)

    def action_save(self) -> None:
        self.save_document()

    def action_save_as(self) -> None:
        self.save_document(ask=True)

    def save_document(self, *, ask: bool = False, then: Callable[[], Any] | None = None) -> None:
        """Save TOML, asking for a path when the recipe has none (or when asked to)."""
        if self.document.path is None or ask:
            self.push_screen(
                TextPrompt(
                    "Save recipe as (TOML)",
                    str(self.document.suggested_path()),
                    paths=True,
                    hint="a .toml path · enter saves · escape cancels",
                ),
                partial(self._save_to, then=then),
            )
            return
        self._save_to(None, then=then)

    def _save_to(self, path: str | None, then: Callable[[], Any] | None = None) -> None:
        if path is None and self.document.path is None:
            return
        saved = self._attempt("Not saved", partial(self.document.save, path))
        if saved is None:
            return
        self.notify(f"saved {saved}", timeout=3)
        self.refresh_title()
        if then is not None:
            then()

    def _attempt(self, title: str, do: Callable[[], T]) -> T | None:
        """`do()`, or None after saying why it failed (a file that could not be read or written)."""
        try:
            return do()
        except (UserError, OSError) as exc:
            self.notify(str(exc), title=title, severity="error", timeout=8)
            return None

    def action_export_yaml(self) -> None:
        suggestion = self.document.suggested_path().with_suffix(".yaml")
        self.push_screen(
            TextPrompt("Export as mergekit YAML", str(suggestion), paths=True), self._export_to
        )

    def _export_to(self, path: str | None) -> None:
        if path is None:
            return
        written = self._attempt("Not exported", partial(self.document.export_yaml, path))
        if written is None:
            return
        self.notify(f"exported {written} (mergekit-yaml {written.name} OUT)", timeout=5)

    def action_open(self) -> None:
        self._after_unsaved_check(self._ask_open)

    def _ask_open(self) -> None:
        start = self.document.path.parent if self.document.path else Path.cwd()
        self.push_screen(
            TextPrompt("Open recipe (TOML or mergekit YAML)", f"{start}/", paths=True),
            self._open_path,
        )

    def _open_path(self, path: str | None) -> None:
        if path is None:
            return
        document = self._attempt("Not opened", partial(RecipeDocument.open, path))
        if document is None:
            return
        self.document = document
        self.document_replaced()
        self.notify(f"opened {path}", timeout=3)

    def action_new_recipe(self) -> None:
        self._after_unsaved_check(self._new_recipe)

    def _new_recipe(self) -> None:
        self.document = RecipeDocument.new()
        self.document_replaced()

    def _after_unsaved_check(self, proceed: Callable[[], None]) -> None:
        """Run `proceed` once unsaved changes are saved or knowingly dropped."""
        if not self.document.modified:
            proceed()
            return

        def answered(answer: str | None) -> None:
            if answer == "discard":
                proceed()
            elif answer == "save":
                self.save_document(then=proceed)

        self.push_screen(ConfirmQuit(self.document.display_name), answered)

    def action_theme(self, name: str) -> None:
        self.theme = name
        self.notify(f"theme {name}", timeout=2)

    def action_push_to_hub(self, folder: str = "") -> None:
        """Publish a merged folder on the Hub (the Run screen calls this after a merge)."""
        from mergetui.tui.push_dialog import PushDialog

        self.push_screen(PushDialog(folder))

    # -- command palette -----------------------------------------------------------------------

    def palette_commands(self, screen: Screen) -> list[PaletteCommand]:
        """Everything the app can do from `screen`, for the command palette."""
        commands = [
            PaletteCommand(
                f"Go to {title}",
                f"{binding_keys(self.BINDINGS, action)} · the {title} screen",
                partial(self.switch_mode, mode),
                action,
            )
            for mode, (_key, title) in SCREENS.items()
            for action in [f"switch_mode('{mode}')"]
        ]
        commands += binding_commands(self, self.PALETTE, self.BINDINGS, run=self._run_action_now)
        for name in sorted(self.available_themes):
            loaded = self.themes.get(name)
            description = loaded.description if loaded else "Textual built-in theme"
            commands.append(
                PaletteCommand(
                    f"Theme: {name}",
                    description,
                    partial(self.action_theme, name),
                    f"theme('{name}')",
                )
            )
        commands += self._run_and_chat_commands()
        if hasattr(screen, "palette_commands"):
            commands += screen.palette_commands()
        return commands

    def _run_action_now(self, action: str) -> Any:
        """A palette entry of the app's: run its action method at once."""
        return getattr(self, f"action_{action}")()

    def _run_and_chat_commands(self) -> list[PaletteCommand]:
        """Run and chat entries every screen's palette has (their keys work on those screens)."""
        return [
            *binding_commands(
                self,
                [PaletteEntry("run_merge", "Run merge", "merge the open recipe now")],
                RunScreen.BINDINGS,
                where="Run screen",
                run=lambda _action: start_merge(self),
            ),
            *binding_commands(
                self,
                [
                    PaletteEntry(
                        "load_model",
                        "Chat: load a model…",
                        "a merge, a parent or any checkpoint folder",
                    )
                ],
                ChatScreen.BINDINGS,
                where="Chat screen",
                run=lambda _action: ask_load_model(self),
            ),
        ]

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        # Our provider covers quitting and themes; keep Textual's extras (keys panel, screenshot).
        for command in super().get_system_commands(screen):
            if command.title not in ("Quit", "Theme"):
                yield command


def run_app(
    recipe_path: str | Path | None = None,
    screen: str | None = None,
    chat_model: str | None = None,
    chat_options: dict[str, Any] | None = None,
    models_dirs: Sequence[str | Path] = (),
) -> int:
    """Open the app (on a recipe file if given); returns the exit code. Raises UserError early.

    `chat_model` opens the Chat screen with that checkpoint loading, with `chat_options` (device,
    dtype, allow_bin, trust_remote_code: `mergetui chat`'s flags).
    """
    document = RecipeDocument.open(recipe_path) if recipe_path is not None else RecipeDocument.new()
    app = MergeTuiApp(
        document,
        initial_screen="chat" if chat_model else screen or "recipe",
        models_dirs=models_dirs,  # listed on the Checkpoints screen, not remembered
    )
    app.pending_chat_model = chat_model
    app.pending_chat_options = chat_options
    app.run()
    return app.return_code or 0

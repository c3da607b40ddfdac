"""Screens whose contents other parts of mergetui deliver: Checkpoints (issue 5), Run and Chat (issue 6).

They hold their place in the app now (a key, a footer entry, a line in the help) and say plainly what
they will do and what to use meanwhile, rather than pretending to work.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Center, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Markdown

CHECKPOINTS_TEXT = """\
# Checkpoints

**Coming in issue 5.** This screen will browse checkpoints: local folders, the Hugging Face cache and
the Hub (search, model info, download), show each one's architecture, layer count, dtype and size, and
add a checkpoint to the recipe with one key.

Meanwhile:

- add models on the **Recipe** screen (F3 › Setup › `a`), by local folder or Hub id;
- inspect a checkpoint from the shell: `mergetui inspect PATH`.
"""

RUN_TEXT = """\
# Run

**Coming in issue 6.** This screen will run the recipe's merge in the background: progress per tensor
and overall, memory use, a log, cancel, and a history of past merges to reload.

Meanwhile, merge from the shell with the same recipe: `mergetui merge recipe.toml`
(save it first with ctrl+s).
"""

CHAT_TEXT = """\
# Chat

**Coming in issue 6.** This screen will load a merged checkpoint and chat with it (tokens streamed as
they are generated, using the model's chat template), with a quick perplexity check, to see whether a
merge still makes sense.
"""


class PlaceholderScreen(Screen):
    """A screen that explains what it will hold."""

    TEXT = ""

    DEFAULT_CSS = """
    PlaceholderScreen VerticalScroll { align-horizontal: center; }
    PlaceholderScreen Markdown { width: 90; max-width: 100%; margin: 1 2; }
    """

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            with Center():
                yield Markdown(self.TEXT)
        yield Footer(compact=True)


class CheckpointsScreen(PlaceholderScreen):
    TEXT = CHECKPOINTS_TEXT


class RunScreen(PlaceholderScreen):
    TEXT = RUN_TEXT


class ChatScreen(PlaceholderScreen):
    TEXT = CHAT_TEXT

"""The Checkpoints screen's Hub search: its order and tag filters, the search worker, its label.

Enter in the filter box searches (in a worker, so the screen never waits); `h` changes the Hub's
order and `t` / `m` the tag filters, each asking again when a search was made. The results are
kept here as remote rows; the screen joins them to the local ones when `HubAnswered` arrives.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.widgets import Static

from mergetui.checkpoints.sources import CheckpointRow
from mergetui.errors import UserError
from mergetui.tui.checkpoints.messages import HubAnswered
from mergetui.tui.workers import reply

HUB_SORTS = ("downloads", "likes", "trending", "created")
HUB_LIMIT = 50
OFFLINE_MESSAGE = "Hub: offline (HF_HUB_OFFLINE=1), local parts work"


class HubSearch(Static):
    """The label beside the filter box ("Hub: by downloads · all tags"), and the search it names."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows: list[CheckpointRow] = []
        self.sort = "downloads"
        self.tags: list[str] = []
        self.query: str | None = None  # the last search, None before any
        self.message = ""

    def on_mount(self) -> None:
        self.refresh_label()

    def refresh_label(self) -> None:
        from mergetui.checkpoints.hub import is_offline

        tags = "+".join(self.tags) if self.tags else "all tags"
        state = "offline" if is_offline() else f"by {self.sort} · {tags}"
        self.update(f"Hub: {state}")

    def search(self, query: str) -> None:
        """Ask the Hub (in a worker); the results join the list as remote rows."""
        from mergetui.checkpoints.hub import offline_reason

        reason = offline_reason()
        if reason:
            self.message = OFFLINE_MESSAGE
            self.notify(reason, title="Hub offline", severity="warning")
            self.post_message(HubAnswered(found=False))
            return
        self.query = query
        self.message = f"Hub: searching {query!r}…" if query else "Hub: listing top models…"
        self.post_message(HubAnswered(found=False))
        self._search(query, self.sort, list(self.tags))

    @work(thread=True, exclusive=True, group="ck-search", exit_on_error=False)
    def _search(self, query: str, sort: str, tags: list[str]) -> None:
        from mergetui.checkpoints.hub import search_models
        from mergetui.checkpoints.sources import hub_row

        try:
            found = search_models(query, sort=sort, limit=HUB_LIMIT, filters=tags)
            reply(self, self._searched, query, [hub_row(m) for m in found], None)
        except UserError as exc:
            reply(self, self._searched, query, None, exc)
        except Exception as exc:
            reply(self, self._searched, query, None, UserError(f"Hub search failed: {exc}"))

    def _searched(
        self, query: str, rows: list[CheckpointRow] | None, error: UserError | None
    ) -> None:
        if not self.is_mounted or query != self.query:
            return
        from mergetui.checkpoints.hub import HubOffline

        if error is not None:
            unreachable = isinstance(error, HubOffline)
            self.message = "Hub: unreachable, local parts work" if unreachable else "Hub: error"
            self.notify(str(error), title="Hub", severity="error", timeout=8)
            self.post_message(HubAnswered(found=False))
            return
        assert rows is not None
        self.rows = rows
        what = f"{query!r}" if query else "top models"
        self.message = f"Hub: {len(rows)} for {what}"
        self.post_message(HubAnswered(found=True))

    def next_sort(self) -> None:
        """The Hub's next order (`h`); a search made is asked again."""
        self.sort = HUB_SORTS[(HUB_SORTS.index(self.sort) + 1) % len(HUB_SORTS)]
        self.refresh_label()
        self.notify(f"Hub order: {self.sort}", timeout=2)
        self._again()

    def toggle_tag(self, tag: str) -> None:
        """A tag filter on or off (`t`, `m`); a search made is asked again."""
        if tag in self.tags:
            self.tags.remove(tag)
        else:
            self.tags.append(tag)
        self.refresh_label()
        self.notify(f"Hub filter: {'+'.join(self.tags) or 'none'}", timeout=2)
        self._again()

    def _again(self) -> None:
        if self.query is not None:
            self.search(self.query)

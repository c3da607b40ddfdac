"""Handing a thread worker's result back to the UI thread, for every screen and dialog."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.dom import DOMNode


def reply(node: DOMNode, callback: Callable[..., Any], *args: Any) -> None:
    """Call `callback(*args)` on the UI thread, unless the app closed while the worker ran."""
    try:
        node.app.call_from_thread(callback, *args)
    except RuntimeError:  # the app (and its loop) ended first: nobody is left to tell
        pass

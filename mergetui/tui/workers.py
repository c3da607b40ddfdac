"""What every screen's thread workers share: handing a result back to the UI thread, and running
the heavy ones (a merge, a search) at a lower CPU priority than the UI."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from textual.dom import DOMNode


def reply(node: DOMNode, callback: Callable[..., Any], *args: Any) -> None:
    """Call `callback(*args)` on the UI thread, unless the app closed while the worker ran."""
    try:
        node.app.call_from_thread(callback, *args)
    except RuntimeError:  # the app (and its loop) ended first: nobody is left to tell
        pass


# Heavy workers run at a lower CPU priority than the UI (Linux: nice is per thread and inherited by
# the threads they start), so keys stay quick even when a merge or a search has every core.
BACKGROUND_NICENESS = 10


def lower_priority() -> None:
    """Give the calling (worker) thread, and every thread it starts, a lower CPU priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass

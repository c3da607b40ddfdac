"""How the CLI's long commands stop: a signal sets the `threading.Event` the core checks.

A merge stops at the next chunk on Ctrl-C, SIGTERM or SIGHUP and cleans up (`install_stop_signals`);
an upload stops at the first Ctrl-C and a second one interrupts at once (`install_sigint`); a
download stops at once, even while the Hub is silent (`interrupt_at_once`). Signals arrive only in
the main thread: elsewhere each of these installs nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

# Signals that stop a merge the way Ctrl-C does (those this platform has).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def install_stop_signals(cancel: threading.Event, received: list[int]) -> dict[int, Any]:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP ask the engine to stop at the next chunk; it removes
    its temporary folder and the command exits with 128 + the signal's number (130, 143, 129).
    A second signal while it stops changes nothing: interrupting the clean-up would leave the
    temporary folder behind. (Only kill -9 does; the next merge into that output removes it.)"""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        if not received:
            received.append(signum)
        cancel.set()

    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers `install_stop_signals` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def install_sigint(cancel: threading.Event) -> Any:
    """First Ctrl-C sets `cancel`; a second one interrupts at once (`mergetui push`). Returns
    the handler `restore_sigint` puts back (None off the main thread, where signals do not arrive)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    return signal.signal(signal.SIGINT, handler)


def restore_sigint(previous: Any) -> None:
    """Put back the handler `install_sigint` replaced."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def interrupt_at_once(cancel: threading.Event) -> Callable[[], None]:
    """Ctrl-C interrupts the download where it is (a socket read included), not at the next
    chunk: a silent server would otherwise keep the first Ctrl-C waiting for its timeout.
    Returns what puts the previous handler back (nothing to do off the main thread, where
    signals do not arrive)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        cancel.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)

    def restore() -> None:
        # None: the previous handler was not set from Python; Python's own is the closest.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)

    return restore

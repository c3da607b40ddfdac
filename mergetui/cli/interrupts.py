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


def run_with_tensor_bar(
    run: Callable[[Callable[[Any], None], threading.Event], Any],
    *,
    err: Any,
    total_bytes: int,
    tensor_count: int,
    verb: str,
    verb_on_device: str | None = None,
) -> tuple[Any, int]:
    """Run `run(on_event, cancel)` (a merge or an MoE assembly) under a progress bar of bytes and
    tensors, stopped cleanly by Ctrl-C, SIGTERM and SIGHUP: (its result, 0), or (None,
    128 + the signal) once it was cancelled and said so. The bar reads `verb`, then
    `verb_on_device` (default `verb`) + " on DEVICE" once the engine has placed the work."""
    from rich.markup import escape

    from mergetui.cli.output import bytes_progress
    from mergetui.errors import CancelledError
    from mergetui.merge.events import Notice, PlanReady, TensorDone

    cancel = threading.Event()
    # The elapsed column only where it fits: at 80 columns it would wrap the line.
    progress = bytes_progress("tensors", err, elapsed=err.width >= 100)
    task = progress.add_task(verb, total=total_bytes, tensors=f"0/{tensor_count} tensors")
    done = [0]  # tensors finish in any order: count them (an event's index is its plan position)

    def on_event(event: Any) -> None:
        if isinstance(event, TensorDone):
            done[0] += 1
            progress.update(
                task,
                completed=event.bytes_written,
                tensors=f"{done[0]}/{event.tensor_count} tensors",
            )
        elif isinstance(event, PlanReady):
            progress.update(task, description=f"{verb_on_device or verb} on {event.device}")
        elif isinstance(event, Notice):
            progress.console.print(f"[yellow]note:[/] {escape(event.message)}", soft_wrap=True)

    received: list[int] = []
    previous = install_stop_signals(cancel, received)
    try:
        with progress:
            return run(on_event, cancel), 0
    except CancelledError:
        try:
            err.print("[yellow]Cancelled:[/] nothing was written.")
        except OSError:  # SIGHUP: the terminal may be gone
            pass
        return None, 128 + (received[0] if received else signal.SIGINT)
    finally:
        restore_signals(previous)

"""Helpers the Pilot tests of the Run screen and of quitting share."""

from __future__ import annotations

import threading

import pytest


def gate_the_engine(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold the real engine at its first finished tensor until the test sets `release`;
    `reached` is set once it is held, so the merge is surely running."""
    reached, release = threading.Event(), threading.Event()
    from mergetui.merge import runner

    real = runner.run_merge

    def held(plan, *, on_event=None, cancel=None, force=False):
        def listener(event):
            if type(event).__name__ == "TensorDone" and not reached.is_set():
                reached.set()
                assert release.wait(30)
            on_event(event)

        return real(plan, on_event=listener, cancel=cancel, force=force)

    monkeypatch.setattr(runner, "run_merge", held)
    return reached, release


async def wait_reached(pilot, reached: threading.Event) -> None:
    """Let the app run until the gated engine holds its first tensor (fail after ~10 s)."""
    for _ in range(200):
        if reached.is_set():
            return
        await pilot.pause(0.05)
    raise AssertionError("the engine never finished a tensor")


async def on_screen(app, pilot, key: str, kind: type):
    """Let the app settle (its workers done), press `key` and return the screen it shows."""
    await pilot.pause(0.4)
    await app.workers.wait_for_complete()
    await pilot.press(key)
    await pilot.pause()
    assert isinstance(app.screen, kind)
    return app.screen


async def on_run_screen(app, pilot):
    from mergetui.tui.run.screen import RunScreen

    return await on_screen(app, pilot, "f4", RunScreen)


async def until_done(app, pilot, screen, tries: int = 400) -> None:
    """Let the app run until the Run screen's run ends (fail after `tries` x 0.05 s)."""
    for _ in range(tries):
        await app.workers.wait_for_complete()
        await pilot.pause(0.05)
        if not screen.running:
            return
    raise AssertionError("the run did not end")


def log_text(screen) -> str:
    """The Run screen's Log tab as plain text."""
    return "\n".join(strip.text for strip in screen.query_one("#run-log").lines)

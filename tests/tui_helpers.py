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

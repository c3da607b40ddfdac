"""mergetui.malloc: the one place that sets glibc's malloc thresholds."""

from __future__ import annotations

import ctypes
import sys

import pytest

from mergetui.malloc import set_malloc_thresholds


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


def test_sets_the_mmap_and_trim_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _FakeLibc()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    assert set_malloc_thresholds(1 << 18)
    assert set_malloc_thresholds(32 << 20, 64 << 20)
    # glibc's malloc.h: M_MMAP_THRESHOLD is -3, M_TRIM_THRESHOLD -1
    assert libc.calls == [(-3, 1 << 18), (-3, 32 << 20), (-1, 64 << 20)]


def test_does_nothing_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(name: str) -> None:
        raise OSError("no such library")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert not set_malloc_thresholds(1 << 18)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not set_malloc_thresholds(1 << 18)

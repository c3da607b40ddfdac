"""The preset curves, by name, over a run of cells."""

from __future__ import annotations

import math

import pytest

from mergetui.editing.cells import GridError
from mergetui.editing.presets import preset_values


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("flat", [1, 1, 1, 1, 1]),
        ("ramp_up", [0, 0.25, 0.5, 0.75, 1]),
        ("ramp_down", [1, 0.75, 0.5, 0.25, 0]),
        ("v", [1, 0.5, 0, 0.5, 1]),
        ("lambda", [0, 0.5, 1, 0.5, 0]),
        (
            "cosine",
            [0, (1 - math.cos(math.pi / 4)) / 2, 0.5, (1 - math.cos(3 * math.pi / 4)) / 2, 1],
        ),
        ("smoothstep", [0, 0.15625, 0.5, 0.84375, 1]),
    ],
)
def test_preset_curves(name: str, expected: list[float]) -> None:
    assert preset_values(name, 5, 0.0, 1.0) == pytest.approx(expected, abs=1e-6)


def test_step_and_random_presets() -> None:
    assert preset_values("step", 5, 0.1, 0.9, layers=[10, 11, 12, 13, 14], at_layer=12) == [
        0.1,
        0.1,
        0.9,
        0.9,
        0.9,
    ]
    with pytest.raises(GridError):
        preset_values("step", 3, 0, 1)
    first = preset_values("random", 20, 0.2, 0.4, seed=7)
    assert first == preset_values("random", 20, 0.2, 0.4, seed=7)
    assert first != preset_values("random", 20, 0.2, 0.4, seed=8)
    assert all(0.2 <= v <= 0.4 for v in first) and len(set(first)) > 10
    assert preset_values("ramp_up", 1, 0.3, 0.9) == [0.3]
    with pytest.raises(GridError):
        preset_values("zigzag", 3, 0, 1)

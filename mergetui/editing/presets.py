"""The preset curves a selection can be filled with, by name, and the values they give."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from mergetui.editing.cells import GridError, round_value

PRESETS: dict[str, str] = {
    "flat": "every cell = high",
    "ramp_up": "straight from low to high",
    "ramp_down": "straight from high to low",
    "v": "high at the ends, low mid",
    "lambda": "low at the ends, high mid",
    # The two S-curves differ by at most 1% of high-low: no preview can tell them apart, so the
    # description says so (a user who sees the same picture twice knows it is not a fault).
    "cosine": "(1-cos πx)/2: S-curve, ≈ smoothstep (±1%)",
    "smoothstep": "3x²-2x³: S-curve, ≈ cosine (±1%)",
    "step": "low, then high from a layer",
    "random": "uniform in [low, high], seeded",
}
PRESET_TITLES: dict[str, str] = {
    "flat": "Flat",
    "ramp_up": "Ramp up",
    "ramp_down": "Ramp down",
    "v": "V",
    "lambda": "Λ (lambda)",
    "cosine": "Cosine",
    "smoothstep": "Smoothstep",
    "step": "Step at a layer",
    "random": "Seeded random",
}


# The smooth curves at position x in 0..1, between low and high (step and random are drawn apart:
# they need the layer numbers or a seed).
CURVES: dict[str, Callable[[float, float, float], float]] = {
    "flat": lambda low, high, x: high,
    "ramp_up": lambda low, high, x: low + (high - low) * x,
    "ramp_down": lambda low, high, x: high - (high - low) * x,
    "v": lambda low, high, x: low + (high - low) * abs(2 * x - 1),
    "lambda": lambda low, high, x: high - (high - low) * abs(2 * x - 1),
    "cosine": lambda low, high, x: low + (high - low) * (1 - math.cos(math.pi * x)) / 2,
    "smoothstep": lambda low, high, x: low + (high - low) * (3 * x * x - 2 * x * x * x),
}


def preset_values(
    name: str,
    count: int,
    low: float,
    high: float,
    *,
    layers: Sequence[int] | None = None,
    at_layer: int | None = None,
    seed: int | None = None,
) -> list[float]:
    """The curve `name` over `count` cells, position x = i/(count-1) (0 for a single cell).

    `layers` are the output layer numbers of the cells (for "step", which switches from low to high
    at `at_layer`); "random" draws uniformly in [low, high] from `seed`.
    """
    if name not in PRESETS:
        raise GridError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    if count <= 0:
        return []
    xs = [i / (count - 1) if count > 1 else 0.0 for i in range(count)]
    if name == "step":
        if at_layer is None:
            raise GridError("the step preset needs the layer where it switches from low to high")
        numbers = list(layers) if layers is not None else list(range(count))
        values = [low if number < at_layer else high for number in numbers]
    elif name == "random":
        rng = random.Random(seed)
        lo, hi = min(low, high), max(low, high)
        values = [rng.uniform(lo, hi) for _ in range(count)]
    else:
        curve = CURVES[name]
        values = [curve(low, high, x) for x in xs]
    return [round_value(v) for v in values]

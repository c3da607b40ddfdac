"""Merge methods as pure tensor functions, looked up by name.

Each method is `fn(tensors, ctx) -> Tensor`: `tensors` are the inputs of one output tensor, float32
(float64 only where mergekit computes in float64), on the chosen device, in recipe input order;
`ctx` carries the resolved parameters. The result is a float32 tensor of the output shape (it may
alias an input when the method is a plain copy); the engine casts it once to the output dtype.
Functions never modify their inputs.

Each method's `MethodSpec` (`mergetui.recipe.methods.METHODS`, the only list of methods) names its
function as "module:attr" and carries the traits the engine reads (`reads_chunks`,
`streams_output`, `cache_elements`, ...); the modules are imported on first use, so importing this
package stays cheap (no torch).
See docs/methods.md for each method's formula and every deliberate difference from mergekit.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class MethodContext:
    """Everything a method needs besides the tensors, resolved by the engine for one output tensor."""

    method: str
    tensor_name: str
    # Index of the base in `tensors`; None when there is no base or the method ignores it.
    base_index: int | None
    # Resolved shared parameters, defaults applied, e.g. {"t": 0.3}.
    shared: dict[str, Any]
    # Aligned with `tensors`; the base's dict holds only input-scoped parameters.
    per_model: list[dict[str, Any]]
    # Random methods derive their generators from (seed, tensor_name): same seed and name give the
    # same output whatever order the engine processes tensors in. None draws a fresh seed.
    seed: int | None = None
    # Checked between chunks of long work; when set, the method raises CancelledError.
    cancel: threading.Event | None = None
    device: torch.device | None = None
    # Optional display names of the inputs (aligned with `tensors`), used in error messages.
    input_names: list[str] | None = field(default=None)
    # Optional reusable output buffer: contiguous, of the output's shape, dtype and device, and not
    # sharing memory with any input. A method that builds a new tensor writes into it and returns
    # it (saving the page faults of fresh memory); one that returns an input or a copy does not.
    out: torch.Tensor | None = field(default=None, repr=False)
    # The dtype the engine stores the result in. A method that reads its inputs in chunks (see
    # mergetui.merge.chunked) builds its output in it straight away: each chunk is computed in the
    # compute dtype and rounded once as it is written, exactly as a whole-tensor cast would round,
    # and no float32 copy of the output is ever made. None: the compute dtype.
    out_dtype: torch.dtype | None = None
    # Optional: where a method that writes its output chunk by chunk (`OutputChunks`) may send
    # each finished chunk, `sink(start, chunk)` with `start` the flat index of its first element,
    # instead of building the whole output. Such a method then returns `STREAMED`. The engine
    # sets it for chunk-reading methods, so no output tensor of the largest sizes is ever held.
    sink: Callable[[int, torch.Tensor], None] | None = field(default=None, repr=False)


MethodFunction = Callable[[list["torch.Tensor"], MethodContext], "torch.Tensor"]


def registered_names() -> list[str]:
    """Every method name that has a tensor function."""
    from mergetui.recipe.methods import METHODS

    return [name for name, spec in METHODS.items() if spec.function]


def get_method_function(name: str) -> MethodFunction:
    """The tensor function of a method (its spec's "module:attr", imported on first use); a name
    outside the spec table is a UserError."""
    from mergetui.recipe.methods import METHODS

    spec = METHODS.get(name)
    if spec is None or not spec.function:
        from mergetui.errors import UserError

        raise UserError(
            f"unknown merge method {name!r}",
            where="merge.method",
            fix="use one of " + ", ".join(registered_names()),
        )
    module_name, _, function_name = spec.function.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


__all__ = ["MethodContext", "MethodFunction", "get_method_function", "registered_names"]

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mergetui.errors import CancelledError, UserError
from mergetui.merge.methods._common import CHUNK_ELEMENTS, spans

if TYPE_CHECKING:
    import torch

    from mergetui.recipe.methods import MethodSpec


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

    # What every method asks of its context: its inputs checked against its MethodSpec, its
    # parameters with the spec's defaults, output memory, and chunked loops that can be cancelled.

    def inputs(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor | None, list[int]]:
        """The base (None when there is none or the method ignores it) and the indices of the
        other inputs, once the input counts and the base the method's MethodSpec asks for are
        checked (a UserError a person can act on otherwise)."""
        spec = self._spec()
        self._require_count(len(tensors), spec.min_inputs, spec.max_inputs, "inputs")
        if spec.base == "ignored":
            return None, list(range(len(tensors)))
        base_index = self.base_index
        if base_index is None:
            if spec.base == "required":
                raise UserError(
                    f"the {self.method} method needs a base model",
                    where=self.tensor_name,
                    fix="set merge.base to one of the models",
                )
            others = list(range(len(tensors)))
        elif not 0 <= base_index < len(tensors):
            raise UserError(
                f"base index {base_index} is out of range for {len(tensors)} inputs",
                where=self.tensor_name,
            )
        else:
            others = [i for i in range(len(tensors)) if i != base_index]
        if spec.min_non_base is not None or spec.max_non_base is not None:
            low, high = spec.min_non_base or 0, spec.max_non_base
            self._require_count(len(others), low, high, "models besides the base")
        return (None if base_index is None else tensors[base_index]), others

    def shared_param(self, name: str) -> Any:
        """A shared parameter, falling back to the spec default when the caller left it out."""
        if self._given(self.shared, name):
            return self.shared[name]
        return self._default(name)

    def model_param(self, index: int, name: str) -> Any:
        """A per-model parameter of input `index`, falling back to the spec default."""
        values = self.per_model[index] if index < len(self.per_model) else {}
        if self._given(values, name):
            return values[name]
        try:
            return self._default(name)
        except UserError:
            raise UserError(
                f"the {self.method} method needs the parameter {name!r} for "
                f"{self.input_label(index)}",
                where=self.tensor_name,
                fix=f"set {name} for that model (or at the top level of the recipe)",
            ) from None

    def input_label(self, index: int) -> str:
        """How an error names an input: its model name when the engine gave one."""
        if self.input_names is not None and index < len(self.input_names):
            return repr(self.input_names[index])
        return f"input #{index + 1}"

    def output_buffer(self, like: torch.Tensor) -> torch.Tensor:
        """Where a method writes its result: the engine's reusable `out` when it fits, else new.

        Writing into fresh memory costs a page fault per 4 KiB page (about 0.1 s per 128 MiB on
        the development machine: a third of a SLERP), which an engine that reuses one buffer
        avoids."""
        import torch

        dtype = self.out_dtype or like.dtype
        out = self.out
        if (
            out is not None
            and tuple(out.shape) == tuple(like.shape)
            and out.dtype == dtype
            and out.device == like.device
            and out.is_contiguous()
        ):
            return out
        return torch.empty(tuple(like.shape), dtype=dtype, device=like.device)

    def check_cancel(self) -> None:
        """Stop long work promptly when the user cancels."""
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"cancelled while merging {self.tensor_name}")

    def chunks(self, total: int, step: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
        """[start, end) ranges of `step` items covering `total`, checking the cancel event
        before each: the loop of every long piece of work."""
        for start, end in spans(total, step):
            self.check_cancel()
            yield start, end

    def row_chunks(self, rows: int, cols: int) -> Iterator[tuple[int, int]]:
        """Row ranges of about CHUNK_ELEMENTS elements each (at least one row), as `chunks`."""
        return self.chunks(rows, max(1, CHUNK_ELEMENTS // max(1, cols)))

    def _spec(self) -> MethodSpec:
        from mergetui.recipe.methods import METHODS

        return METHODS[self.method]

    def _default(self, name: str) -> Any:
        from mergetui.recipe.methods import METHODS

        spec = METHODS.get(self.method)
        param = spec.param(name) if spec is not None else None
        if param is None or param.required:
            raise UserError(
                f"the {self.method} method needs the parameter {name!r}",
                where=self.tensor_name,
                fix=f"set {name} in the recipe's parameters",
            )
        return param.default

    def _given(self, values: dict[str, Any], name: str) -> bool:
        """Whether `values` sets `name`: None counts only for nullable parameters (passthrough's
        scale)."""
        from mergetui.recipe.methods import METHODS

        if name not in values:
            return False
        if values[name] is not None:
            return True
        spec = METHODS.get(self.method)
        param = spec.param(name) if spec is not None else None
        return bool(param is not None and param.nullable)

    def _require_count(self, count: int, minimum: int, maximum: int | None, what: str) -> None:
        """Input-count checks with a message a person can act on."""
        if count < minimum or (maximum is not None and count > maximum):
            if maximum == minimum:
                wanted = f"exactly {minimum}"
            elif maximum is None:
                wanted = f"at least {minimum}"
            else:
                wanted = f"{minimum} to {maximum}"
            raise UserError(
                f"the {self.method} method needs {wanted} {what}, got {count}",
                where=self.tensor_name,
                fix="change the models listed in the recipe",
            )


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
        raise UserError(
            f"unknown merge method {name!r}",
            where="merge.method",
            fix="use one of " + ", ".join(registered_names()),
        )
    module_name, _, function_name = spec.function.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


__all__ = ["MethodContext", "MethodFunction", "get_method_function", "registered_names"]

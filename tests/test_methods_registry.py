"""The registry contract the engine codes against, and what every method promises.

Every method: listed in the spec table and vice versa; float32 in, float32 out of the right shape;
inputs left untouched; defaults from the spec when the engine leaves a parameter out; a clear
UserError for what a person can fix; cancellation checked between chunks of long work.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
import torch

from mergetui.errors import CancelledError, UserError
from mergetui.merge.methods import MethodContext, get_method_function, registered_names
from mergetui.merge.methods._common import CHUNK_ELEMENTS
from mergetui.recipe.methods import METHODS, REQUIRED

TASK = {"weight": 0.6, "density": 0.5}

# method -> (number of inputs, base index, shared params, per-model params for non-base inputs)
SETUPS: dict[str, tuple[int, int | None, dict[str, Any], dict[str, Any]]] = {
    "linear": (3, None, {}, {"weight": 0.5}),
    "slerp": (2, 0, {"t": 0.3}, {}),
    "nuslerp": (3, 0, {}, {"weight": 0.5}),
    "multislerp": (3, 0, {}, {"weight": 0.5}),
    "karcher": (3, None, {}, {}),
    "task_arithmetic": (3, 0, {}, {"weight": 0.6}),
    "ties": (3, 0, {}, TASK),
    "dare_ties": (3, 0, {}, TASK),
    "dare_linear": (3, 0, {}, TASK),
    "breadcrumbs": (3, 0, {}, TASK),
    "breadcrumbs_ties": (3, 0, {}, TASK),
    "della": (3, 0, {}, TASK),
    "della_linear": (3, 0, {}, TASK),
    "sce": (3, 0, {"select_topk": 0.5}, {}),
    "ram": (3, 0, {}, {}),
    "ramplus_tl": (3, 0, {}, {}),
    "model_stock": (3, 0, {}, {}),
    "nearswap": (2, 0, {"t": 0.01}, {}),
    "arcee_fusion": (2, 0, {}, {}),
    "passthrough": (1, None, {}, {"scale": 2.0}),
}


def _inputs(count: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [base] + [base + 0.05 * torch.randn(shape, generator=g) for _ in range(count - 1)]


def _context(method: str, count: int, **overrides: Any) -> MethodContext:
    _, base_index, shared, per = SETUPS[method]
    per_model = [{} if i == base_index else dict(per) for i in range(count)]
    if method == "linear" or method == "passthrough":
        per_model = [dict(per) for _ in range(count)]
    values: dict[str, Any] = dict(
        method=method,
        tensor_name="model.layers.1.mlp.gate_proj.weight",
        base_index=base_index,
        shared=dict(shared),
        per_model=per_model,
        seed=3,
    )
    values.update(overrides)
    return MethodContext(**values)


def test_every_spec_method_has_a_function_and_nothing_else_does() -> None:
    assert registered_names() == list(METHODS)
    assert set(SETUPS) == set(METHODS)
    for name in registered_names():
        assert callable(get_method_function(name))


def test_unknown_method_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown merge method 'lerp'") as caught:
        get_method_function("lerp")
    assert "linear" in caught.value.fix


def test_importing_the_registry_does_not_import_torch() -> None:
    code = "import sys, mergetui.merge.methods as m; m.registered_names(); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", [(300, 700), (1000,), (1,)])
def test_float32_result_of_the_input_shape_inputs_untouched(
    method: str, shape: tuple[int, ...]
) -> None:
    count = SETUPS[method][0]
    tensors = _inputs(count, shape)
    before = [t.clone() for t in tensors]
    out = get_method_function(method)(tensors, _context(method, count))
    assert out.shape == torch.Size(shape)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    for original, now in zip(before, tensors, strict=True):
        assert torch.equal(original, now)
    if out.numel() > 1 and method != "passthrough":
        assert not any(torch.equal(out, t) for t in tensors[1:]), "the merge did nothing"


@pytest.mark.parametrize("method", ["linear", "ties", "slerp", "karcher", "model_stock"])
def test_float64_inputs_stay_float64(method: str) -> None:
    count = SETUPS[method][0]
    tensors = [t.double() for t in _inputs(count, (20, 30))]
    out = get_method_function(method)(tensors, _context(method, count))
    assert out.dtype == torch.float64
    reference = get_method_function(method)([t.float() for t in tensors], _context(method, count))
    assert torch.allclose(out.float(), reference, atol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_missing_parameters_fall_back_to_spec_defaults(method: str) -> None:
    spec = METHODS[method]
    count, base_index, shared, per = SETUPS[method]
    tensors = _inputs(count, (16, 8))
    # Keep only the required parameters: everything else must come from the spec.
    required_shared = {k: v for k, v in shared.items() if spec.param(k).required}
    required_per = {k: v for k, v in per.items() if spec.param(k).required}
    explicit_shared = {p.name: p.default for p in spec.shared_params if not p.required}
    explicit_shared.update(required_shared)
    explicit_per = {p.name: p.default for p in spec.per_model_params if not p.required}
    explicit_per.update(required_per)
    if "gamma" in explicit_per or "epsilon" in explicit_per:
        explicit_per["density"] = 1.0  # keep the random/outlier methods deterministic here

    def context(shared_values: dict[str, Any], per_values: dict[str, Any]) -> MethodContext:
        ctx = _context(method, count, shared=shared_values)
        for i, values in enumerate(ctx.per_model):
            if i != base_index or spec.name in ("linear", "passthrough"):
                values.clear()
                values.update(per_values)
        return ctx

    implicit_per = {k: v for k, v in required_per.items()}
    if "density" in explicit_per:
        implicit_per["density"] = explicit_per["density"]
    fn = get_method_function(method)
    implicit = fn(tensors, context(required_shared, implicit_per))
    explicit = fn(tensors, context(explicit_shared, explicit_per))
    assert torch.equal(implicit, explicit)


@pytest.mark.parametrize(
    "method", [m for m in METHODS if any(p.required for p in METHODS[m].params)]
)
def test_missing_required_parameter_is_a_user_error(method: str) -> None:
    count = SETUPS[method][0]
    ctx = _context(method, count, shared={})
    for values in ctx.per_model:
        values.pop("weight", None)
    required = [p.name for p in METHODS[method].params if p.default is REQUIRED]
    with pytest.raises(UserError, match="|".join(required)) as caught:
        get_method_function(method)(_inputs(count, (4, 4)), ctx)
    assert caught.value.where == "model.layers.1.mlp.gate_proj.weight"


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].base == "required"])
def test_missing_base_is_a_user_error(method: str) -> None:
    count = SETUPS[method][0]
    with pytest.raises(UserError, match="needs a base model"):
        get_method_function(method)(
            _inputs(count, (4, 4)), _context(method, count, base_index=None)
        )


@pytest.mark.parametrize(
    ("method", "count"),
    [("slerp", 3), ("nearswap", 3), ("arcee_fusion", 1), ("nuslerp", 4), ("model_stock", 2)],
)
def test_wrong_input_count_is_a_user_error(method: str, count: int) -> None:
    ctx = _context(method, count)
    for values in ctx.per_model:
        values.setdefault("weight", 0.5)
    if method in ("nuslerp",):
        ctx.per_model[0] = {}
    with pytest.raises(UserError, match="needs"):
        get_method_function(method)(_inputs(count, (4, 4)), ctx)


class CountingEvent(threading.Event):
    """A cancel event that reports set from its `trigger`-th check on, counting every check."""

    def __init__(self, trigger: int | None) -> None:
        super().__init__()
        self.trigger = trigger
        self.checks = 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.trigger is not None and self.checks >= self.trigger


@pytest.mark.parametrize("method", [m for m in METHODS if m != "passthrough"])
def test_cancel_is_checked_between_chunks(method: str) -> None:
    count = SETUPS[method][0]
    shape = (3 * CHUNK_ELEMENTS // 512 + 7, 512)  # a little over three chunks
    tensors = _inputs(count, shape)
    fn = get_method_function(method)
    quiet = CountingEvent(None)
    fn(tensors, _context(method, count, cancel=quiet))
    assert quiet.checks >= 3, "long work must check the cancel event more than once"
    for trigger in (1, quiet.checks):
        with pytest.raises(CancelledError):
            fn(tensors, _context(method, count, cancel=CountingEvent(trigger)))
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        fn(tensors, _context(method, count, cancel=event))


def test_empty_tensors() -> None:
    for method in METHODS:
        count = SETUPS[method][0]
        tensors = [torch.empty(0, 4) for _ in range(count)]
        out = get_method_function(method)(tensors, _context(method, count))
        assert out.shape == (0, 4)


def test_none_means_unset_except_for_nullable_parameters() -> None:
    tensors = _inputs(3, (6, 5))
    fn = get_method_function("ties")
    explicit = fn(tensors, _context("ties", 3, shared={"normalize": True, "lambda": 1.0}))
    unset = fn(tensors, _context("ties", 3, shared={"normalize": None, "lambda": None}))
    assert torch.equal(explicit, unset)
    with pytest.raises(UserError, match="'t'"):
        get_method_function("slerp")(_inputs(2, (3,)), _context("slerp", 2, shared={"t": None}))
    x = _inputs(1, (4,))
    ctx = _context("passthrough", 1, per_model=[{"scale": None}])
    assert get_method_function("passthrough")(x, ctx) is x[0]  # a plain copy aliases the input


def test_errors_name_the_model_when_the_engine_gives_names() -> None:
    ctx = _context("della", 3, input_names=["base", "coder", "writer"])
    ctx.per_model[2] = {"weight": 1.0, "density": 0.9, "epsilon": 0.2}
    with pytest.raises(UserError, match="'writer' has density 0.9 and epsilon 0.2") as caught:
        get_method_function("della")(_inputs(3, (4, 4)), ctx)
    assert "epsilon below 0.1" in caught.value.fix


@pytest.mark.parametrize("method", list(METHODS))
def test_a_reusable_output_buffer_receives_the_result(method: str) -> None:
    count = SETUPS[method][0]
    tensors = _inputs(count, (300, 700))
    fn = get_method_function(method)
    fresh = fn(tensors, _context(method, count))
    buffer = torch.full((300, 700), float("nan"))
    reused = fn(tensors, _context(method, count, out=buffer))
    assert torch.equal(reused, fresh)
    assert reused is buffer
    # a buffer that does not fit is ignored, never written
    wrong = torch.full((700, 300), float("nan"))
    assert torch.equal(fn(tensors, _context(method, count, out=wrong)), fresh)
    assert bool(wrong.isnan().all())

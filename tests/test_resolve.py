"""Parameter resolution: hand-computed values, and mergekit 0.1.5's own resolution as the referee.

Three levels of comparison with mergekit: `evaluate` against `mergekit.config.evaluate_setting`
over random settings; `resolve_tensor_params` against `mergekit.parameter_resolver` driven by
mergekit's own `ConfigReader` on the exported YAML; and, on tiny real checkpoints, every tensor of
mergekit's `MergePlanner` against the same walk done with mergetui's resolver (and the grid's
`resolve_layer_values`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergetui.errors import UserError
from mergetui.recipe.methods import METHODS, ParamSpec
from mergetui.recipe.model import Conditional, ModelEntry, Recipe, Slice, SliceSource
from mergetui.recipe.resolve import (
    LayerValues,
    MissingParameterError,
    ParameterValueError,
    coerce,
    evaluate,
    layer_t,
    resolve_layer_values,
    resolve_tensor_params,
)
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.yaml_export import dumps_yaml

Q_PROJ = "model.layers.{i}.self_attn.q_proj.weight"

# ----------------------------------------------------------------------------------------------
# By hand


def test_scalars_and_gradients() -> None:
    assert evaluate(0.5, "x", 0.3, "float") == 0.5
    assert evaluate(1, "x", 0.3, "float") == 1.0
    assert isinstance(evaluate(1, "x", 0.3, "float"), float)
    assert evaluate([0, 1], "x", 0.25, "float") == 0.25
    # s = 0.3 * 4 = 1.2: between anchors 1 (0.5) and 2 (0.3), a fifth of the way.
    assert evaluate([0, 0.5, 0.3, 0.7, 1], "x", 0.3, "float") == pytest.approx(0.46)
    assert evaluate([0, 0.5, 0.3, 0.7, 1], "x", 1, "float") == 1
    assert evaluate([7], "x", 0.6, "float") == 7.0
    # Booleans are picked, not interpolated: int(0.6 * 2) = 1.
    assert evaluate([True, False, True], "x", 0.6, "bool") is False
    assert evaluate(["yes", "no"], "x", 1, "bool") is False
    # Strings that are numbers interpolate for numeric parameters.
    assert evaluate(["0", "1e-1"], "x", 1, "float") == pytest.approx(0.1)
    assert evaluate([1, 3], "x", 0.5, "int") == 2
    with pytest.raises(ParameterValueError, match="whole number"):
        evaluate([1, 10], "x", 0.5, "int")
    assert evaluate([], "x", 0.5, "float") is None


def test_filters_first_match_wins() -> None:
    setting = [
        Conditional(0.1, "self_attn"),
        Conditional([0, 1], "mlp"),
        Conditional(0.9),
    ]
    assert evaluate(setting, "model.layers.0.self_attn.q_proj.weight", 0.5, "float") == 0.1
    assert evaluate(setting, "model.layers.0.mlp.up_proj.weight", 0.5, "float") == 0.5
    assert evaluate(setting, "model.norm.weight", 0.5, "float") == 0.9
    assert evaluate(Conditional(2, "*"), "anything", 0, "float") == 2.0
    assert evaluate(Conditional(2, "mlp"), "model.norm.weight", 0, "float") is None
    assert evaluate([Conditional(2, "mlp")], "model.norm.weight", 0, "float") is None
    # A matching entry whose value is empty gives None, even when a later entry would match.
    assert (
        evaluate([Conditional([], "norm"), Conditional(1)], "model.norm.weight", 0, "float") is None
    )


def test_coercion_follows_pydantic_lax_mode() -> None:
    assert coerce(True, "float") == 1.0
    assert coerce("1e-5", "float") == 1e-5
    assert coerce(" 0.5 ", "float") == 0.5
    assert coerce(2.0, "int") == 2
    assert coerce("3", "int") == 3
    assert coerce("10.0", "int") == 10
    assert coerce(1, "bool") is True
    assert coerce("off", "bool") is False
    assert coerce(None, ParamSpec("scale", "float", "input", None, nullable=True)) is None
    for value, ptype in [
        ("abc", "float"),
        (2.5, "int"),
        (2, "bool"),
        ("1.0", "bool"),
        (None, "float"),
    ]:
        with pytest.raises(ParameterValueError):
            coerce(value, ptype)


def test_layer_t() -> None:
    assert layer_t(0, 1) == 1
    assert [layer_t(i, 5) for i in range(5)] == [0, 0.25, 0.5, 0.75, 1]


def _ties_recipe() -> Recipe:
    return loads_toml(
        """
[merge]
method = "ties"
base = "base"
[models.base]
source = "org/base"
[models.a]
source = "org/a"
[models.a.parameters]
weight = [{ filter = "mlp", value = 0.7 }]
density = 0.5
[models.b]
source = "org/b"
[models.b.parameters]
weight = 0.2
[parameters]
weight = 0.3
normalize = false
"""
    )


def test_precedence_and_fall_through() -> None:
    recipe = _ties_recipe()
    slice_ = recipe.effective_slices({"base": 4, "a": 4, "b": 4})[0]
    inputs = [(m, "model.layers.1.mlp.up_proj.weight") for m in ("base", "a", "b")]
    shared, per_model = resolve_tensor_params(
        recipe, METHODS["ties"], slice_, "model.layers.1.mlp.up_proj.weight", inputs, 1 / 3
    )
    assert shared == {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}
    # The base takes no non_base parameters; a's filter matches; b's own weight wins over the top.
    assert per_model == {
        "base": {},
        "a": {"weight": 0.7, "density": 0.5},
        "b": {"weight": 0.2, "density": 1.0},
    }
    attention = [(m, "model.layers.1.self_attn.q_proj.weight") for m in ("base", "a", "b")]
    _, per_model = resolve_tensor_params(
        recipe, METHODS["ties"], slice_, attention[0][1], attention, 1 / 3
    )
    # No filter matches for a: its setting falls through to the top-level weight.
    assert per_model["a"] == {"weight": 0.3, "density": 0.5}


def test_base_gets_input_scoped_parameters() -> None:
    recipe = Recipe(
        method="linear",
        models={
            "base": ModelEntry("base", "x", parameters={"weight": 2}),
            "a": ModelEntry("a", "y", parameters={"weight": 1}),
        },
        base="base",
    )
    slice_ = recipe.effective_slices({"base": 2, "a": 2})[0]
    _, per_model = resolve_tensor_params(
        recipe, METHODS["linear"], slice_, "w", [("base", "w"), ("a", "w")], 0
    )
    assert per_model == {"base": {"weight": 2.0}, "a": {"weight": 1.0}}


def test_missing_required_names_parameter_model_and_tensor() -> None:
    recipe = _ties_recipe()
    del recipe.parameters["weight"]
    slice_ = recipe.effective_slices({"base": 4, "a": 4, "b": 4})[0]
    name = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(MissingParameterError) as info:
        resolve_tensor_params(recipe, METHODS["ties"], slice_, name, [("a", name)], 0)
    assert "'weight'" in info.value.message
    assert "'a'" in info.value.message and name in info.value.message
    assert info.value.where == "models.a.parameters.weight"
    assert (info.value.param, info.value.model) == ("weight", "a")


def test_bad_value_names_its_place() -> None:
    recipe = _ties_recipe()
    recipe.parameters["lambda"] = "lots"
    slice_ = recipe.effective_slices({"base": 4, "a": 4, "b": 4})[0]
    with pytest.raises(ParameterValueError) as info:
        resolve_tensor_params(recipe, METHODS["ties"], slice_, "w", [("a", "w")], 0)
    assert info.value.where == "parameters.lambda"
    assert "lambda" in info.value.message


def test_layer_values_models_form() -> None:
    recipe = loads_toml(
        """
[merge]
method = "slerp"
base = "a"
[models.a]
source = "a"
[models.b]
source = "b"
[parameters]
t = [{ filter = "self_attn", value = [0, 1] }, { value = 0.5 }]
"""
    )
    values = resolve_layer_values(recipe, {"a": 4, "b": 4}, "t", None, Q_PROJ)
    assert values == LayerValues(embed=0.5, layers=[0, 1 / 3, 2 / 3, 1], head=0.5)
    values = resolve_layer_values(
        recipe, {"a": 4, "b": 4}, "t", None, "model.layers.{i}.mlp.up_proj.weight"
    )
    assert values.layers == [0.5] * 4


def test_layer_values_slices_restart_the_gradient_and_renumber() -> None:
    recipe = loads_toml(
        """
[merge]
method = "task_arithmetic"
base = "base"
[models.base]
source = "base"
[models.a]
source = "a"
[[slices]]
sources = [
  { model = "base", layers = [0, 2] },
  { model = "a", layers = [0, 2], parameters = { weight = [0, 1] } },
]
[[slices]]
sources = [
  { model = "base", layers = [1, 4] },
  { model = "a", layers = [1, 4], parameters = { weight = [{ filter = "layers.3.", value = 9 }] } },
]
[slices.parameters]
weight = 0.25
"""
    )
    values = resolve_layer_values(recipe, {"base": 4, "a": 4}, "weight", "a", Q_PROJ)
    # Slice 0: t = 0, 1. Slice 1: input layers 1, 2, 3; only input layer 3 matches the filter
    # (output layer 4), the others fall through to the slice's weight.
    assert values.layers == [0, 1, 0.25, 0.25, 9]
    assert values.embed == 0  # first slice, t = 0
    assert values.head == 0.25  # last slice, t = 0, filter does not match lm_head
    # The base takes no weight (non_base) and a model outside a slice has no value.
    assert (
        resolve_layer_values(recipe, {"base": 4, "a": 4}, "weight", "base", Q_PROJ).layers
        == [None] * 5
    )


def test_layer_values_leave_unset_required_blank() -> None:
    recipe = loads_toml(
        '[merge]\nmethod = "slerp"\nbase = "a"\n[models.a]\nsource = "a"\n[models.b]\nsource = "b"\n'
        '[parameters]\nt = { filter = "mlp", value = 0.3 }\n'
    )
    values = resolve_layer_values(recipe, {"a": 2, "b": 2}, "t", None, Q_PROJ)
    assert values == LayerValues(embed=None, layers=[None, None], head=None)
    with pytest.raises(UserError, match="no parameter 'weight'"):
        resolve_layer_values(recipe, {"a": 2, "b": 2}, "weight", "a", Q_PROJ)


# ----------------------------------------------------------------------------------------------
# Against mergekit: evaluate_setting


_SCALARS = st.one_of(
    st.floats(min_value=-4, max_value=4, allow_nan=False),
    st.integers(min_value=-3, max_value=12),
    st.booleans(),
    st.sampled_from(
        ["0.5", "1e-5", "1", "0", "true", "no", "abc", " 2 ", "1.0", "inf", "-3", "1_000"]
    ),
)
_FILTERS = st.sampled_from([None, "*", "mlp", "self_attn", "layers.1.", "", "q_proj", "norm"])
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=6))
_CONDITIONALS = st.builds(Conditional, value=_VALUES, filter=_FILTERS)
_SETTINGS = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=6),
    st.lists(st.one_of(st.integers(0, 3), st.floats(0, 1)), min_size=1, max_size=40),
    _CONDITIONALS,
    st.lists(_CONDITIONALS, max_size=4),
)
_TENSORS = st.sampled_from(
    [
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.12.input_layernorm.weight",
        "model.embed_tokens.weight",
        "lm_head.weight",
        "",
    ]
)
_T = st.one_of(st.sampled_from([0, 1, 0.5, 1 / 3, 2 / 3, 1 / 7]), st.floats(0, 1))
_TYPES = st.sampled_from(["float", "int", "bool", "nullable"])


def _to_mergekit(setting: Any) -> Any:
    from mergekit.config import ConditionalParameter

    if isinstance(setting, Conditional):
        return ConditionalParameter.model_construct(value=setting.value, filter=setting.filter)
    if isinstance(setting, list):
        return [_to_mergekit(item) for item in setting]
    return setting


def _mergekit_validator(kind: str) -> Any:
    from typing import Optional

    from pydantic import TypeAdapter

    python_type = {"float": float, "int": int, "bool": bool, "nullable": Optional[float]}[kind]  # noqa: UP045
    return TypeAdapter(python_type).validate_python


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except (ParameterValueError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        return ("invalid", type(exc).__name__)


def _same(ours: tuple[str, Any], theirs: tuple[str, Any]) -> bool:
    if ours[0] != theirs[0]:
        return False
    if ours[0] == "invalid":
        return True
    a, b = ours[1], theirs[1]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


@settings(max_examples=600, deadline=None)
@given(setting=_SETTINGS, tensor=_TENSORS, t=_T, kind=_TYPES)
def test_evaluate_matches_mergekit(setting: Any, tensor: str, t: float, kind: str) -> None:
    from mergekit.config import evaluate_setting

    ptype: Any = ParamSpec("p", "float", "shared", nullable=True) if kind == "nullable" else kind
    ours = _outcome(lambda: evaluate(setting, tensor, t, ptype))
    theirs = _outcome(
        lambda: evaluate_setting(
            tensor, _to_mergekit(setting), t, validate=_mergekit_validator(kind)
        )
    )
    assert _same(ours, theirs), (ours, theirs)


# ----------------------------------------------------------------------------------------------
# Against mergekit: resolve_parameters with its ConfigReader, on our exported YAML


_METHOD_NAMES = ["ties", "linear", "slerp", "della", "karcher", "passthrough", "nuslerp"]
_NUMBERS = st.one_of(
    st.floats(min_value=0, max_value=1, allow_nan=False),
    st.integers(min_value=0, max_value=3),
    st.booleans(),
)
_PARAM_VALUES = st.one_of(
    _NUMBERS,
    st.lists(_NUMBERS, min_size=1, max_size=5),
    st.builds(
        Conditional, value=st.one_of(_NUMBERS, st.lists(_NUMBERS, max_size=4)), filter=_FILTERS
    ),
    st.lists(
        st.builds(
            Conditional, value=st.one_of(_NUMBERS, st.lists(_NUMBERS, max_size=4)), filter=_FILTERS
        ),
        max_size=3,
    ),
)


@st.composite
def _recipes(draw: Any) -> Recipe:
    method = draw(st.sampled_from(_METHOD_NAMES))
    names = [p.name for p in METHODS[method].params] + ["weight", "unknown"]

    def params() -> dict[str, Any]:
        chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
        return {name: draw(_PARAM_VALUES) for name in chosen}

    models = {name: ModelEntry(name, f"org/{name}") for name in ("base", "a", "b")}
    order = draw(st.permutations(["base", "a", "b"]))
    count = draw(st.integers(min_value=1, max_value=3))
    sources = [SliceSource(m, (0, 4), params()) for m in order[:count]]
    base = draw(st.sampled_from(["base", "a", None]))
    slice_base = draw(st.sampled_from([None, None, "b"]))
    return Recipe(
        method=method,
        models=models,
        base=base,
        parameters=params(),
        slices=[Slice(sources=sources, parameters=params(), base=slice_base)],
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recipe=_recipes(),
    output=_TENSORS,
    input_names=st.lists(_TENSORS, min_size=3, max_size=3),
    t=_T,
)
def test_resolution_matches_mergekit(
    recipe: Recipe, output: str, input_names: list[str], t: float
) -> None:
    from mergekit import merge_methods
    from mergekit.config import ConfigReader, MergeConfiguration
    from mergekit.parameter_resolver import resolve_parameters

    config = MergeConfiguration.model_validate(yaml.safe_load(dumps_yaml(recipe)))
    reader = ConfigReader(config=config, slice_out=config.slices[0], t=t)
    assert recipe.slices is not None
    slice_ = recipe.slices[0]
    by_reference = {
        src.model: name.model
        for src, name in zip(config.slices[0].sources, slice_.sources, strict=True)
    }
    inputs = [(src.model, input_names[i]) for i, src in enumerate(slice_.sources)]

    def ours() -> Any:
        return resolve_tensor_params(recipe, METHODS[recipe.method], slice_, output, inputs, t)

    def theirs() -> Any:
        shared, per_input = resolve_parameters(
            merge_methods.get(recipe.method).spec,
            tensor_name=output,
            inputs={src.model: input_names[i] for i, src in enumerate(config.slices[0].sources)},
            sources=reader.parameter_sources,
            base_model=reader.base_model,
            t=t,
        )
        return dict(shared), {by_reference[k]: dict(v) for k, v in per_input.items()}

    try:
        expected = ("ok", theirs())
    except RuntimeError as exc:
        assert "Missing required parameter" in str(exc)
        expected = ("missing", None)
    except ValueError:
        expected = ("invalid", None)
    try:
        got = ("ok", ours())
    except MissingParameterError:
        got = ("missing", None)
    except ParameterValueError:
        got = ("invalid", None)
    assert got == expected


# ----------------------------------------------------------------------------------------------
# Against mergekit's planner, on tiny real checkpoints


def _mergekit_plan(recipe: Recipe) -> dict[str, tuple[dict, dict]]:
    """Every output tensor's (shared, per-model) parameters as mergekit's MergePlanner sets them."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.merge import _model_out_config
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    config = MergeConfiguration.model_validate(yaml.safe_load(dumps_yaml(recipe)))
    options = MergeOptions()
    arch = get_architecture_info(config, options)
    out_config = _model_out_config(config, arch)
    planner = MergePlanner(config, arch, options, out_config)
    planner._plan()
    names = {entry.reference: name for name, entry in recipe.models.items()}
    return {
        weight.name: (
            dict(task.parameters),
            {names[str(model)]: dict(values) for model, values in task.input_parameters.items()},
        )
        for weight, task in planner._tensors
    }


def _our_plan(recipe: Recipe) -> dict[str, tuple[dict, dict]]:
    """The same walk with mergetui's resolver: embeddings, each slice's layers, then the rest."""
    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.checkpoints.layers import with_layer_index

    checkpoints = {name: open_checkpoint(e.source) for name, e in recipe.models.items()}
    slices = recipe.effective_slices({n: c.num_layers for n, c in checkpoints.items()})
    spec = METHODS[recipe.method]
    plan: dict[str, tuple[dict, dict]] = {}

    def add(slice_: Slice, output: str, inputs: list[tuple[str, str]], t: float) -> None:
        plan[output] = resolve_tensor_params(recipe, spec, slice_, output, inputs, t)

    first = checkpoints[slices[0].sources[0].model]
    for name in first.pre_layer:
        add(slices[0], name, [(s.model, name) for s in slices[0].sources], 0)
    index = 0
    for slice_ in slices:
        lead = checkpoints[slice_.sources[0].model]
        for offset in range(slice_.num_layers):
            for name in lead.layer_tensors(slice_.sources[0].layer_range[0] + offset):
                inputs = [
                    (s.model, with_layer_index(name, s.layer_range[0] + offset))
                    for s in slice_.sources
                ]
                add(
                    slice_,
                    with_layer_index(name, index),
                    inputs,
                    layer_t(offset, slice_.num_layers),
                )
            index += 1
    last = checkpoints[slices[-1].sources[0].model]
    for name in last.post_layer:
        add(slices[-1], name, [(s.model, name) for s in slices[-1].sources], 0)
    return plan


def _family_recipe(family: dict[str, Path], name: str) -> Recipe:
    """One of PLANS with a [models.x] table for each family member it uses."""
    members, body = PLANS[name]
    models = "".join(f'[models.{m}]\nsource = "{family[m]}"\n' for m in members)
    return loads_toml(body + "\n" + models)


PLANS = {
    "ties-models": (
        ("base", "a", "b", "c"),
        """
[merge]
method = "ties"
base = "base"
[parameters]
weight = [{ filter = "self_attn", value = [0.2, 1, 0.4] }, { filter = "mlp", value = 0.6 }, { value = 0.5 }]
density = [1, 0.5]
normalize = "false"
""",
    ),
    "slerp-models": (
        ("base", "a"),
        """
[merge]
method = "slerp"
base = "base"
[parameters]
t = [{ filter = "mlp", value = [1, 0.5, 0.7, 0.3, 0] }, { filter = "norm", value = [0, 1] }, { value = 0.5 }]
""",
    ),
    "linear-models-base-weighted": (
        ("base", "a", "b"),
        """
[merge]
method = "linear"
base = "a"
[parameters]
weight = [{ filter = "layers.2.", value = 3 }, { value = [1, 2] }]
""",
    ),
    "passthrough-stack": (
        ("a", "b", "c"),
        """
[merge]
method = "passthrough"
[[slices]]
sources = [{ model = "a", layers = [0, 3], parameters = { scale = [{ filter = "layers.1.", value = 0.5 }] } }]
[[slices]]
sources = [{ model = "b", layers = [1, 4], parameters = { scale = [2, 3] } }]
[slices.parameters]
scale = [{ filter = "norm", value = 4 }]
[[slices]]
sources = [{ model = "c", layers = [3, 4] }]
[slices.parameters]
scale = [0, 1]
""",
    ),
    "task-arithmetic-slices": (
        ("base", "a", "b", "c"),
        """
[merge]
method = "task_arithmetic"
base = "base"
[parameters]
weight = 0.1
lambda = [0.5, 1]
[[slices]]
sources = [
  { model = "base", layers = [0, 2] },
  { model = "a", layers = [0, 2], parameters = { weight = [0, 1] } },
  { model = "b", layers = [2, 4] },
]
[slices.parameters]
weight = [{ filter = "mlp", value = 0.8 }]
[[slices]]
base = "c"
sources = [
  { model = "c", layers = [1, 3], parameters = { weight = 5 } },
  { model = "a", layers = [2, 4], parameters = { density = [{ filter = "layers.3.", value = 0.2 }] } },
]
""",
    ),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_every_tensor_matches_mergekit_planner(name: str, llama_family: dict[str, Path]) -> None:
    recipe = _family_recipe(llama_family, name)
    expected = _mergekit_plan(recipe)
    got = _our_plan(recipe)
    assert sorted(got) == sorted(expected)
    for tensor in expected:
        assert got[tensor] == expected[tensor], tensor


@pytest.mark.parametrize(
    ("name", "param", "model"),
    [
        ("ties-models", "weight", "a"),
        ("ties-models", "density", "b"),
        ("slerp-models", "t", None),
        ("linear-models-base-weighted", "weight", "a"),
        ("passthrough-stack", "scale", "b"),
        ("task-arithmetic-slices", "weight", "a"),
        ("task-arithmetic-slices", "lambda", None),
    ],
)
@pytest.mark.parametrize("template", [Q_PROJ, "model.layers.{i}.mlp.down_proj.weight"])
def test_grid_values_are_what_mergekit_uses(
    name: str, param: str, model: str | None, template: str, llama_family: dict[str, Path]
) -> None:
    recipe = _family_recipe(llama_family, name)
    plan = _mergekit_plan(recipe)
    counts = {n: 4 for n in recipe.models}
    values = resolve_layer_values(recipe, counts, param, model, template)

    def used(tensor: str) -> Any:
        shared, per_model = plan[tensor]
        if model is None:
            return shared[param]
        return per_model.get(model, {}).get(param)

    assert values.layers == [used(template.format(i=i)) for i in range(len(values.layers))]
    assert values.embed == used("model.embed_tokens.weight")
    assert values.head == used("lm_head.weight")

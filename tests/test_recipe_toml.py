"""mergetui TOML: reading, writing, round trips, key lines, and errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergetui.errors import UserError
from mergetui.recipe.io import load_recipe, save_recipe
from mergetui.recipe.model import Conditional, ModelEntry, Recipe, Slice, SliceSource
from mergetui.recipe.toml_read import loads_toml, toml_locations
from mergetui.recipe.toml_write import dumps_toml
from mergetui.resources import sample_recipes_dir

FULL = """\
# A recipe using every key.
description = "every key"

[merge]
method = "ties"
base = "base"
dtype = "bfloat16"
out_dtype = "float16"
output = "merges/x"
seed = 42
chat_template = "chatml"

[merge.tokenizer]
source = "union"
pad_to_multiple_of = 64

[merge.tokenizer.tokens."<|im_start|>"]
source = "a"
force = true

[merge.tokenizer.tokens."<|im_end|>"]
source = { kind = "model_token", model = "b", token_id = 2 }

[models.base]
source = "org/base-model"
revision = "main"

[models.a]
source = "./local/a"

[models.a.parameters]
weight = 0.5
density = [1, 0.7, 0.1]

[models.b]
source = "org/b"

[models.b.parameters]
weight = [
  { filter = "mlp", value = 0.5 },
  { filter = "*", value = [0, 1] },
]
density = { filter = "self_attn", value = 0.3 }

[parameters]
normalize = true
lambda = 1
int8_mask = "yes"
"""


def test_reads_every_key() -> None:
    recipe = loads_toml(FULL, "full.toml")
    assert recipe.method == "ties"
    assert recipe.base == "base"
    assert (recipe.dtype, recipe.out_dtype, recipe.output, recipe.seed) == (
        "bfloat16",
        "float16",
        "merges/x",
        42,
    )
    assert recipe.chat_template == "chatml"
    assert recipe.description == "every key"
    assert recipe.tokenizer == {
        "source": "union",
        "pad_to_multiple_of": 64,
        "tokens": {
            "<|im_start|>": {"source": "a", "force": True},
            "<|im_end|>": {"source": {"kind": "model_token", "model": "b", "token_id": 2}},
        },
    }
    assert list(recipe.models) == ["base", "a", "b"]
    assert recipe.models["base"] == ModelEntry("base", "org/base-model", "main", {})
    assert recipe.models["base"].reference == "org/base-model@main"
    assert recipe.models["a"].parameters == {"weight": 0.5, "density": [1, 0.7, 0.1]}
    assert recipe.models["b"].parameters == {
        "weight": [Conditional(0.5, "mlp"), Conditional([0, 1], "*")],
        "density": Conditional(0.3, "self_attn"),
    }
    assert recipe.parameters == {"normalize": True, "lambda": 1, "int8_mask": "yes"}
    assert recipe.slices is None
    assert recipe.source_path == "full.toml"


def test_key_lines_are_recorded() -> None:
    recipe = loads_toml(FULL, "full.toml")
    lines = FULL.splitlines()

    def line_with(text: str, start: int = 0) -> int:
        return next(i for i, line in enumerate(lines) if i >= start and text in line) + 1

    assert recipe.locations["merge.method"] == line_with('method = "ties"')
    assert recipe.locations["models.a.parameters.weight"] == line_with("weight = 0.5")
    assert recipe.locations["models.b.parameters.weight.1"] == line_with('filter = "*"')
    assert recipe.locations["merge.tokenizer.tokens.<|im_start|>.force"] == line_with(
        "force = true"
    )
    assert recipe.locations["parameters.lambda"] == line_with("lambda = 1")
    # A path without a line of its own points at the nearest parent that has one.
    assert recipe.line_of("models.b.parameters.density.value") == line_with("density = {")
    assert recipe.line_of("models.zzz") == line_with("[models.base]")


def test_locations_for_slices_and_multiline_strings() -> None:
    text = '''\
[merge]
method = "passthrough"
chat_template = """
a "quoted" template
"""

[models.x]
source = "x"

[[slices]]
sources = [
  { model = "x", layers = [0, 2] },
  { model = "x", layers = [2, 4], parameters = { scale = 0.5 } },
]

[[slices]]
base = "x"
sources = [{ model = "x", layers = [1, 3] }]

[slices.parameters]
scale = 2.0
'''
    found = toml_locations(text)
    assert found["merge.chat_template"] == 3
    assert found["models.x.source"] == 8
    assert found["slices.0"] == 10
    assert found["slices.0.sources.1"] == 13
    assert found["slices.0.sources.1.parameters.scale"] == 13
    assert found["slices.1.base"] == 17
    assert found["slices.1.parameters.scale"] == 21


def test_reads_slices() -> None:
    text = """
[merge]
method = "passthrough"
[models.x]
source = "x"
[[slices]]
sources = [{ model = "x", layers = [0, 24], parameters = { scale = 1.0 } }]
[[slices]]
base = "x"
parameters = { scale = 0.5 }
sources = [{ model = "x", layers = [8, 32] }]
"""
    recipe = loads_toml(text)
    assert recipe.slices == [
        Slice(sources=[SliceSource("x", (0, 24), {"scale": 1.0})]),
        Slice(sources=[SliceSource("x", (8, 32))], parameters={"scale": 0.5}, base="x"),
    ]
    assert recipe.slices[0].num_layers == 24


def _every_sample() -> list[Path]:
    return sorted(Path(__file__).resolve().parent.parent.joinpath("sample_recipes").glob("*.toml"))


@pytest.mark.parametrize("path", _every_sample(), ids=lambda p: p.name)
def test_sample_recipes_round_trip(path: Path) -> None:
    recipe = load_recipe(path)
    text = dumps_toml(recipe)
    again = loads_toml(text)
    assert again == recipe
    # Deterministic: writing the same recipe twice gives the same text.
    assert dumps_toml(again) == text


def test_full_recipe_round_trips_and_is_stable() -> None:
    recipe = loads_toml(FULL)
    text = dumps_toml(recipe)
    assert loads_toml(text) == recipe
    assert dumps_toml(loads_toml(text)) == text


def test_round_trip_of_awkward_values() -> None:
    recipe = Recipe(
        method="linear",
        models={
            "m.1": ModelEntry("m.1", 'C:\\models\\"odd"\tname', parameters={"weight": 1e-05}),
            "b": ModelEntry("b", "b", parameters={"weight": [float(i) / 7 for i in range(40)]}),
        },
        parameters={"normalize": False, "weight": [Conditional([], "empty"), Conditional(2)]},
        chat_template="{% for m in messages %}\n{{ m['content'] }}\x7f\n{% endfor %}",
        description="line one\nline two",
        tokenizer={},
    )
    text = dumps_toml(recipe)
    assert loads_toml(text) == recipe
    # Long gradients are wrapped, each line within 100 columns.
    assert all(len(line) <= 100 for line in text.splitlines())


def test_int_and_float_stay_distinct() -> None:
    recipe = loads_toml('[merge]\nmethod = "linear"\n[parameters]\nweight = [1, 1.0]\n')
    values = recipe.parameters["weight"]
    assert isinstance(values, list)
    assert [type(v) for v in values] == [int, float]
    assert "[1, 1.0]" in dumps_toml(recipe)


def test_syntax_error_names_file_and_line() -> None:
    text = '[merge]\nmethod = "slerp"\nbase = \n'
    with pytest.raises(UserError) as info:
        loads_toml(text, "bad.toml")
    assert info.value.where == "bad.toml:3"
    assert "not valid TOML" in info.value.message


def test_unknown_key_names_key_line_and_suggestion() -> None:
    text = '[merge]\nmethod = "slerp"\nbsae = "a"\n'
    with pytest.raises(UserError) as info:
        loads_toml(text, "r.toml")
    assert info.value.where == "r.toml:3"
    assert "merge.bsae" in info.value.message
    assert info.value.fix == "did you mean 'base'?"


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        (
            '[merge]\nmethod = "x"\n[models.a]\nsource = "a"\nrevison = "v"\n',
            5,
            "did you mean 'revision'",
        ),
        ('descripton = "x"\n[merge]\nmethod = "x"\n', 1, "did you mean 'description'"),
        (
            '[merge]\nmethod = "x"\n[[slices]]\nsources = [{ model = "a", layer = [0, 1] }]\n',
            4,
            "did you mean 'layers'",
        ),
        (
            '[merge]\nmethod = "x"\n[parameters]\nt = [{ filter = "mlp", valeu = 1 }]\n',
            4,
            "did you mean 'value'",
        ),
    ],
)
def test_unknown_keys_everywhere(text: str, where: int, words: str) -> None:
    with pytest.raises(UserError) as info:
        loads_toml(text, "r.toml")
    assert info.value.where == f"r.toml:{where}"
    assert words in (info.value.fix or "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('description = "x"\n', "no [merge] table"),
        ("[merge]\nbase = 'a'\n", "'merge.method' is missing"),
        ("[merge]\nmethod = 3\n", "must be a string"),
        ('[merge]\nmethod = "x"\nseed = 1.5\n', "must be a whole number"),
        ('[merge]\nmethod = "x"\nseed = true\n', "must be a whole number"),
        ('[merge]\nmethod = "x"\n[models.a]\nrevision = "v"\n', "'models.a.source' is missing"),
        ('[merge]\nmethod = "x"\n[models."a b"]\nsource = "v"\n', "model name 'a b'"),
        ('[merge]\nmethod = "x"\n[parameters]\nt = [1, { value = 2 }]\n', "mixes plain values"),
        (
            '[merge]\nmethod = "x"\n[parameters]\nt = [{ filter = "mlp" }]\n',
            "has a filter but no value",
        ),
        (
            '[merge]\nmethod = "x"\n[parameters]\nt = { filter = 3, value = 1 }\n',
            "must be a string",
        ),
        ('[merge]\nmethod = "x"\n[parameters]\nt = 1979-05-27\n', "unsupported value"),
        (
            '[merge]\nmethod = "x"\n[[slices]]\nsources = [{ model = "a", layers = [0] }]\n',
            "two whole numbers",
        ),
        ('[merge]\nmethod = "x"\n[[slices]]\nsources = [{ model = "a" }]\n', "has no layers"),
        ('[merge]\nmethod = "x"\n[[slices]]\nbase = "a"\n', "needs sources"),
        ('[merge]\nmethod = "x"\n[merge.tokenizer]\npad_to_multiple_of = "8"\n', "whole number"),
    ],
)
def test_structural_errors(text: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        loads_toml(text, "r.toml")
    assert message in info.value.message
    assert info.value.where and info.value.where.startswith("r.toml")


def test_save_and_load_by_extension(tmp_path: Path) -> None:
    recipe = loads_toml(FULL)
    toml_path = tmp_path / "sub" / "r.toml"
    save_recipe(recipe, toml_path)
    assert load_recipe(toml_path) == recipe
    yaml_path = tmp_path / "r.yml"
    save_recipe(recipe, yaml_path)
    assert yaml_path.read_text().startswith("# mergekit config written by mergetui.")
    assert load_recipe(yaml_path) == recipe
    # No temporary files are left beside the targets.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yml", "sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.toml"]


def test_save_is_atomic_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "r.toml"
    target.write_text("old contents\n")
    bad = Recipe(method="linear", parameters={"weight": object()})  # type: ignore[dict-item]
    with pytest.raises(UserError):
        save_recipe(bad, target)
    assert target.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.toml"]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown recipe extension"):
        load_recipe(tmp_path / "r.json")
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
    (tmp_path / "latin.toml").write_bytes(b"description = '\xe9'\n")
    with pytest.raises(UserError, match="UTF-8"):
        load_recipe(tmp_path / "latin.toml")
    with pytest.raises(UserError, match="extension"):
        save_recipe(Recipe(method="linear"), tmp_path / "r.txt")


def test_packaged_samples_are_readable() -> None:
    paths = sorted(sample_recipes_dir().glob("*.toml"))
    assert len(paths) >= 10
    for path in paths:
        assert load_recipe(path).method


def test_locations_survive_tricky_toml() -> None:
    text = '''\
a.b . "c.d" = [ # a comment with ] and {
  1, # x
  """multi
line""", 'lit', {x=1, y={z=[1,2]}},
]
[t.'q r']
k = "\\\\"
m = """a\\"""b"""
[[arr.x]]
v = 1
[[arr.x]]
v = 2
[arr.x.sub]
w = 3
'''
    found = toml_locations(text)
    assert found["a.b.c.d"] == 1
    assert found["a.b.c.d.1"] == 3
    assert found["a.b.c.d.3.y.z.1"] == 4
    assert found["t.q r.m"] == 8
    assert found["arr.x.1.v"] == 12
    assert found["arr.x.1.sub.w"] == 14
    # CRLF line endings give the same lines.
    assert toml_locations(text.replace("\n", "\r\n")) == found


def test_slices_round_trip_with_parameters_at_every_level() -> None:
    recipe = Recipe(
        method="task_arithmetic",
        base="base",
        models={"base": ModelEntry("base", "org/base"), "a": ModelEntry("a", "org/a", "v1")},
        parameters={"lambda": [0.5, 1]},
        slices=[
            Slice(
                sources=[
                    SliceSource("base", (0, 2)),
                    SliceSource(
                        "a", (0, 2), {"weight": [Conditional(0.3, "mlp"), Conditional([0, 1])]}
                    ),
                ],
                parameters={"weight": Conditional(0.8, "self_attn"), "density": [1, 0.5]},
            ),
            Slice(sources=[SliceSource("a", (2, 4)), SliceSource("base", (2, 4))], base="a"),
            Slice(sources=[SliceSource("base", (4, 5))], parameters={"weight": 1}),
        ],
    )
    text = dumps_toml(recipe)
    again = loads_toml(text, "s.toml")
    assert again == recipe
    assert dumps_toml(again) == text
    assert again.line_of("slices.2.parameters.weight") == text.splitlines().index("weight = 1") + 1

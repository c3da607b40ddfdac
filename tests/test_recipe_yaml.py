"""mergekit YAML: import key for key, export that mergekit accepts, and lossless round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mergekit.config import MergeConfiguration

from mergetui.errors import UserError
from mergetui.recipe.io import load_recipe
from mergetui.recipe.model import Conditional, ModelEntry, Recipe, Slice, SliceSource
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_write import dumps_toml
from mergetui.recipe.yaml_export import dumps_yaml
from mergetui.recipe.yaml_import import derive_model_name, loads_yaml

SAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("sample_recipes").glob("*.toml"))

# The mergekit README's TIES example, as found on model cards (the base is not in `models:`).
TIES_CARD = """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""

SLERP_CARD = """\
slices:
  - sources:
      - model: AIDC-ai-business/Marcoroni-7B-v3
        layer_range: [0, 32]
        parameters:
          t: 0.1
      - model: EmbeddedLLM/Mistral-7B-Merge-14-v0.1@v2
        layer_range: [0, 32]
    base_model: AIDC-ai-business/Marcoroni-7B-v3
    parameters:
      t:
        - filter: self_attn
          value: [0, 0.5, 0.3, 0.7, 1]
merge_method: slerp
base_model: AIDC-ai-business/Marcoroni-7B-v3
parameters:
  t:
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
  eps: 1e-5
dtype: bfloat16
out_dtype: float16
tokenizer:
  source: union
  tokens:
    "<|im_start|>":
      source: EmbeddedLLM/Mistral-7B-Merge-14-v0.1@v2
    "<|im_end|>":
      source:
        kind: model_token
        model: AIDC-ai-business/Marcoroni-7B-v3
        token: "</s>"
      force: true
  pad_to_multiple_of: 64
chat_template: chatml
"""


def test_imports_models_form_with_base_appended() -> None:
    recipe = loads_yaml(TIES_CARD, "ties.yaml")
    assert recipe.method == "ties"
    assert list(recipe.models) == [
        "orca_mini_v3_13b",
        "platypus2-13b",
        "wizardmath-13b-v1.0",
        "llama-2-13b-fp16",
    ]
    # mergekit adds the base as the last input when it is not listed; so does the import, and it
    # remembers that the config did not list it (so the YAML export does not list it either).
    assert recipe.base == "llama-2-13b-fp16"
    assert recipe.models["llama-2-13b-fp16"] == ModelEntry(
        "llama-2-13b-fp16", "TheBloke/Llama-2-13B-fp16", listed=False
    )
    assert recipe.models["orca_mini_v3_13b"].parameters == {"density": [1, 0.7, 0.1], "weight": 1.0}
    assert recipe.models["wizardmath-13b-v1.0"].parameters["weight"] == [
        Conditional(0.5, "mlp"),
        Conditional(0),
    ]
    assert recipe.parameters == {"normalize": True, "int8_mask": True}
    assert recipe.dtype == "float16"
    assert recipe.slices is None
    # Lines point into the YAML file, under recipe paths.
    assert recipe.locations["models.platypus2-13b.parameters.weight"] == 9
    assert recipe.locations["merge.base"] == 18
    assert recipe.locations["models.llama-2-13b-fp16.source"] == 18
    assert recipe.locations["merge.method"] == 17


def test_imports_slices_form_at_every_level() -> None:
    recipe = loads_yaml(SLERP_CARD, "slerp.yaml")
    marcoroni, merge14 = "marcoroni-7b-v3", "mistral-7b-merge-14-v0.1"
    assert recipe.models == {
        marcoroni: ModelEntry(marcoroni, "AIDC-ai-business/Marcoroni-7B-v3"),
        merge14: ModelEntry(merge14, "EmbeddedLLM/Mistral-7B-Merge-14-v0.1", "v2"),
    }
    assert recipe.base == marcoroni
    assert recipe.slices == [
        Slice(
            sources=[
                SliceSource(marcoroni, (0, 32), {"t": 0.1}),
                SliceSource(merge14, (0, 32)),
            ],
            parameters={"t": [Conditional([0, 0.5, 0.3, 0.7, 1], "self_attn")]},
            base=marcoroni,
        )
    ]
    # YAML 1.1 reads `1e-5` as a string; mergetui reads it as the number mergekit ends up using.
    assert recipe.parameters["eps"] == 1e-5
    assert recipe.out_dtype == "float16"
    assert recipe.chat_template == "chatml"
    # Model references inside the tokenizer block become model names.
    assert recipe.tokenizer == {
        "source": "union",
        "pad_to_multiple_of": 64,
        "tokens": {
            "<|im_start|>": {"source": merge14},
            "<|im_end|>": {
                "source": {"kind": "model_token", "model": marcoroni, "token": "</s>"},
                "force": True,
            },
        },
    }
    assert recipe.locations["slices.0.sources.1.layers"] == 8
    assert recipe.locations["slices.0.base"] == 9
    assert recipe.locations["slices.0.parameters.t.0.value"] == 13


def test_tokenizer_source_names_a_model_or_stays_a_path() -> None:
    text = "models:\n  - model: org/a\n  - model: org/b\nmerge_method: linear\ntokenizer_source: org/b\n"
    assert loads_yaml(text).tokenizer_source == "b"
    text = text.replace("tokenizer_source: org/b", "tokenizer_source: other/tok@r1")
    recipe = loads_yaml(text)
    assert recipe.tokenizer_source == "other/tok@r1"
    assert "tokenizer_source: other/tok@r1" in dumps_yaml(recipe)


def test_names_are_unique_and_safe() -> None:
    text = """\
models:
  - model: org/Model
  - model: other/model
  - model: ./My Model!/
  - model: org/Model@dev
merge_method: linear
"""
    recipe = loads_yaml(text)
    assert list(recipe.models) == ["model", "model-2", "my-model", "model-3"]
    assert recipe.models["model-3"].revision == "dev"
    assert derive_model_name("") == "model"
    assert derive_model_name("C:\\models\\Qwen2.5 7B") == "qwen2.5-7b"


def test_models_given_as_mappings() -> None:
    text = """\
models:
  - model: {model: {path: org/a, revision: r}}
merge_method: linear
"""
    assert loads_yaml(text).models["a"] == ModelEntry("a", "org/a", "r")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("merge_method: linear\nmodules:\n  text: {}\n", 2, "per-module merges"),
        ("models:\n  - model: a+lora+more\nmerge_method: linear\n", 2, "one '+'"),
        (
            "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 1]\n    residual_weight: 0.1\n"
            "merge_method: passthrough\n",
            5,
            "residual_weight",
        ),
        (
            "models:\n  - model: a\nmerge_method: linear\nmerge_methd: x\n",
            4,
            "unknown key 'merge_methd'",
        ),
        ("models:\n  - model: a\n    paramters: {}\nmerge_method: linear\n", 3, "paramters"),
        ("models:\n  - model: a@b@c\nmerge_method: linear\n", 2, "more than one '@'"),
        ("models:\n  - model: a\n  - model: a\nmerge_method: linear\n", 3, "listed twice"),
        ("models:\n  - model: a\nmerge_method: linear\nmerge_method: ties\n", 4, "given twice"),
        (
            "models:\n  - model: a\nmerge_method: linear\nparameters:\n  weight: null\n",
            5,
            "unsupported value",
        ),
        (
            "models:\n  - model: a\nmerge_method: linear\nbase_model: {model: x, lora: {path: y, r: 1}}\n",
            4,
            "base_model.lora.r",
        ),
        (
            "models:\n  - model: a\nmerge_method: linear\ntokenizer_source: a\ntokenizer: {source: a}\n",
            5,
            "both 'tokenizer_source' and 'tokenizer'",
        ),
        ("models:\n  - model: a\nmerge_method: [linear\n", 4, "not valid YAML"),
        (
            "slices:\n  - sources:\n      - model: a\n        layer_range: [0, x]\nmerge_method: passthrough\n",
            4,
            "two whole numbers",
        ),
    ],
)
def test_unsupported_and_unknown_keys_name_key_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(UserError) as info:
        loads_yaml(text, "c.yaml")
    assert info.value.where == f"c.yaml:{line}"
    assert words in info.value.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("merge_method: linear\n", "exactly one of 'models' or 'slices'"),
        ("models:\n  - model: a\n", "'merge_method' is missing"),
        ("- a\n- b\n", "must be a mapping"),
        ("", "must be a mapping"),
        ("models:\n  - model: a\nmerge_method: linear\n# mergetui: {bad json\n", "not valid JSON"),
    ],
)
def test_config_level_errors(text: str, words: str) -> None:
    with pytest.raises(UserError) as info:
        loads_yaml(text, "c.yaml")
    assert words in info.value.message


def test_merge_keys_and_anchors_are_read() -> None:
    text = """\
common: &w
  weight: 0.5
models:
  - model: a
    parameters:
      <<: *w
      density: 0.3
merge_method: linear
"""
    with pytest.raises(UserError, match="unknown key 'common'"):
        loads_yaml(text)
    text = text.replace("common: &w\n  weight: 0.5\n", "")
    text = text.replace("      <<: *w\n", "      <<: {weight: 0.5, density: 0.9}\n")
    # Keys written in the mapping override merged ones, as in YAML.
    assert loads_yaml(text).models["a"].parameters == {"weight": 0.5, "density": 0.3}


def test_export_is_accepted_by_mergekit_and_says_the_same() -> None:
    for path in SAMPLES:
        recipe = load_recipe(path)
        text = dumps_yaml(recipe)
        config = MergeConfiguration.model_validate(yaml.safe_load(text))
        assert config.merge_method == recipe.method
        references = [str(m.model) for m in config.models or []]
        references += [str(src.model) for s in config.slices or [] for src in s.sources]
        assert {r for r in references} <= {e.reference for e in recipe.models.values()}
        if recipe.base:
            assert str(config.base_model) == recipe.models[recipe.base].reference


def test_yaml_recipe_yaml_recipe_is_stable() -> None:
    for text in (TIES_CARD, SLERP_CARD):
        recipe = loads_yaml(text)
        exported = dumps_yaml(recipe)
        again = loads_yaml(exported)
        assert again == recipe
        assert dumps_yaml(again) == exported
        # mergekit reads the original and the export to the same configuration.
        original = MergeConfiguration.model_validate(yaml.safe_load(text))
        ours = MergeConfiguration.model_validate(yaml.safe_load(exported))
        assert original.merge_method == ours.merge_method
        assert original.base_model == ours.base_model
        assert original.parameters.keys() == ours.parameters.keys()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_toml_yaml_toml_keeps_names_seed_output(path: Path) -> None:
    recipe = load_recipe(path)
    back = loads_yaml(dumps_yaml(recipe))
    assert back == recipe
    assert dumps_toml(back) == dumps_toml(recipe)


def test_slices_form_keeps_model_order_and_unused_models() -> None:
    recipe = loads_toml(
        """
[merge]
method = "passthrough"
seed = 3
[models.zeta]
source = "org/zeta"
[models.alpha]
source = "org/alpha"
[models.spare]
source = "org/spare"
[[slices]]
sources = [{ model = "alpha", layers = [0, 2] }]
[[slices]]
sources = [{ model = "zeta", layers = [0, 2], parameters = { scale = 0.5 } }]
"""
    )
    text = dumps_yaml(recipe)
    assert "--random-seed 3" in text
    back = loads_yaml(text)
    assert list(back.models) == ["zeta", "alpha", "spare"]
    assert back == recipe


def test_yaml_without_meta_gets_derived_names_and_meta_survives_edits() -> None:
    recipe = loads_toml(
        '[merge]\nmethod = "linear"\n[models.first]\nsource = "org/a"\n'
        "[models.first.parameters]\nweight = 1\n"
    )
    text = dumps_yaml(recipe)
    edited = text.replace("model: org/a", "model: org/renamed")
    back = loads_yaml(edited)
    # The meta comment names org/a; a model it does not know gets a derived name.
    assert list(back.models) == ["renamed"]
    without = "\n".join(line for line in text.splitlines() if "# mergetui:" not in line)
    assert list(loads_yaml(without).models) == ["a"]


def test_strings_that_look_like_numbers_stay_strings() -> None:
    recipe = Recipe(
        method="linear",
        models={"a": ModelEntry("a", "org/a", parameters={"weight": "1e-5"})},
        parameters={"normalize": "yes"},
    )
    text = dumps_yaml(recipe)
    assert yaml.safe_load(text)["models"][0]["parameters"]["weight"] == "1e-5"
    assert loads_yaml(text) == recipe


def test_multiline_chat_template_is_a_block() -> None:
    template = "{% for m in messages %}\n{{ m['content'] }}\n{% endfor %}"
    recipe = Recipe(method="linear", models={"a": ModelEntry("a", "a")}, chat_template=template)
    text = dumps_yaml(recipe)
    assert "chat_template: |" in text
    assert yaml.safe_load(text)["chat_template"] == template
    assert loads_yaml(text) == recipe


@pytest.mark.parametrize(
    ("recipe", "words"),
    [
        (Recipe(method="linear"), "no models"),
        (
            Recipe(
                method="passthrough",
                models={"a": ModelEntry("a", "a", parameters={"scale": 2.0})},
                slices=[Slice([SliceSource("a", (0, 1))])],
            ),
            "model parameters cannot be written with slices",
        ),
        (
            Recipe(
                method="linear",
                models={"a": ModelEntry("a", "org/x"), "b": ModelEntry("b", "org/x")},
            ),
            "same checkpoint",
        ),
        (
            Recipe(method="linear", models={"a": ModelEntry("a", "a")}, base="nope"),
            "'nope' is not one of the recipe's models",
        ),
        (
            Recipe(
                method="linear",
                models={"a": ModelEntry("a", "a")},
                tokenizer_source="a",
                tokenizer={"source": "a"},
            ),
            "both tokenizer_source and tokenizer",
        ),
        (Recipe(method="linear", models={"a": ModelEntry("a", "dir+x")}), "'+' or '@'"),
    ],
)
def test_export_refuses_what_yaml_cannot_say(recipe: Recipe, words: str) -> None:
    with pytest.raises(UserError) as info:
        dumps_yaml(recipe)
    assert words in info.value.message
    assert info.value.where

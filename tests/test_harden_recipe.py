"""Hostile recipes and faithful conversion (issue 13, items 3, 4, 11, 16 and 18's duplicate error).

- Alias bombs, deep nesting, overlong numbers and lists are refused with file:line before anything
  is built, by `load_recipe`, `mergetui validate` and `mergetui merge` alike. Those run in a child
  process with a time and memory bound, so a blow-up that came back fails the test instead of
  taking the machine.
- NaN, infinities and absurd magnitudes are validation errors that stop a merge of real checkpoints.
- A gradient is read at a cost that does not grow with its length.
- mergekit YAML -> TOML -> YAML says the same to mergekit's own parser, for every config in the
  tests, every sample and real-world configs shaped like those on model cards.
- `validate --offline` is the recipe alone; an untitled recipe shows one error, not two.
"""

from __future__ import annotations

import ast
import json
import re
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mergetui.cli import main
from mergetui.errors import UserError
from mergetui.recipe import resolve
from mergetui.recipe.io import load_recipe
from mergetui.recipe.limits import MAX_ENTRIES
from mergetui.recipe.methods import METHODS
from mergetui.recipe.model import Recipe
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.toml_write import dumps_toml
from mergetui.recipe.validate import validate_recipe
from mergetui.recipe.yaml_export import dumps_yaml
from mergetui.recipe.yaml_import import loads_yaml

TESTS = Path(__file__).resolve().parent
SAMPLES = TESTS.parent / "sample_recipes"


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("NO_COLOR", "1")


# ----------------------------------------------------------------------------------------------
# Items 3 and 4: what a recipe may ask for

_YAML_HEAD = "merge_method: linear\nmodels:\n  - model: ./a\n"


def _laughs(indent: str) -> str:
    """Nine levels of nine aliases each: 9**9 values once expanded, in under 600 bytes."""
    lines = [f'{indent}- &l1 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(2, 10):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"{indent}- &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


# name -> (text, line the error names, words of the message)
HOSTILE: dict[str, tuple[str, int, str]] = {
    # the bomb under a key mergekit does not know: refused while composing, before any key check
    "bomb-unknown-key.yaml": (_YAML_HEAD + "lol:\n" + _laughs("  "), 10, "expands to more than"),
    "bomb-in-parameters.yaml": (
        _YAML_HEAD + "parameters:\n  weight:\n" + _laughs("    "),
        11,
        "expands to more than",
    ),
    "alias-loop.yaml": (_YAML_HEAD + "parameters:\n  weight: &w [1, *w]\n", 5, "a loop"),
    "deep-flow.yaml": (
        _YAML_HEAD + "parameters:\n  weight: " + "[" * 1000 + "]" * 1000 + "\n",
        5,
        "nested more than 32 levels",
    ),
    "deep-block.yaml": (
        _YAML_HEAD + "parameters:\n" + "".join("  " * i + "a:\n" for i in range(1, 1001)),
        35,
        "nested more than 32 levels",
    ),
    "digits.yaml": (
        _YAML_HEAD + "parameters:\n  weight: " + "9" * 5000 + "\n",
        5,
        "100 characters",
    ),
    "deep-array.toml": (
        '[merge]\nmethod = "linear"\n[parameters]\nweight = ' + "[" * 1000 + "]" * 1000 + "\n",
        4,
        "nested more than 32 levels",
    ),
    "deep-inline.toml": (
        '[merge]\nmethod = "linear"\n[parameters]\nweight = ' + "{ a = " * 1000 + "1" + " }" * 1000,
        4,
        "nested more than 32 levels",
    ),
    "deep-dotted.toml": (
        '[merge]\nmethod = "linear"\n\n[parameters]\n' + ".".join(["a"] * 100_000) + " = 1\n",
        5,
        "nested more than 32 levels",
    ),
    "digits.toml": ('[merge]\nmethod = "linear"\nseed = ' + "9" * 5000 + "\n", 3, "100 characters"),
    # 300,000 anchors (1.5 MB): over the file size limit, refused before reading
    "huge-gradient.toml": (
        '[merge]\nmethod = "linear"\n[parameters]\nweight = [' + "0.5, " * 300_000 + "]\n",
        0,
        "limited to 1024 KiB",
    ),
    # 100,000 anchors (600 KB): a file of allowed size, with one list too long
    "long-gradient.toml": (
        '[merge]\nmethod = "linear"\n[models.a]\nsource = "./a"\n\n[parameters]\nweight = ['
        + "0.5, " * 100_000
        + "]\n",
        7,
        f"at most {MAX_ENTRIES:,} are allowed",
    ),
}

_CHILD = """
import json, sys
from pathlib import Path
from mergetui.cli import main
from mergetui.errors import UserError
from mergetui.recipe.io import load_recipe

report, out_dir, *paths = sys.argv[1:]
results = {}
for path in paths:
    try:
        load_recipe(path)
        where = None
    except UserError as exc:
        where = exc.where
    out = Path(out_dir) / Path(path).stem
    results[path] = {
        "load": where,
        "validate": main(["validate", path]),
        "merge": main(["merge", path, "--out", str(out)]),
    }
Path(report).write_text(json.dumps(results))
"""


def _bounded() -> None:
    """In the child: at most 3 GiB of address space (a returning blow-up fails, it does not swap)."""
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def test_hostile_recipes_are_refused_with_their_line_by_load_validate_and_merge(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    paths = []
    for name, (text, _line, _words) in HOSTILE.items():
        path = tmp_path / name
        path.write_text(text)
        paths.append(str(path))
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(report), str(tmp_path / "out"), *paths],
        capture_output=True,
        text=True,
        timeout=300,  # each file takes well under a second; an alias bomb never ends
        preexec_fn=_bounded,
        env={**__import__("os").environ, "COLUMNS": "400"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "RecursionError" not in output
    results = json.loads(report.read_text())
    for name, (_text, line, words) in HOSTILE.items():
        path = str(tmp_path / name)
        where = f"{path}:{line}" if line else path
        assert results[path] == {"load": where, "validate": 1, "merge": 1}, name
        assert re.search(re.escape(where) + r"\b.*" + re.escape(words), output), name
    assert not (tmp_path / "out").exists()


def test_aliases_and_merge_keys_of_sane_size_are_still_read() -> None:
    text = """\
models:
  - model: org/a
    parameters: &common
      weight: [0.2, 0.5, 0.8]
      density: 0.5
  - model: org/b
    parameters:
      <<: *common
      weight: 0.3
  - model: org/c
    parameters: *common
merge_method: ties
base_model: org/a
"""
    recipe = loads_yaml(text, "ok.yaml")
    assert recipe.models["c"].parameters == {"weight": [0.2, 0.5, 0.8], "density": 0.5}
    assert recipe.models["b"].parameters == {"weight": 0.3, "density": 0.5}


def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "recipe.toml"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_recipe(fifo)  # opening it would wait for a writer forever
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():  # release the blocked reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_recipe opened the FIFO and waited for a writer")
    assert isinstance(outcome[0], UserError) and "not a regular file" in outcome[0].message


def test_nesting_and_list_limits_leave_real_recipes_alone() -> None:
    for path in sorted(SAMPLES.glob("*.toml")):
        load_recipe(path)
    gradient = ", ".join(["0.5"] * MAX_ENTRIES)
    recipe = loads_toml(f'[merge]\nmethod = "linear"\n[parameters]\nweight = [{gradient}]\n')
    assert len(recipe.parameters["weight"]) == MAX_ENTRIES
    # brackets inside strings are not nesting
    template = "[" * 100 + "{{ messages }}" + "]" * 100
    recipe = loads_toml(f'[merge]\nmethod = "linear"\nchat_template = "{template}"\n')
    assert recipe.chat_template == template


def _toml(models: dict[str, Path], weight: str, normalize: bool = True) -> str:
    text = '[merge]\nmethod = "linear"\ndtype = "float32"\n'
    for name in ("a", "b"):
        text += f'\n[models.{name}]\nsource = "{models[name]}"\n'
    return text + f"\n[parameters]\nweight = {weight}\nnormalize = {str(normalize).lower()}\n"


def _yaml(models: dict[str, Path], weight: str) -> str:
    return (
        f"models:\n  - model: {models['a']}\n  - model: {models['b']}\n"
        f"merge_method: linear\ndtype: float32\nparameters:\n  weight: {weight}\n"
    )


@pytest.mark.parametrize(
    ("fmt", "weight", "words"),
    [
        ("toml", "nan", "finite"),
        ("toml", "inf", "finite"),
        ("toml", "-inf", "finite"),
        ("toml", "1e999", "finite"),
        ("toml", '"nan"', "finite"),
        ("toml", "[0.5, nan]", "finite"),
        ("toml", "1e308", "between -1000 and 1000"),
        ("yaml", ".nan", "finite"),
        ("yaml", ".inf", "finite"),
        ("yaml", "-.inf", "finite"),
        ("yaml", "[{filter: mlp, value: .nan}, {value: 0.5}]", "finite"),
        ("yaml", "-1e308", "between -1000 and 1000"),
    ],
)
def test_non_finite_and_absurd_weights_stop_validate_and_merge(
    llama_family: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
    weight: str,
    words: str,
) -> None:
    recipe = tmp_path / f"r.{fmt}"
    text = (
        _toml(llama_family, weight, normalize=False)
        if fmt == "toml"
        else _yaml(llama_family, weight)
    )
    recipe.write_text(text)
    line = next(
        i for i, row in enumerate(text.splitlines(), 1) if row.lstrip().startswith("weight")
    )
    out = tmp_path / "merged"

    assert main(["validate", str(recipe)]) == 1
    printed = capsys.readouterr().out
    assert f"{recipe}:{line}" in printed and words in printed and "weight" in printed
    assert main(["merge", str(recipe), "--out", str(out)]) == 1
    assert words in capsys.readouterr().out
    assert not out.exists()


def test_numbers_within_limits_merge(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(llama_family, "[-1000, 1000]", normalize=False))
    assert [p.message for p in validate_recipe(load_recipe(recipe)) if p.is_error] == []


def test_seed_and_layer_numbers_are_checked(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    path = tmp_path / "r.toml"
    path.write_text(
        '[merge]\nmethod = "passthrough"\nseed = 4294967296\n[models.a]\nsource = "./a"\n'
        '[[slices]]\nsources = [{ model = "a", layers = [0, 1000000000] }]\n'
    )
    problems = {p.where: p for p in validate_recipe(load_recipe(path), offline=True)}
    assert "seed must be a whole number from 0 to 4294967295" in problems["merge.seed"].message
    assert problems["merge.seed"].line == 3
    assert "goes past layer 100,000" in problems["slices.0.sources.0.layers"].message


def test_list_limit_through_validate_and_merge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    path = tmp_path / "r.yaml"
    anchors = ", ".join(["1"] * (MAX_ENTRIES + 1))
    path.write_text(
        f"{_YAML_HEAD}parameters:\n  weight:\n    - filter: mlp\n      value: [{anchors}]\n"
    )
    assert main(["validate", str(path)]) == 1
    assert f"{path}:7" in capsys.readouterr().out
    assert main(["merge", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{path}:7" in err and f"{MAX_ENTRIES + 1:,} entries" in err


def test_a_gradient_costs_the_same_whatever_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tensor reads the two anchors around it: the coercions do not grow with the length."""
    calls = []
    real = resolve.coerce

    def counting(value: Any, ptype: Any) -> Any:
        calls.append(value)
        return real(value, ptype)

    monkeypatch.setattr(resolve, "coerce", counting)
    gradient = [i / (MAX_ENTRIES - 1) for i in range(MAX_ENTRIES)]
    for t in (0.0, 0.25, 0.5, 1.0):
        calls.clear()
        assert resolve.evaluate(gradient, "model.layers.3.mlp.up_proj.weight", t, "float") == (
            pytest.approx(t)
        )
        assert len(calls) <= 3
    # anchors that need coercing are still all checked, as mergekit does
    with pytest.raises(resolve.ParameterValueError):
        resolve.evaluate(["0.5", "abc", "1"], "x", 0.0, "float")


# ----------------------------------------------------------------------------------------------
# Item 11: YAML -> TOML -> YAML says the same to mergekit

REAL_WORLD = {
    # dare_ties whose base is named only as base_model, pinned to a branch (it became a fifth model)
    "daredevil-dare-ties.yaml": """\
models:
  - model: mistralai/Mistral-7B-v0.1
    # No parameters necessary for base model
  - model: samir-fama/SamirGPT-v1
    parameters:
      density: 0.53
      weight: 0.4
  - model: abacusai/Slerp-CM-mist-dpo
    parameters:
      density: 0.53
      weight: 0.3
  - model: EmbeddedLLM/Mistral-7B-Merge-14-v0.2
    parameters:
      density: 0.53
      weight: 0.3
merge_method: dare_ties
base_model: mistralai/Mistral-7B-v0.1@main
parameters:
  int8_mask: true
dtype: bfloat16
""",
    # a chat vector: per-model weights with filters, the base only in base_model
    "llama3-chat-vector.yaml": """\
merge_method: task_arithmetic
base_model: meta-llama/Meta-Llama-3-8B
models:
  - model: meta-llama/Meta-Llama-3-8B-Instruct
    parameters:
      weight:
        - filter: embed_tokens
          value: 0.0
        - filter: lm_head
          value: 0.0
        - value: 1.0
  - model: beomi/Llama-3-Open-Ko-8B
    parameters:
      weight:
        - filter: mlp
          value: [0.8, 1.0]
        - value: 1.0
dtype: bfloat16
""",
    "neuralbeagle-slerp.yaml": """\
slices:
  - sources:
      - model: mlabonne/NeuralBeagle14-7B
        layer_range: [0, 32]
      - model: mlabonne/NeuralDaredevil-7B@main
        layer_range: [0, 32]
merge_method: slerp
base_model: mlabonne/NeuralBeagle14-7B
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
""",
    "goliath-passthrough.yaml": """\
slices:
  - sources:
    - model: Xwin-LM/Xwin-LM-70B-V0.1
      layer_range: [0, 16]
  - sources:
    - model: Sao10K/Euryale-1.3-L2-70B
      layer_range: [8, 24]
  - sources:
    - model: Xwin-LM/Xwin-LM-70B-V0.1
      layer_range: [17, 32]
  - sources:
    - model: Sao10K/Euryale-1.3-L2-70B
      layer_range: [25, 40]
merge_method: passthrough
dtype: float16
""",
    "model-stock.yaml": """\
models:
  - model: mistralai/Mistral-7B-Instruct-v0.2
  - model: HuggingFaceH4/zephyr-7b-beta
  - model: teknium/OpenHermes-2.5-Mistral-7B
merge_method: model_stock
base_model: mistralai/Mistral-7B-v0.1
dtype: bfloat16
""",
    # slices with per-source parameters and filters, a revision on one source
    "qwen2-ties-slices.yaml": """\
slices:
  - sources:
      - model: Qwen/Qwen2-7B
        layer_range: [0, 28]
      - model: Qwen/Qwen2-7B-Instruct@main
        layer_range: [0, 28]
        parameters:
          density:
            - filter: self_attn
              value: 0.6
            - value: 0.4
          weight: [0.3, 0.7]
      - model: cognitivecomputations/dolphin-2.9.2-qwen2-7b
        layer_range: [0, 28]
        parameters:
          density: 0.5
          weight: 0.5
merge_method: ties
base_model: Qwen/Qwen2-7B
parameters:
  normalize: true
tokenizer_source: base
dtype: bfloat16
""",
    # the base listed explicitly, last and without parameters: it stays listed
    "breadcrumbs-listed-base.yaml": """\
models:
  - model: NousResearch/Hermes-2-Pro-Mistral-7B
    parameters: {weight: 0.5, density: 0.9, gamma: 0.01}
  - model: WizardLMTeam/WizardMath-7B-V1.1
    parameters: {weight: 0.5, density: 0.9, gamma: 0.01}
  - model: mistralai/Mistral-7B-v0.1
merge_method: breadcrumbs_ties
base_model: mistralai/Mistral-7B-v0.1
parameters:
  normalize: true
dtype: bfloat16
""",
}

# YAML 1.1 reads `1e-5` as a string, which mergekit turns into a number for numeric parameters;
# mergetui reads it as the number and writes it as one. Compare such strings as numbers.
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)")


def _as_mergekit_sees_it(text: str) -> Any:
    """The config as mergekit 0.1.5 parses it, as plain data (its own model_dump trips on some)."""
    from mergekit.config import MergeConfiguration
    from pydantic import BaseModel

    def plain(obj: Any) -> Any:
        if isinstance(obj, BaseModel):
            return {key: plain(getattr(obj, key)) for key in type(obj).model_fields}
        if isinstance(obj, (list, tuple)):
            return [plain(item) for item in obj]
        if isinstance(obj, dict):
            return {key: plain(value) for key, value in obj.items()}
        if isinstance(obj, str) and _NUMBER.fullmatch(obj):
            return float(obj)
        return obj

    return plain(MergeConfiguration.model_validate(yaml.safe_load(text)))


def _configs_in_the_tests() -> dict[str, str]:
    """Every string in the test files that is a mergekit config mergekit and mergetui both read."""
    from mergekit.config import MergeConfiguration

    found = {}
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if "merge_method" not in node.value:
                continue
            try:
                MergeConfiguration.model_validate(yaml.safe_load(node.value))
                loads_yaml(node.value)
            except Exception:  # templates, fragments, configs written to be refused
                continue
            found[f"{path.name}:{node.lineno}"] = node.value
    return found


def _all_configs() -> dict[str, str]:
    configs = dict(REAL_WORLD)
    configs.update(_configs_in_the_tests())
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix in (".yaml", ".yml"):
            configs[path.name] = path.read_text()
        elif path.suffix == ".toml":
            configs[path.name] = dumps_yaml(load_recipe(path))
    return configs


def test_yaml_toml_yaml_says_the_same_to_mergekit() -> None:
    configs = _all_configs()
    assert len(configs) >= len(REAL_WORLD) + 10 + 8  # the samples and the tests' configs were found
    for name, text in configs.items():
        toml = dumps_toml(loads_yaml(text, name))
        again = dumps_yaml(loads_toml(toml, name))
        assert _as_mergekit_sees_it(again) == _as_mergekit_sees_it(text), name


def test_a_base_named_only_as_base_model_stays_out_of_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = tmp_path / "daredevil.yaml"
    original.write_text(REAL_WORLD["daredevil-dare-ties.yaml"])
    toml, back = tmp_path / "daredevil.toml", tmp_path / "back.yaml"
    assert main(["convert", str(original), str(toml)]) == 0
    assert main(["convert", str(toml), str(back)]) == 0
    recipe = load_recipe(toml)
    assert recipe.base is not None and recipe.models[recipe.base].reference == (
        "mistralai/Mistral-7B-v0.1@main"
    )
    assert recipe.models[recipe.base].listed is False
    assert "listed = false" in toml.read_text()
    config = yaml.safe_load(back.read_text())
    assert [m["model"] for m in config["models"]] == [
        "mistralai/Mistral-7B-v0.1",
        "samir-fama/SamirGPT-v1",
        "abacusai/Slerp-CM-mist-dpo",
        "EmbeddedLLM/Mistral-7B-Merge-14-v0.2",
    ]
    assert config["base_model"] == "mistralai/Mistral-7B-v0.1@main"
    assert _as_mergekit_sees_it(back.read_text()) == _as_mergekit_sees_it(original.read_text())


def test_an_unlisted_base_is_listed_when_leaving_it_out_would_change_the_merge() -> None:
    recipe = loads_yaml(REAL_WORLD["model-stock.yaml"])
    base = recipe.base
    assert base is not None and not recipe.models[base].listed
    # moved first, it is no longer where mergekit would add it: it must be listed
    recipe.models = {base: recipe.models[base]} | {
        n: e for n, e in recipe.models.items() if n != base
    }
    assert yaml.safe_load(dumps_yaml(recipe))["models"][0]["model"] == "mistralai/Mistral-7B-v0.1"


# ----------------------------------------------------------------------------------------------
# Item 16: --offline is the recipe alone


def test_validate_offline_says_nothing_about_the_cache(capsys: pytest.CaptureFixture[str]) -> None:
    samples = [str(p) for p in sorted(SAMPLES.glob("*.toml"))]
    assert main(["validate", "--offline", *samples]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"{sample}: ok" for sample in samples]
    # without --offline the uncached Hub ids are still reported (they are downloaded when merging)
    assert main(["validate", samples[0]]) == 0
    assert "not in the local Hugging Face cache" in capsys.readouterr().out


def test_validate_offline_still_checks_local_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.toml"
    path.write_text('[merge]\nmethod = "linear"\n[models.a]\nsource = "./missing"\n')
    assert main(["validate", "--offline", str(path)]) == 1
    assert "model folder not found" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Item 18: the untitled recipe's two errors that said the same thing


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_recipe_without_models_has_one_error(method: str) -> None:
    problems = validate_recipe(Recipe(method=method), offline=True)
    # (a required shared parameter such as slerp's t is another problem, reported too)
    about_models = [p for p in problems if p.where in ("models", "merge.base")]
    assert [(p.level, p.message) for p in about_models] == [("error", "the recipe has no models")]


def test_a_slice_without_sources_has_one_error() -> None:
    from mergetui.recipe.model import Slice

    recipe = Recipe(method="passthrough", slices=[Slice(sources=[])])
    errors = [p.message for p in validate_recipe(recipe, offline=True) if p.is_error]
    assert errors == ["the recipe has no models", "slice 0 has no sources"]


async def test_the_untitled_recipe_shows_one_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textual.widgets import OptionList

    from mergetui.paths import CONFIG_ENV
    from mergetui.tui.app import MergeTuiApp
    from mergetui.tui.recipe.screen import RecipeScreen

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.4)
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RecipeScreen)
        assert [p.message for p in screen.problems] == ["the recipe has no models"]
        assert screen.query_one("#problems-table", OptionList).option_count == 1

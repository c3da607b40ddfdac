"""Validation: one test per problem, each checking the place, the line and the fix it reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from mergetui.recipe.io import load_recipe
from mergetui.recipe.model import ModelEntry, Recipe, Slice, SliceSource
from mergetui.recipe.toml_read import loads_toml
from mergetui.recipe.validate import Problem, has_errors, validate_recipe
from mergetui.recipe.yaml_import import loads_yaml

SAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("sample_recipes").glob("*.toml"))


@pytest.fixture(autouse=True)
def _empty_hub_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hub ids are looked up in an empty cache: the machine's own cache must not change results."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hub-cache")))


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    """Empty model folders a, b, c, d, base beside the recipe (enough for offline checks)."""
    for name in ("a", "b", "c", "d", "base"):
        (tmp_path / name).mkdir()
    return tmp_path


def check(text: str, folder: Path, *, offline: bool = True) -> list[Problem]:
    """Validate TOML text written as folder/recipe.toml (so relative paths and lines resolve)."""
    path = folder / "recipe.toml"
    path.write_text(text)
    return validate_recipe(load_recipe(path), offline=offline)


def at(problems: list[Problem], where: str) -> Problem:
    matches = [p for p in problems if p.where == where]
    assert matches, f"no problem at {where}: {[(p.where, p.message) for p in problems]}"
    return matches[0]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def models(*names: str, **params: str) -> str:
    """[models.x] tables for local folders, with optional raw parameter lines per model."""
    out = []
    for name in names:
        out.append(f'[models.{name}]\nsource = "{name}"\n')
        if name in params:
            out.append(f"[models.{name}.parameters]\n{params[name]}\n")
    return "".join(out)


TIES = '[merge]\nmethod = "ties"\nbase = "base"\nseed = 1\n' + models(
    "base", "a", "b", a="weight = 0.5", b="weight = 0.5"
)


def test_clean_recipe_has_no_problems(folders: Path) -> None:
    assert check(TIES, folders) == []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_have_no_errors(path: Path) -> None:
    problems = validate_recipe(load_recipe(path), offline=True)
    assert not has_errors(problems), [(p.where, p.message) for p in problems if p.is_error]


def test_unknown_method(folders: Path) -> None:
    text = TIES.replace('"ties"', '"slrep"')
    problem = at(check(text, folders), "merge.method")
    assert problem.is_error
    assert "unknown merge method 'slrep'" in problem.message
    assert problem.fix == "did you mean 'slerp'?"
    assert (problem.file, problem.line) == (str(folders / "recipe.toml"), 2)
    assert problem.location == f"{folders / 'recipe.toml'}:2 (merge.method)"


def test_missing_per_model_parameter(folders: Path) -> None:
    text = TIES.replace("[models.b.parameters]\nweight = 0.5\n", "")
    problem = at(check(text, folders), "models.b.parameters.weight")
    assert problem.is_error
    assert "missing required parameter 'weight' for model 'b'" in problem.message
    assert "[models.b.parameters]" in (problem.fix or "")
    # The base takes no task-vector weight, and a top-level weight covers every model.
    assert not [p for p in check(text, folders) if p.where == "models.base.parameters.weight"]
    assert check(text + "[parameters]\nweight = 1\n", folders) == []


def test_missing_shared_parameter(folders: Path) -> None:
    text = '[merge]\nmethod = "slerp"\nbase = "a"\n' + models("a", "b")
    problem = at(check(text, folders), "parameters.t")
    assert problem.is_error and "missing required parameter 't'" in problem.message


def test_parameter_set_only_through_filters_is_a_warning_offline(folders: Path) -> None:
    text = '[merge]\nmethod = "slerp"\nbase = "a"\n' + models("a", "b")
    text += '[parameters]\nt = [{ filter = "mlp", value = 0.2 }]\n'
    problem = at(check(text, folders), "parameters.t")
    assert problem.level == "warning"
    assert "'mlp'" in problem.message and "{ value = 0.5 }" in (problem.fix or "")


def test_base_needed(folders: Path) -> None:
    text = TIES.replace('base = "base"\n', "")
    problem = at(check(text, folders), "merge.base")
    assert problem.is_error and "ties needs a base model" in problem.message
    assert "base, a, b" in (problem.fix or "")


def test_base_names_unknown_model(folders: Path) -> None:
    text = TIES.replace('base = "base"', 'base = "bsae"')
    problem = at(check(text, folders), "merge.base")
    assert "base model 'bsae' is not one of the recipe's models" in problem.message
    assert problem.fix == "did you mean 'base'?"
    assert problem.line == 3


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        (
            '[merge]\nmethod = "slerp"\nbase = "a"\n[parameters]\nt = 0.5\n'
            + models("a", "b", "c"),
            "models",
            "slerp takes exactly 2 models (the base included); got 3",
        ),
        (
            '[merge]\nmethod = "nearswap"\nbase = "a"\n[parameters]\nt = 0.5\n' + models("a"),
            "models",
            "nearswap takes exactly 2 models",
        ),
        (
            '[merge]\nmethod = "arcee_fusion"\nbase = "a"\n' + models("a", "b", "c"),
            "models",
            "arcee_fusion takes exactly 2 models",
        ),
        (
            '[merge]\nmethod = "model_stock"\nbase = "a"\n' + models("a", "b"),
            "models",
            "model_stock takes at least 3 models (the base included); got 2",
        ),
        (
            '[merge]\nmethod = "nuslerp"\nbase = "a"\n[parameters]\nweight = 1\n'
            + models("a", "b", "c", "d"),
            "models",
            "nuslerp takes exactly 2 models besides the base; got 3",
        ),
        (
            '[merge]\nmethod = "passthrough"\n' + models("a", "b"),
            "models",
            "use [[slices]]",
        ),
        (
            '[merge]\nmethod = "passthrough"\n'
            + models("a", "b")
            + '[[slices]]\nsources = [{ model = "a", layers = [0, 2] }, { model = "b", layers = [0, 2] }]\n',
            "slices.0",
            "passthrough takes exactly 1 model in slices.0; got 2",
        ),
    ],
)
def test_wrong_number_of_models(text: str, where: str, words: str, folders: Path) -> None:
    problem = at(check(text, folders), where)
    assert problem.is_error
    assert words in problem.message


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2"])
def test_density_out_of_range(bad: str, folders: Path) -> None:
    text = TIES.replace(
        "[models.a.parameters]\nweight = 0.5",
        f"[models.a.parameters]\nweight = 0.5\ndensity = {bad}",
    )
    problem = at(check(text, folders), "models.a.parameters.density")
    assert problem.is_error
    assert f"density must be in (0, 1]; got {bad}" in problem.message
    assert "0 < density <= 1" in (problem.fix or "")


def test_density_checked_inside_gradients_and_filters(folders: Path) -> None:
    text = (
        TIES + '[parameters]\ndensity = [{ filter = "mlp", value = [1, 0.5, 0] }, { value = 2 }]\n'
    )
    problems = check(text, folders)
    assert "got 0" in at(problems, "parameters.density.0.value.2").message
    assert "got 2" in at(problems, "parameters.density.1.value").message
    assert at(problems, "parameters.density.1.value").line == line_of(text, "density = [")


def test_slerp_t_out_of_range_in_a_filter_gradient(folders: Path) -> None:
    text = '[merge]\nmethod = "slerp"\nbase = "a"\n' + models("a", "b")
    text += '[parameters]\nt = [\n  { filter = "self_attn", value = [0, 0.5, 1.2] },\n  { value = 0.5 },\n]\n'
    problem = at(check(text, folders), "parameters.t.0.value.2")
    assert problem.is_error and "t must be in [0, 1]; got 1.2" in problem.message
    assert problem.line == line_of(text, "self_attn")


@pytest.mark.parametrize(
    ("method", "setting", "where", "words"),
    [
        ("nearswap", "t = 0", "parameters.t", "t must be > 0; got 0"),
        ("karcher", "max_iter = 0", "parameters.max_iter", "max_iter must be >= 1"),
        ("breadcrumbs", "gamma = 2", "parameters.gamma", "gamma must be in [0, 1]"),
        ("della", "epsilon = -0.1", "parameters.epsilon", "epsilon must be in [0, 1]"),
        (
            "sce",
            "select_topk = [0.5, 1.5]",
            "parameters.select_topk.1",
            "select_topk must be in [0, 1]",
        ),
    ],
)
def test_other_ranges_from_the_spec(
    method: str, setting: str, where: str, words: str, folders: Path
) -> None:
    text = (
        f'[merge]\nmethod = "{method}"\nbase = "a"\nseed = 1\n[parameters]\nweight = 1\nt = 0.5\n'
    )
    text = text.replace("t = 0.5\n", "") if setting.startswith("t ") else text
    text += setting + "\n" + models("a", "b")
    problem = at(check(text, folders), where)
    assert problem.is_error and words in problem.message


def test_wrong_type(folders: Path) -> None:
    text = TIES.replace(
        "[models.a.parameters]\nweight = 0.5", '[models.a.parameters]\nweight = "lots"'
    )
    problem = at(check(text, folders), "models.a.parameters.weight")
    assert problem.is_error and "'lots' is not a number" in problem.message
    text = TIES + "[parameters]\nnormalize = 2\n"
    assert "true or false" in at(check(text, folders), "parameters.normalize").message


def test_unknown_parameter_is_a_warning(folders: Path) -> None:
    text = TIES + "[parameters]\nwieght = 1\n"
    problem = at(check(text, folders), "parameters.wieght")
    assert problem.level == "warning"
    assert "ties has no parameter 'wieght'" in problem.message
    assert problem.fix == "did you mean 'weight'?"
    text = '[merge]\nmethod = "arcee_fusion"\nbase = "a"\n[parameters]\nt = 1\n' + models("a", "b")
    assert at(check(text, folders), "parameters.t").fix == "arcee_fusion takes no parameters"


def test_shared_parameter_set_per_model_is_ignored(folders: Path) -> None:
    text = '[merge]\nmethod = "slerp"\nbase = "a"\n[parameters]\nt = 0.5\n' + models(
        "a", "b", b="t = 0.9"
    )
    problem = at(check(text, folders), "models.b.parameters.t")
    assert problem.level == "warning" and "per-model setting is ignored" in problem.message


def test_slice_sources_of_different_lengths(folders: Path) -> None:
    text = '[merge]\nmethod = "linear"\n[parameters]\nweight = 1\n' + models("a", "b")
    text += '[[slices]]\nsources = [{ model = "a", layers = [0, 4] }, { model = "b", layers = [0, 3] }]\n'
    problem = at(check(text, folders), "slices.0")
    assert problem.is_error and "different numbers of layers (4, 3)" in problem.message
    assert problem.line == line_of(text, "[[slices]]")


def test_empty_layer_range_and_unknown_slice_model(folders: Path) -> None:
    text = '[merge]\nmethod = "passthrough"\n' + models("a")
    text += '[[slices]]\nsources = [{ model = "a", layers = [4, 2] }]\n'
    text += '[[slices]]\nsources = [{ model = "aa", layers = [0, 2] }]\n'
    problems = check(text, folders)
    assert "[4, 2] is empty" in at(problems, "slices.0.sources.0.layers").message
    unknown = at(problems, "slices.1.sources.0.model")
    assert "slice source 'aa' is not one of the recipe's models" in unknown.message
    assert unknown.fix == "did you mean 'a'?"


def test_model_path_missing_and_hub_id_not_cached(folders: Path) -> None:
    text = TIES.replace('source = "a"', 'source = "./missing/a"').replace(
        'source = "b"', 'source = "org/not-cached"'
    )
    problems = check(text, folders)
    missing = at(problems, "models.a.source")
    assert missing.is_error and str(folders / "missing" / "a") in missing.message
    assert str(folders) in (missing.fix or "")
    hub = at(problems, "models.b.source")
    assert hub.level == "warning" and "not in the local Hugging Face cache" in hub.message


def test_hub_id_in_the_cache_is_found(folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = folders / "cache"
    snapshot = cache / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--org--cached" / "refs").mkdir()
    (cache / "models--org--cached" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    text = TIES.replace('source = "b"', 'source = "org/cached"')
    assert check(text, folders) == []


@pytest.mark.parametrize(
    ("value", "fix"), [("bf16", "did you mean 'bfloat16'?"), ("float8", "did you mean")]
)
def test_unknown_dtype(value: str, fix: str, folders: Path) -> None:
    text = TIES.replace("seed = 1", f'seed = 1\ndtype = "{value}"\nout_dtype = "torch.float16"')
    problems = check(text, folders)
    problem = at(problems, "merge.dtype")
    assert problem.is_error and f"unknown dtype '{value}'" in problem.message
    assert fix in (problem.fix or "")
    assert not [p for p in problems if p.where == "merge.out_dtype"]


def test_random_method_without_seed(folders: Path) -> None:
    text = TIES.replace('"ties"', '"dare_ties"').replace("seed = 1\n", "")
    problem = at(check(text, folders), "merge.method")
    assert problem.level == "warning" and "seed" in (problem.fix or "")


def test_tokenizer_settings(folders: Path) -> None:
    text = TIES.replace(
        "seed = 1", 'seed = 1\ntokenizer_source = "union"\n[merge.tokenizer]\nsource = "base"'
    )
    assert "both tokenizer_source" in at(check(text, folders), "merge.tokenizer").message
    text = TIES.replace('base = "base"\n', "").replace(
        "seed = 1", 'seed = 1\ntokenizer_source = "base"'
    )
    assert at(check(text, folders), "merge.tokenizer_source").is_error
    text = TIES.replace("seed = 1", 'seed = 1\ntokenizer_source = "bsae"')
    problem = at(check(text, folders), "merge.tokenizer_source")
    assert problem.level == "warning" and problem.fix == "did you mean 'base'?"


def test_model_parameters_with_slices(folders: Path) -> None:
    text = '[merge]\nmethod = "passthrough"\n' + models("a", "b", a="scale = 2.0")
    text += '[[slices]]\nsources = [{ model = "a", layers = [0, 2] }]\n'
    problems = check(text, folders)
    assert at(problems, "models.a.parameters").is_error
    unused = at(problems, "models.b")
    assert unused.level == "warning" and "not used by any slice" in unused.message


def test_same_checkpoint_twice(folders: Path) -> None:
    text = TIES.replace('source = "b"', 'source = "a"')
    problem = at(check(text, folders), "models.b.source")
    assert problem.is_error and "'a' and 'b' are the same checkpoint" in problem.message


def test_base_ignored_and_base_outside_slice(folders: Path) -> None:
    text = '[merge]\nmethod = "linear"\nbase = "a"\n[parameters]\nweight = 1\n' + models("a", "b")
    problem = at(check(text, folders), "merge.base")
    assert problem.level == "warning" and "does not use a base model" in problem.message
    text = '[merge]\nmethod = "task_arithmetic"\nbase = "base"\n[parameters]\nweight = 1\n'
    text += models("base", "a") + '[[slices]]\nsources = [{ model = "a", layers = [0, 2] }]\n'
    problem = at(check(text, folders), "slices.0.base")
    assert problem.is_error and "base model 'base' is not an input in slices.0" in problem.message


def test_no_models() -> None:
    problem = at(validate_recipe(Recipe(method="linear"), offline=True), "models")
    assert problem.is_error and problem.file is None and problem.location == "models"


def test_yaml_problems_point_into_the_yaml_file(folders: Path) -> None:
    text = "models:\n  - model: a\n  - model: b\n    parameters:\n      weight: 1\nmerge_method: ties\nbase_model: a\n"
    path = folders / "config.yaml"
    path.write_text(text)
    problems = validate_recipe(load_recipe(path), offline=True)
    assert problems == []
    # Without b's weight the problem points at b's entry in the YAML file.
    path.write_text(text.replace("    parameters:\n      weight: 1\n", ""))
    problem = at(validate_recipe(load_recipe(path), offline=True), "models.b.parameters.weight")
    assert (problem.file, problem.line) == (str(path), 3)


def test_relative_paths_start_from_base_dir(folders: Path) -> None:
    recipe = loads_yaml("models:\n  - model: a\nmerge_method: linear\nparameters:\n  weight: 1\n")
    assert validate_recipe(recipe, offline=True, base_dir=folders) == []
    elsewhere = folders / "d"
    # From elsewhere, "a" is no folder: it could be a Hub id (a warning)...
    problem = at(validate_recipe(recipe, offline=True, base_dir=elsewhere), "models.a.source")
    assert problem.level == "warning"
    # ...while "./a" can only be a folder (an error).
    recipe.models["a"].source = "./a"
    assert validate_recipe(recipe, offline=True, base_dir=folders) == []
    assert at(validate_recipe(recipe, offline=True, base_dir=elsewhere), "models.a.source").is_error


# ----------------------------------------------------------------------------------------------
# With checkpoints


def family_recipe(family: dict[str, Path], body: str, *names: str) -> Recipe:
    tables = "".join(f'[models.{n}]\nsource = "{family[n]}"\n' for n in names)
    return loads_toml(body + "\n" + tables)


def test_real_checkpoints_that_merge_cleanly(llama_family: dict[str, Path]) -> None:
    recipe = family_recipe(
        llama_family,
        '[merge]\nmethod = "ties"\nbase = "base"\n[parameters]\nweight = 0.5\ndensity = [1, 0.5]\n',
        "base",
        "a",
        "b",
    )
    assert validate_recipe(recipe) == []


def test_different_architectures(arch_models: dict[str, Path]) -> None:
    recipe = family_recipe(
        arch_models, '[merge]\nmethod = "linear"\n[parameters]\nweight = 1\n', "llama", "mistral"
    )
    problem = at(validate_recipe(recipe), "models.mistral.source")
    assert problem.is_error
    assert "MistralForCausalLM" in problem.message and "LlamaForCausalLM" in problem.message


def _copy_without(source: Path, target: Path, tensor: str) -> Path:
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors[tensor]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return target


def test_missing_tensor_is_named(llama_family: dict[str, Path], tmp_path: Path) -> None:
    family = dict(llama_family)
    family["a"] = _copy_without(family["a"], tmp_path / "a", "model.layers.2.mlp.up_proj.weight")
    recipe = family_recipe(
        family, '[merge]\nmethod = "linear"\n[parameters]\nweight = 1\n', "base", "a"
    )
    problem = at(validate_recipe(recipe), "models.a.source")
    assert problem.is_error
    assert (
        "'a' has no tensor model.layers.2.mlp.up_proj.weight, which 'base' has" in problem.message
    )


def test_missing_head_of_tied_model_is_a_warning(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    family = dict(llama_family)
    family["a"] = _copy_without(family["a"], tmp_path / "a", "lm_head.weight")
    recipe = family_recipe(
        family, '[merge]\nmethod = "linear"\n[parameters]\nweight = 1\n', "base", "a"
    )
    problems = validate_recipe(recipe)
    problem = at(problems, "models.a.source")
    assert problem.level == "warning" and "tied" in problem.message
    assert not has_errors(problems)


def test_shape_mismatch_names_tensor_and_shapes(
    tiny_model_factory, llama_family: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    family = dict(llama_family)
    family["narrow"] = tiny_model_factory("llama", seed=5, intermediate_size=96)
    recipe = family_recipe(
        family, '[merge]\nmethod = "linear"\n[parameters]\nweight = 1\n', "base", "narrow"
    )
    problem = at(validate_recipe(recipe), "models.narrow.source")
    assert problem.is_error
    assert (
        "tensor model.layers.0.mlp.down_proj.weight is [64, 96] in 'narrow' but [64, 128] in 'base'"
        in (problem.message)
    )
    assert "(and 11 more)" in problem.message  # 3 MLP matrices in 4 layers


def test_vocabulary_mismatch_needs_a_tokenizer_setting(
    tiny_model_factory, llama_family: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    family = dict(llama_family)
    family["wide"] = tiny_model_factory("llama", seed=6, vocab_size=400)
    body = '[merge]\nmethod = "linear"\n[parameters]\nweight = 1\n'
    problem = at(validate_recipe(family_recipe(family, body, "base", "wide")), "models.wide.source")
    assert "lm_head.weight is [400, 64] in 'wide' but [384, 64]" in problem.message
    assert "tokenizer_source" in (problem.fix or "")
    aligned = body.replace("[parameters]", 'tokenizer_source = "union"\n[parameters]')
    assert validate_recipe(family_recipe(family, aligned, "base", "wide")) == []


def test_different_depths_in_models_form(tiny_model_factory, llama_family: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    family = dict(llama_family)
    family["deep"] = tiny_model_factory("llama", seed=7, num_layers=6)
    recipe = family_recipe(
        family, '[merge]\nmethod = "linear"\n[parameters]\nweight = 1\n', "base", "deep"
    )
    problem = at(validate_recipe(recipe), "models.deep.source")
    assert problem.is_error and "'deep' has 6 layers but 'base' has 4" in problem.message


def test_layer_range_outside_the_model(llama_family: dict[str, Path]) -> None:
    body = '[merge]\nmethod = "passthrough"\n[[slices]]\nsources = [{ model = "a", layers = [2, 6] }]\n'
    recipe = family_recipe(llama_family, body, "a")
    problem = at(validate_recipe(recipe), "slices.0.sources.0.layers")
    assert problem.is_error and "go past the end of 'a', which has 4 layers" in problem.message
    assert problem.fix == "use a range within [0, 4]"
    # Offline nothing is opened, so nothing is known about the depth.
    assert validate_recipe(recipe, offline=True) == []


def test_filters_that_leave_tensors_unset_are_errors_with_checkpoints(
    llama_family: dict[str, Path],
) -> None:
    body = '[merge]\nmethod = "slerp"\nbase = "base"\n[parameters]\nt = [{ filter = "layers", value = 0.3 }]\n'
    recipe = family_recipe(llama_family, body, "base", "a")
    problems = validate_recipe(recipe)
    problem = at(problems, "parameters.t")
    assert problem.is_error
    assert "missing required parameter 't' for tensor model.embed_tokens.weight" in problem.message
    # Covering the rest with a catch-all entry fixes it.
    fixed = body.replace("value = 0.3 }]", "value = 0.3 }, { value = 0.5 }]")
    assert validate_recipe(family_recipe(llama_family, fixed, "base", "a")) == []


def test_della_density_and_epsilon_leave_the_unit_interval(llama_family: dict[str, Path]) -> None:
    body = '[merge]\nmethod = "della"\nbase = "base"\nseed = 1\n[parameters]\nweight = 1\ndensity = 0.1\n'
    recipe = family_recipe(llama_family, body, "base", "a")
    problem = at(validate_recipe(recipe), "models.a.parameters.epsilon")
    assert problem.is_error and "density 0.1 ± epsilon 0.15" in problem.message


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    recipe = Recipe(
        method="passthrough",
        models={"broken": ModelEntry("broken", str(tmp_path / "broken"))},
        slices=[Slice([SliceSource("broken", (0, 1))])],
    )
    problem = at(validate_recipe(recipe), "models.broken.source")
    assert problem.is_error and "cannot read 'broken'" in problem.message

"""The plan: mergekit's tensor set and order, slices and stacks, and every refusal before work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mergetui.errors import UserError
from mergetui.merge.plan import make_plan
from mergetui.recipe.model import ModelEntry, Recipe, Slice, SliceSource


def _recipe(method: str, models: dict[str, Path], **kwargs: object) -> Recipe:
    params = kwargs.pop("model_params", {})
    entries = {
        name: ModelEntry(name, str(path), parameters=dict(params.get(name, {})))
        for name, path in models.items()
    }
    return Recipe(method=method, models=entries, **kwargs)


def _layer_names(names: list[str], layer: int) -> list[str]:
    return [n for n in names if f".layers.{layer}." in n]


def test_models_form_tensor_order_and_inputs(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(
        "linear",
        {"base": llama_family["base"], "a": llama_family["a"]},
        model_params={"base": {"weight": 0.7}, "a": {"weight": 0.3}},
    )
    plan = make_plan(recipe, out=tmp_path / "out")
    names = [t.name for t in plan.tensors]
    assert names[0] == "model.embed_tokens.weight"
    assert names[-2:] in (
        ["model.norm.weight", "lm_head.weight"],
        ["lm_head.weight", "model.norm.weight"],
    )
    assert len(names) == len(set(names)) == 2 + 4 * 9 + 1
    # layers are contiguous and in order
    layer_seq = [t.layer for t in plan.tensors if t.layer is not None]
    assert layer_seq == sorted(layer_seq)
    assert plan.layer_count == 4
    embed = plan.tensors[0]
    assert [i.model for i in embed.inputs] == ["base", "a"]
    assert embed.inputs[0].file.name == "model.safetensors"
    assert embed.per_model[0]["weight"] == pytest.approx(0.7)
    assert embed.per_model[1]["weight"] == pytest.approx(0.3)
    assert plan.output_config["num_hidden_layers"] == 4
    assert plan.total_bytes == sum(t.nbytes for t in plan.tensors)
    assert plan.layout.filenames == ["model.safetensors"]
    assert plan.estimated_peak_bytes > 0


def test_passthrough_stack_renumbers_and_reuses_layers(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _recipe(
        "passthrough",
        {"x": llama_family["base"], "y": llama_family["a"]},
        slices=[
            Slice([SliceSource("x", (0, 3))]),
            Slice([SliceSource("y", (1, 4))]),
            Slice([SliceSource("x", (2, 4))]),
        ],
    )
    plan = make_plan(recipe, out=tmp_path / "out")
    assert plan.layer_count == 8
    assert plan.output_config["num_hidden_layers"] == 8
    by_name = {t.name: t for t in plan.tensors}
    q = "self_attn.q_proj.weight"
    expected = [("x", 0), ("x", 1), ("x", 2), ("y", 1), ("y", 2), ("y", 3), ("x", 2), ("x", 3)]
    for out_layer, (model, src_layer) in enumerate(expected):
        tensor = by_name[f"model.layers.{out_layer}.{q}"]
        assert tensor.layer == out_layer
        assert [(i.model, i.tensor) for i in tensor.inputs] == [
            (model, f"model.layers.{src_layer}.{q}")
        ]
    # embeddings from the first slice's model, norm and head from the last slice's model
    assert by_name["model.embed_tokens.weight"].inputs[0].model == "x"
    assert by_name["lm_head.weight"].inputs[0].model == "x"
    assert not any(".layers.8." in n for n in by_name)


def test_depth_upscaling_shape(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(
        "passthrough",
        {"m": llama_family["base"]},
        slices=[Slice([SliceSource("m", (0, 3))]), Slice([SliceSource("m", (1, 4))])],
    )
    plan = make_plan(recipe, out=tmp_path / "out")
    assert plan.layer_count == 6
    assert len(plan.tensors) == 2 + 6 * 9 + 1


def test_gradient_t_runs_over_each_slice(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(
        "linear",
        {"base": llama_family["base"], "a": llama_family["a"]},
        model_params={"base": {"weight": 1.0}, "a": {"weight": [0.0, 1.0]}},
    )
    plan = make_plan(recipe, out=tmp_path / "out")
    weights = {
        t.layer: t.per_model[1]["weight"] for t in plan.tensors if t.name.endswith("q_proj.weight")
    }
    assert weights == pytest.approx({0: 0.0, 1: 1 / 3, 2: 2 / 3, 3: 1.0})
    embed = plan.tensors[0]
    assert embed.per_model[1]["weight"] == pytest.approx(0.0)  # pre-layer weights use t = 0


def test_tied_embeddings_have_no_head(arch_models: dict[str, Path], tmp_path: Path) -> None:
    for arch in ("gemma", "gpt2"):
        recipe = _recipe(
            "linear",
            {"p": arch_models[arch], "q": arch_models[arch]},
            model_params={"p": {"weight": 1.0}, "q": {"weight": 1.0}},
        )
        plan = make_plan(recipe, out=tmp_path / arch)
        names = {t.name for t in plan.tensors}
        assert "lm_head.weight" not in names, arch
    gpt2_plan = make_plan(
        _recipe("linear", {"p": arch_models["gpt2"]}, model_params={"p": {"weight": 1.0}}),
        out=tmp_path / "g",
    )
    assert gpt2_plan.output_config["n_layer"] == 4
    assert gpt2_plan.tensors[0].name in ("transformer.wte.weight", "transformer.wpe.weight")


def test_head_missing_in_one_model_falls_back_to_its_embeddings(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    tied = tmp_path / "tied"
    shutil.copytree(llama_family["a"], tied)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tied / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(tied / "model.safetensors"), metadata={"format": "pt"})
    recipe = _recipe(
        "linear",
        {"base": llama_family["base"], "t": tied},
        model_params={"base": {"weight": 1.0}, "t": {"weight": 1.0}},
    )
    plan = make_plan(recipe, out=tmp_path / "out")
    head = next(t for t in plan.tensors if t.name == "lm_head.weight")
    assert [(i.model, i.tensor) for i in head.inputs] == [
        ("base", "lm_head.weight"),
        ("t", "model.embed_tokens.weight"),
    ]


def test_sharded_plan(sharded_llama: Path, tmp_path: Path) -> None:
    plan = make_plan(
        _recipe("passthrough", {"m": sharded_llama}), out=tmp_path / "out", shard_size=100_000
    )
    assert plan.shard_count > 1
    files = {i.file.name for t in plan.tensors for i in t.inputs}
    assert len(files) > 1  # inputs come from several input shards
    assert set(plan.layout.slots) == {t.name for t in plan.tensors}


# ---- refusals -------------------------------------------------------------------------------


def _copy_without(src: Path, dst: Path, drop: str) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    del tensors[drop]
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_tensor_names_model_and_tensor(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    broken = _copy_without(
        llama_family["a"], tmp_path / "broken", "model.layers.2.mlp.up_proj.weight"
    )
    recipe = _recipe(
        "linear",
        {"base": llama_family["base"], "broken": broken},
        model_params={"base": {"weight": 1.0}, "broken": {"weight": 1.0}},
    )
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    assert "model.layers.2.mlp.up_proj.weight" in info.value.message
    assert "'broken'" in info.value.message


def test_shape_mismatch_names_both_shapes(
    tiny_model_factory: object, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    wide = tiny_model_factory("llama", seed=5, intermediate_size=96)  # type: ignore[operator]
    recipe = _recipe(
        "linear",
        {"base": llama_family["base"], "wide": wide},
        model_params={"base": {"weight": 1.0}, "wide": {"weight": 1.0}},
    )
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    message = info.value.message
    assert "model.layers.0.mlp." in message
    # the first mlp tensor in the checkpoint may be any of gate/up/down: check both shapes
    assert ("base [128, 64]" in message and "wide [96, 64]" in message) or (
        "base [64, 128]" in message and "wide [64, 96]" in message
    )


def test_vocab_mismatch_is_refused(
    tiny_model_factory: object, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    bigger = tiny_model_factory("llama", seed=6, vocab_size=400)  # type: ignore[operator]
    recipe = _recipe(
        "linear",
        {"base": llama_family["base"], "big": bigger},
        model_params={"base": {"weight": 1.0}, "big": {"weight": 1.0}},
    )
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    assert "vocabulary sizes differ" in info.value.message
    assert "384" in info.value.message and "400" in info.value.message
    recipe.tokenizer_source = "union"
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    assert "does not implement" in info.value.message
    assert "union" in info.value.message


def test_tokenizer_source_with_one_shared_vocabulary_is_fine(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _recipe(
        "linear",
        {"base": llama_family["base"], "a": llama_family["a"]},
        model_params={"base": {"weight": 1.0}, "a": {"weight": 1.0}},
        tokenizer_source="a",
    )
    plan = make_plan(recipe, out=tmp_path / "out")
    assert plan.tokenizer_donor == "a"
    # a tokenizer block is fine while it changes nothing (known tokens, padding already met)
    recipe.tokenizer_source = None
    recipe.tokenizer = {"source": "base", "tokens": {"<|im_end|>": {}}, "pad_to_multiple_of": 64}
    assert make_plan(recipe, out=tmp_path / "out").tokenizer_donor == "base"
    for block, where in (
        ({"source": "base", "tokens": {"<|brand-new|>": {}}}, "<|brand-new|>"),
        ({"source": "base", "tokens": {"<|im_end|>": {"force": True}}}, "forces"),
        ({"source": "base", "pad_to_multiple_of": 100}, "pad_to_multiple_of"),
    ):
        recipe.tokenizer = block
        with pytest.raises(UserError) as info:
            make_plan(recipe, out=tmp_path / "out")
        assert where in info.value.message and "does not implement" in info.value.message


def test_unknown_model_and_bad_layer_range(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(
        "passthrough",
        {"m": llama_family["base"]},
        slices=[Slice([SliceSource("ghost", (0, 2))])],
    )
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    assert "ghost" in info.value.message
    recipe.slices = [Slice([SliceSource("m", (2, 9))])]
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    assert "[2, 9)" in info.value.message and "4 layers" in info.value.message


def test_model_not_found_says_where_it_looked(tmp_path: Path) -> None:
    recipe = _recipe("passthrough", {"m": Path("no/such-model-here")})
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    assert "not on this machine" in info.value.message


def test_relative_sources_resolve_against_the_recipe_folder(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    shutil.copytree(llama_family["base"], recipe_dir / "local-base")
    monkeypatch.chdir(tmp_path)  # cwd has no "local-base": only the recipe folder does
    recipe = _recipe("passthrough", {"m": Path("local-base")})
    plan = make_plan(recipe, recipe_dir=recipe_dir, out=tmp_path / "out")
    assert plan.models["m"].path == (recipe_dir / "local-base").resolve()
    # and against the current directory, like mergekit, when the recipe folder lacks it
    monkeypatch.chdir(recipe_dir)
    plan = make_plan(recipe, recipe_dir=tmp_path, out=tmp_path / "out")
    assert plan.models["m"].path == (recipe_dir / "local-base").resolve()


def test_output_inside_an_input_is_refused(llama_family: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(llama_family["base"], copy)
    recipe = _recipe("passthrough", {"m": copy})
    for out in (copy, copy / "merged", tmp_path):
        with pytest.raises(UserError) as info:
            make_plan(recipe, out=out)
        assert "overlaps" in info.value.message


def test_truncated_and_corrupt_inputs_fail_at_plan(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated"
    shutil.copytree(llama_family["a"], truncated)
    file = truncated / "model.safetensors"
    with open(file, "r+b") as handle:
        handle.truncate(file.stat().st_size - 100)
    recipe = _recipe("passthrough", {"m": truncated})
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    assert "truncated" in info.value.message
    corrupt = tmp_path / "corrupt"
    shutil.copytree(llama_family["a"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError) as info:
        make_plan(_recipe("passthrough", {"m": corrupt}), out=tmp_path / "out")
    assert str(corrupt / "model.safetensors") in str(info.value)


def test_no_output_folder_is_an_error(llama_family: dict[str, Path]) -> None:
    with pytest.raises(UserError) as info:
        make_plan(_recipe("passthrough", {"m": llama_family["base"]}))
    assert "--out" in (info.value.fix or "")


def test_dtype_key_and_out_dtype(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(
        "passthrough", {"m": llama_family["base"]}, dtype="float32", out_dtype="bfloat16"
    )
    plan = make_plan(recipe, out=tmp_path / "out")
    assert {t.dtype for t in plan.tensors} == {"BF16"}
    assert plan.output_config.get("dtype", plan.output_config.get("torch_dtype")) == "bfloat16"
    source = json.loads((llama_family["base"] / "config.json").read_text())
    assert plan.output_config["hidden_size"] == source["hidden_size"]

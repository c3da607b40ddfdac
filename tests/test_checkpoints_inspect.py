"""open_checkpoint on real tiny checkpoints of every architecture, and on broken folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mergetui.checkpoints.inspect import open_checkpoint
from mergetui.checkpoints.layers import block_kind
from mergetui.errors import UserError

EXPECTED_LAYER_KINDS = {
    "llama": {"attention": 4, "mlp": 3, "norm": 2},
    "mistral": {"attention": 4, "mlp": 3, "norm": 2},
    "qwen2": {"attention": 7, "mlp": 3, "norm": 2},
    "gemma": {"attention": 4, "mlp": 3, "norm": 2},
    "gpt2": {"attention": 4, "mlp": 4, "norm": 4},
    "phi3": {"attention": 2, "mlp": 2, "norm": 2},
}


def _load_model(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder))


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


@pytest.mark.parametrize("arch", sorted(EXPECTED_LAYER_KINDS))
def test_every_architecture(arch_models: dict[str, Path], arch: str) -> None:
    folder = arch_models[arch]
    checkpoint = open_checkpoint(folder)
    model = _load_model(folder)
    config = json.loads((folder / "config.json").read_text())

    assert checkpoint.model_type == arch == config["model_type"]
    assert checkpoint.architecture == config["architectures"][0]
    assert checkpoint.num_layers == 4 == len(checkpoint.layers)
    assert checkpoint.warnings == []
    for index, layer in enumerate(checkpoint.layers):
        counts = {kind: len(names) for kind, names in layer.items() if names}
        assert counts == EXPECTED_LAYER_KINDS[arch], (arch, index)
        for kind, names in layer.items():
            assert all(block_kind(name) == kind for name in names)
            assert all(f".{index}." in name for name in names)
    # Every tensor is placed exactly once: before, in, or after the stack.
    placed = checkpoint.pre_layer + checkpoint.post_layer
    placed += [n for i in range(4) for n in checkpoint.layer_tensors(i)]
    assert sorted(placed) == sorted(checkpoint.tensors)
    tied = arch in ("gemma", "gpt2")
    assert set(checkpoint.tensors) == set(model.state_dict()) - (
        {"lm_head.weight"} if tied else set()
    )
    assert list(checkpoint.tensors)[: len(checkpoint.pre_layer)] == checkpoint.pre_layer
    assert list(checkpoint.tensors)[-len(checkpoint.post_layer) :] == checkpoint.post_layer

    state = model.state_dict()
    for name, info in checkpoint.tensors.items():
        assert info.shape == tuple(state[name].shape), name
        assert info.dtype == "F32"
    assert checkpoint.parameter_count == sum(info.numel for info in checkpoint.tensors.values())
    assert checkpoint.parameter_count == sum(p.numel() for p in model.parameters())
    assert checkpoint.dtypes == {"F32": len(checkpoint.tensors)} and checkpoint.dtype == "F32"
    assert checkpoint.size_on_disk == (folder / "model.safetensors").stat().st_size
    assert checkpoint.vocab_size == 384 and checkpoint.hidden_size == 64
    assert checkpoint.has_tokenizer and checkpoint.has_chat_template
    assert checkpoint.format == "safetensors"
    assert "config.json" in checkpoint.files and "model.safetensors" in checkpoint.files

    assert checkpoint.tied is tied
    assert checkpoint.tie_word_embeddings is tied
    assert ("lm_head.weight" in checkpoint.post_layer) is not tied
    if not tied:
        assert checkpoint.post_layer[-1] == "lm_head.weight"


def test_to_dict_is_json(arch_models: dict[str, Path]) -> None:
    data = json.loads(json.dumps(open_checkpoint(arch_models["gemma"]).to_dict()))
    assert data["tied"] is True and data["num_layers"] == 4
    assert data["parameters"] == sum(
        v["shape"][0] * (v["shape"][1] if len(v["shape"]) > 1 else 1)
        for v in data["tensors"].values()
    )
    assert set(data["layers"][0]) == {"attention", "mlp", "norm"}
    assert data["tensors"]["model.embed_tokens.weight"] == {
        "shape": [384, 64],
        "dtype": "F32",
        "file": "model.safetensors",
    }


def test_sharded_checkpoint_matches_single_file(
    sharded_llama: Path, llama_family: dict[str, Path]
) -> None:
    sharded = open_checkpoint(sharded_llama)
    single = open_checkpoint(llama_family["base"])
    assert len(sharded.weight_files) > 2
    assert all(f.name.startswith("model-0000") for f in sharded.weight_files)
    assert list(sharded.tensors) == list(single.tensors)
    assert sharded.parameter_count == single.parameter_count
    index = json.loads((sharded_llama / "model.safetensors.index.json").read_text())
    for name, info in sharded.tensors.items():
        assert info.file.name == index["weight_map"][name]
        assert info.shape == single.tensors[name].shape
        # The byte ranges hold the same values in both layouts.
        with info.file.open("rb") as a, single.tensors[name].file.open("rb") as b:
            a.seek(info.offset)
            b.seek(single.tensors[name].offset)
            assert a.read(info.nbytes) == b.read(info.nbytes)
    assert sharded.size_on_disk == sum(f.stat().st_size for f in sharded.weight_files)


def test_dtypes_of_a_bf16_model(tiny_model_factory) -> None:
    checkpoint = open_checkpoint(tiny_model_factory("qwen2", dtype="bfloat16", seed=3))
    assert checkpoint.dtypes == {"BF16": len(checkpoint.tensors)}
    assert checkpoint.dtype == "BF16"
    assert all(info.nbytes == info.numel * 2 for info in checkpoint.tensors.values())


def test_truncated_shard_is_named(sharded_llama: Path, tmp_path: Path) -> None:
    folder = _copy(sharded_llama, tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated") as caught:
        open_checkpoint(folder)
    assert caught.value.where == str(shard)


def test_missing_shard_and_inconsistent_index(sharded_llama: Path, tmp_path: Path) -> None:
    folder = _copy(sharded_llama, tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first, second = sorted(set(index["weight_map"].values()))[:2]
    moved = next(name for name, shard in index["weight_map"].items() if shard == first)
    index["weight_map"][moved] = second
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match=f"places tensor {moved} in {second}"):
        open_checkpoint(folder)
    (folder / second).unlink()
    with pytest.raises(UserError, match=f"shard {second} .* is missing"):
        open_checkpoint(folder)
    index_path.write_text("{not json")
    with pytest.raises(UserError, match="broken shard index"):
        open_checkpoint(folder)


def test_bin_checkpoint_is_refused_then_read_when_allowed(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "bin-model"
    folder.mkdir()
    shutil.copy(llama_family["base"] / "config.json", folder)
    model = _load_model(llama_family["base"])
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")

    with pytest.raises(UserError) as caught:
        open_checkpoint(folder)
    assert "pytorch_model.bin" in caught.value.message
    assert "--allow-bin" in caught.value.fix and "safetensors" in caught.value.fix

    checkpoint = open_checkpoint(folder, allow_bin=True)
    assert checkpoint.format == "bin"
    assert set(checkpoint.tensors) == set(state)
    for name, info in checkpoint.tensors.items():
        assert info.offset == -1 and not info.in_safetensors
        assert info.shape == tuple(state[name].shape) and info.dtype == "BF16"
    assert checkpoint.parameter_count == sum(p.numel() for p in model.parameters())
    assert checkpoint.num_layers == 4 and not checkpoint.has_tokenizer

    (folder / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read this .bin file"):
        open_checkpoint(folder, allow_bin=True)


def test_missing_folder_file_and_empty_folder(tmp_path: Path, llama_family) -> None:
    with pytest.raises(UserError, match="checkpoint folder not found") as caught:
        open_checkpoint(tmp_path / "nowhere")
    assert caught.value.fix
    with pytest.raises(UserError, match="got a file"):
        open_checkpoint(llama_family["base"] / "model.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no model weights found"):
        open_checkpoint(empty)
    (empty / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="LoRA"):
        open_checkpoint(empty)


def test_broken_and_missing_config(llama_family: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(llama_family["base"], tmp_path)
    (folder / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(UserError, match="config.json is not valid JSON") as caught:
        open_checkpoint(folder)
    assert caught.value.where == str(folder / "config.json")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        open_checkpoint(folder)

    (folder / "config.json").unlink()
    checkpoint = open_checkpoint(folder)
    assert checkpoint.architecture is None and checkpoint.num_layers == 4
    assert checkpoint.vocab_size == 384 and checkpoint.hidden_size == 64
    assert any("no config.json" in w for w in checkpoint.warnings)


def test_layer_count_mismatch_is_reported(llama_family: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(llama_family["base"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 6
    (folder / "config.json").write_text(json.dumps(config))
    checkpoint = open_checkpoint(folder)
    assert checkpoint.num_layers == 6 and len(checkpoint.layers) == 4
    assert any("6 layers" in w for w in checkpoint.warnings)


def test_tokenizer_and_chat_template_detection(tiny_model_factory, tmp_path: Path) -> None:
    bare = open_checkpoint(tiny_model_factory("llama", tokenizer=False))
    assert not bare.has_tokenizer and not bare.has_chat_template

    folder = _copy(tiny_model_factory("llama"), tmp_path)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    assert open_checkpoint(folder).has_tokenizer
    assert not open_checkpoint(folder).has_chat_template
    # Older transformers kept the template inside tokenizer_config.json.
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert open_checkpoint(folder).has_chat_template


def test_duplicate_tensors_across_files(llama_family: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(llama_family["base"], tmp_path)
    shutil.copy(folder / "model.safetensors", folder / "model-copy.safetensors")
    with pytest.raises(UserError, match="appears in both"):
        open_checkpoint(folder)


def test_legacy_format_bin_is_read_without_mmap(tmp_path: Path) -> None:
    state = {
        "model.embed_tokens.weight": torch.ones(6, 4),
        "model.layers.0.mlp.up_proj.weight": torch.ones(8, 4),
    }
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    checkpoint = open_checkpoint(tmp_path, allow_bin=True)
    assert checkpoint.parameter_count == 56 and checkpoint.num_layers == 1
    assert checkpoint.layers[0]["mlp"] == ["model.layers.0.mlp.up_proj.weight"]
    complex_state = {"model.layers.0.mlp.up_proj.weight": torch.ones(2, dtype=torch.complex64)}
    torch.save(complex_state, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors cannot hold"):
        open_checkpoint(tmp_path, allow_bin=True)

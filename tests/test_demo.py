"""The tiny-model factory and the tokenizer: real checkpoints that transformers loads and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mergetui.demo import (
    BOS_ID,
    CHAT_TEMPLATE,
    EOS_ID,
    PAD_ID,
    make_tiny_model,
    sample_sections,
    sample_text,
    train_tokenizer,
)


def _all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def test_tokenizer_round_trips_text_and_has_chat_template(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = "The keeper wound the clockwork and lit the lamp."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # BPE merges learned from the sample: far fewer tokens than bytes.
    assert len(ids) <= len(text.encode()) / 2
    assert len(tokenizer) == 384
    assert tokenizer.bos_token_id == BOS_ID
    assert tokenizer.eos_token_id == EOS_ID
    assert tokenizer.pad_token_id == PAD_ID
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_tokenizer_rejects_vocab_smaller_than_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(tmp_path, vocab_size=100)


def test_sample_text_has_sections_for_the_demo_domains() -> None:
    sections = sample_sections()
    assert "def greet(name):" in sections["A Small Program"]
    assert "Two plus two is four." in sections["Simple Arithmetic"]
    assert "Question: Why is the sky blue?" in sections["Questions and Answers"]
    assert sum(len(body) for body in sections.values()) > 0.9 * len(sample_text())


def test_every_architecture_loads_in_transformers_and_generates(
    arch_models: dict[str, Path],
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for arch, folder in arch_models.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == arch
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        inputs = tokenizer("The storm came", return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert out.shape == (1, inputs["input_ids"].shape[1] + 3), arch
        # Saved tensors are exactly the model's parameters (tied ones once).
        saved = _all_tensors(folder)
        assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters())
        assert (folder / "model.safetensors").stat().st_size < 1_000_000


def test_architecture_specific_layouts(arch_models: dict[str, Path]) -> None:
    gemma = _all_tensors(arch_models["gemma"])
    assert "lm_head.weight" not in gemma and "model.embed_tokens.weight" in gemma
    assert json.loads((arch_models["gemma"] / "config.json").read_text())["tie_word_embeddings"]
    assert "lm_head.weight" in _all_tensors(arch_models["llama"])
    gpt2 = _all_tensors(arch_models["gpt2"])
    assert "transformer.h.3.attn.c_attn.weight" in gpt2 and "transformer.wpe.weight" in gpt2
    phi3 = _all_tensors(arch_models["phi3"])
    assert "model.layers.0.self_attn.qkv_proj.weight" in phi3
    assert "model.layers.0.mlp.gate_up_proj.weight" in phi3
    assert "model.layers.0.self_attn.q_proj.bias" in _all_tensors(arch_models["qwen2"])


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    first = _all_tensors(make_tiny_model(tmp_path / "one", seed=7, tokenizer=False))
    again = _all_tensors(make_tiny_model(tmp_path / "two", seed=7, tokenizer=False))
    other = _all_tensors(make_tiny_model(tmp_path / "three", seed=8, tokenizer=False))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first[name], other[name])
    assert not (tmp_path / "one" / "tokenizer.json").exists()


def test_fine_tunes_are_base_plus_seeded_noise(llama_family: dict[str, Path]) -> None:
    base = _all_tensors(llama_family["base"])
    a = _all_tensors(llama_family["a"])
    b = _all_tensors(llama_family["b"])
    assert set(base) == set(a) == set(b)
    for name in base:
        delta = a[name] - base[name]
        assert 0.012 < delta.std().item() < 0.03, name
        assert not torch.equal(a[name], b[name]), name
    assert (llama_family["a"] / "tokenizer.json").read_bytes() == (
        llama_family["base"] / "tokenizer.json"
    ).read_bytes()


def test_fine_tune_of_tied_model_stays_tied(tiny_model_factory, arch_models) -> None:
    tuned = tiny_model_factory("gemma", seed=5, base=arch_models["gemma"], dtype="bfloat16")
    tensors = _all_tensors(tuned)
    assert "lm_head.weight" not in tensors
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    config = json.loads((tuned / "config.json").read_text())
    assert config["model_type"] == "gemma" and config["dtype"] == "bfloat16"


def test_sharded_model_has_index_and_same_weights(
    sharded_llama: Path, llama_family: dict[str, Path]
) -> None:
    shards = sorted(sharded_llama.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    index = json.loads((sharded_llama / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    for name, shard in index["weight_map"].items():
        with safe_open(str(sharded_llama / shard), "pt") as handle:
            assert name in handle.keys()
    single = _all_tensors(llama_family["base"])
    sharded = _all_tensors(sharded_llama)
    assert set(single) == set(sharded)
    assert all(torch.equal(single[k], sharded[k]) for k in single)


def test_shapes_and_dtype_follow_arguments(tmp_path: Path) -> None:
    folder = make_tiny_model(
        tmp_path / "m",
        "qwen2",
        num_layers=2,
        hidden_size=32,
        intermediate_size=48,
        vocab_size=400,
        dtype="float16",
    )
    tensors = _all_tensors(folder)
    assert tensors["model.embed_tokens.weight"].shape == (400, 32)
    assert tensors["model.layers.1.mlp.up_proj.weight"].shape == (48, 32)
    assert "model.layers.2.mlp.up_proj.weight" not in tensors
    assert all(t.dtype == torch.float16 for t in tensors.values())
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        make_tiny_model(tmp_path / "bad", "falcon")

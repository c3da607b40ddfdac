"""Layer numbers and block kinds from tensor names, across naming schemes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergetui.checkpoints.layers import (
    BLOCK_KINDS,
    block_kind,
    is_post_layer,
    is_pre_layer,
    layer_index,
    with_layer_index,
)
from mergetui.checkpoints.safetensors_io import read_header


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("model.layers.3.mlp.up_proj.weight", 3),
        ("transformer.h.11.attn.c_attn.weight", 11),
        ("transformer.blocks.0.ffn.up_proj.weight", 0),
        ("encoder.block.2.layer.1.DenseReluDense.wi.weight", 2),
        ("bert.encoder.layer.7.output.dense.weight", 7),
        ("gpt_neox.layers.12.attention.query_key_value.weight", 12),
        ("model.layers.1.block_sparse_moe.experts.5.w1.weight", 1),
        ("layers.4.attention.wq.weight", 4),
        ("model.embed_tokens.weight", None),
        ("model.norm.weight", None),
        ("lm_head.weight", None),
        ("transformer.height.3.weight", None),
        ("model.layers_norm.3.weight", None),
        ("model.layers.x.weight", None),
    ],
)
def test_layer_index(name: str, index: int | None) -> None:
    assert layer_index(name) == index


def test_with_layer_index_renumbers_only_the_layer() -> None:
    assert (
        with_layer_index("model.layers.3.mlp.up_proj.weight", 17)
        == "model.layers.17.mlp.up_proj.weight"
    )
    assert (
        with_layer_index("transformer.h.0.attn.c_attn.bias", 2)
        == "transformer.h.2.attn.c_attn.bias"
    )
    # Expert numbers after the layer stay as they are.
    assert (
        with_layer_index("model.layers.1.block_sparse_moe.experts.1.w1.weight", 10)
        == "model.layers.10.block_sparse_moe.experts.1.w1.weight"
    )
    assert with_layer_index("layers.9", 0) == "layers.0"
    with pytest.raises(ValueError, match="not inside a numbered layer"):
        with_layer_index("model.norm.weight", 1)
    with pytest.raises(ValueError, match=">= 0"):
        with_layer_index("model.layers.1.mlp.weight", -1)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.embed_tokens.weight", "embedding"),
        ("transformer.wte.weight", "embedding"),
        ("transformer.wpe.weight", "embedding"),
        ("transformer.word_embeddings.weight", "embedding"),
        ("tok_embeddings.weight", "embedding"),
        ("gpt_neox.embed_in.weight", "embedding"),
        ("model.layers.0.self_attn.q_proj.weight", "attention"),
        ("model.layers.0.self_attn.qkv_proj.weight", "attention"),
        ("model.layers.0.self_attn.q_norm.weight", "attention"),
        ("transformer.h.0.attn.c_attn.weight", "attention"),
        ("transformer.h.0.attn.c_proj.weight", "attention"),
        ("gpt_neox.layers.0.attention.query_key_value.weight", "attention"),
        ("gpt_neox.layers.0.attention.dense.weight", "attention"),
        ("layers.0.attention.wo.weight", "attention"),
        ("model.layers.0.mlp.gate_proj.weight", "mlp"),
        ("model.layers.0.mlp.gate_up_proj.weight", "mlp"),
        ("transformer.h.0.mlp.c_fc.weight", "mlp"),
        ("transformer.h.0.mlp.c_proj.weight", "mlp"),
        ("layers.0.feed_forward.w1.weight", "mlp"),
        ("model.layers.0.block_sparse_moe.gate.weight", "mlp"),
        ("gpt_neox.layers.0.mlp.dense_4h_to_h.weight", "mlp"),
        ("bert.encoder.layer.0.intermediate.dense.weight", "mlp"),
        ("encoder.block.2.layer.1.DenseReluDense.wi.weight", "mlp"),
        ("bert.encoder.layer.0.output.dense.weight", "mlp"),
        ("model.layers.0.input_layernorm.weight", "norm"),
        ("model.layers.0.post_attention_layernorm.weight", "norm"),
        ("model.layers.0.pre_feedforward_layernorm.weight", "norm"),
        ("transformer.h.0.ln_1.weight", "norm"),
        ("transformer.h.0.ln_2.bias", "norm"),
        ("transformer.ln_f.weight", "norm"),
        ("model.norm.weight", "norm"),
        ("gpt_neox.final_layer_norm.weight", "norm"),
        ("lm_head.weight", "head"),
        ("embed_out.weight", "head"),
        ("output.weight", "head"),
        ("model.layers.0.mixer.A_log", "other"),
        ("score.weight", "other"),
    ],
)
def test_block_kind(name: str, kind: str) -> None:
    assert block_kind(name) == kind
    assert kind in BLOCK_KINDS


def test_pre_and_post_layer() -> None:
    assert is_pre_layer("model.embed_tokens.weight")
    assert is_pre_layer("transformer.wpe.weight")
    assert not is_pre_layer("model.layers.0.self_attn.q_proj.weight")
    assert not is_post_layer("model.layers.0.self_attn.q_proj.weight")
    assert is_post_layer("model.norm.weight")
    assert is_post_layer("lm_head.weight")
    assert is_post_layer("transformer.ln_f.weight")
    assert not is_post_layer("model.embed_tokens.weight")


def test_every_tensor_of_every_tiny_architecture_is_placed(arch_models: dict[str, Path]) -> None:
    for arch, folder in arch_models.items():
        infos, _ = read_header(folder / "model.safetensors")
        kinds = {name: block_kind(name) for name in infos}
        assert "other" not in kinds.values(), (arch, [n for n, k in kinds.items() if k == "other"])
        indices = {layer_index(name) for name in infos} - {None}
        assert indices == {0, 1, 2, 3}, arch
        per_layer = {k for n, k in kinds.items() if layer_index(n) == 2}
        assert per_layer == {"attention", "mlp", "norm"}, arch
        outside = [n for n in infos if layer_index(n) is None]
        assert all(is_pre_layer(n) != is_post_layer(n) for n in outside)
        assert any(is_pre_layer(n) for n in outside) and any(is_post_layer(n) for n in outside)

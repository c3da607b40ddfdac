"""Where a tensor sits in a transformer, read from its name alone.

Checkpoints from different families name things differently (`model.layers.3.self_attn.q_proj`,
`transformer.h.3.attn.c_attn`, `gpt_neox.layers.3.attention.query_key_value`), but they share a
grammar: a layer container followed by an index, then a block (attention, MLP, norm). Rules over
name components cover new architectures without a per-architecture table; the layer grid, slices
and inspection all use them.
"""

from __future__ import annotations

import re
from typing import Literal

BlockKind = Literal["embedding", "attention", "mlp", "norm", "head", "other"]
BLOCK_KINDS: tuple[BlockKind, ...] = ("embedding", "attention", "mlp", "norm", "head", "other")

LAYER_CONTAINERS = ("layers", "h", "blocks", "block", "layer")
_LAYER_RE = re.compile(r"(?:^|\.)(?:" + "|".join(LAYER_CONTAINERS) + r")\.(\d+)(?=\.|$)")

_EMBEDDING = {
    "embed_tokens",
    "tok_embeddings",
    "wte",
    "wpe",
    "word_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "embed_positions",
    "embeddings",
    "embedding",
    "embed_in",
}
_HEAD = {"lm_head", "embed_out"}
_ATTENTION = {
    "self_attn",
    "attn",
    "attention",
    "self_attention",
    "selfattention",
    "cross_attn",
    "encdecattention",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "c_attn",
    "query_key_value",
    "wq",
    "wk",
    "wv",
    "wo",
    "wqkv",
}
_MLP = {
    "mlp",
    "feed_forward",
    "ffn",
    "block_sparse_moe",
    "moe",
    "experts",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
    "c_fc",
    "fc1",
    "fc2",
    "w1",
    "w2",
    "w3",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "intermediate",
    "densereludense",
}
_NORM_EXACT = {"ln_1", "ln_2", "ln_f", "ln"}
# Buffers some checkpoints carry that models rebuild on load (rotary frequencies, GPT-2's causal
# mask); mergekit's architectures leave them out, so neither a merge nor a diff reads them.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.masked_bias", ".attn.bias")


def layer_index(name: str) -> int | None:
    """The layer number in a tensor name (`model.layers.3.mlp...` -> 3), or None outside the stack."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def with_layer_index(name: str, index: int) -> str:
    """The same tensor name in layer `index` (renumbering for slices and layer stacks)."""
    match = _LAYER_RE.search(name)
    if match is None:
        raise ValueError(f"tensor {name!r} is not inside a numbered layer")
    if index < 0:
        raise ValueError(f"layer index must be >= 0, got {index}")
    return f"{name[: match.start(1)]}{index}{name[match.end(1) :]}"


def _is_norm(component: str) -> bool:
    return "norm" in component or component in _NORM_EXACT or component.startswith("ln_")


def block_kind(name: str) -> BlockKind:
    """What a tensor belongs to: the first name component that says so wins.

    Components are matched whole, so `post_attention_layernorm` is a norm while anything under
    `self_attn` (even its `q_norm`) is attention, and `c_proj` follows its container (`attn` or `mlp`).
    """
    components = name.lower().split(".")
    in_layer = layer_index(name) is not None
    for position, component in enumerate(components):
        if component in _HEAD:
            return "head"
        if component in _EMBEDDING:
            return "embedding"
        if component in _ATTENTION:
            return "attention"
        if component in _MLP:
            return "mlp"
        if _is_norm(component):
            return "norm"
        if component == "output":
            # Meta's original format names the head `output`; inside a layer (BERT-style) it is the
            # feed-forward's output projection.
            if not in_layer and position == 0:
                return "head"
            if in_layer:
                return "mlp"
    return "other"


def is_pre_layer(name: str) -> bool:
    """Outside the layer stack and before it: the embeddings."""
    return layer_index(name) is None and block_kind(name) == "embedding"


def is_post_layer(name: str) -> bool:
    """Outside the layer stack and after it: final norm, head and anything else unplaced."""
    return layer_index(name) is None and block_kind(name) != "embedding"


def is_skipped(name: str) -> bool:
    """True for a buffer a model rebuilds on load (SKIPPED_SUFFIXES): not merged, not compared."""
    return name.endswith(SKIPPED_SUFFIXES)

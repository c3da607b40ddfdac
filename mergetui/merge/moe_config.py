"""The config.json of an assembled MoE, exactly as mergekit-moe writes it: its `_generate_config`
runs the base's config through transformers' config classes (Mistral, then Mixtral or Qwen2-MoE)
and saves the result's difference from the defaults.

Importing those classes costs seconds (most of a cheap_embed assembly's time), so where the base's
config is already in the form this transformers major version saves (every field of its class,
`rope_parameters` of the default type, nothing else), the result is built here in plain Python:
the base's keys, unchanged, with the Mixtral keys mergekit-moe sets. `tests/test_moe_config.py`
holds that equal to transformers' own output; any other config goes through transformers.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergetui.merge.moe_plan import MoePlan

CONFIG_FILE = "config.json"
# The fields of transformers 5's LlamaConfig and MistralConfig beyond PreTrainedConfig's: every
# one is carried through MixtralConfig into the saved config (none has a PreTrainedConfig default
# to be dropped against).
_COMMON = {
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "head_dim",
    "hidden_act",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "pad_token_id",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "use_cache",
    "vocab_size",
}
_FIELDS = {
    "llama": _COMMON | {"attention_bias", "mlp_bias", "pretraining_tp"},
    "mistral": _COMMON | {"sliding_window"},
}
# PreTrainedConfig keys the plain path handles: overwritten, dropped, or (dtype) kept.
_BASE_KEYS = {"architectures", "model_type", "transformers_version", "dtype", "_name_or_path"}
# MixtralConfig's own defaults for what mergekit-moe leaves alone.
_MIXTRAL_DEFAULTS = {
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
    "router_jitter_noise": 0.0,
}


def write_output_config(plan: MoePlan, folder: Path) -> None:
    """config.json into `folder`: the plain-Python one where it applies, else transformers'."""
    plain = plain_mixtral_config(plan)
    if plain is None:
        output_config(plan).save_pretrained(str(folder))
        return
    text = json.dumps(plain, indent=2, sort_keys=True) + "\n"
    (Path(folder) / CONFIG_FILE).write_text(text, encoding="utf-8")


def plain_mixtral_config(plan: MoePlan) -> dict[str, Any] | None:
    """What `output_config(plan).to_diff_dict()` gives for a Mixtral output, without importing
    transformers; None where the base's config is outside what this reproduces."""
    from mergetui.dtypes import dtype_name
    from mergetui.merge.moe_plan import MIXTRAL

    version = _transformers_version()
    if plan.architecture != MIXTRAL or version is None or not version.startswith("5."):
        return None
    base = plan.models["base"].config
    fields = _FIELDS.get(str(base.get("model_type")))
    if fields is None or not fields <= set(base) or set(base) - fields - _BASE_KEYS:
        return None
    rope = base.get("rope_parameters")
    if not (
        isinstance(rope, dict)
        and set(rope) == {"rope_type", "rope_theta"}
        and rope["rope_type"] == "default"
        and isinstance(rope["rope_theta"], (int, float))
    ):
        return None
    if base["head_dim"] is None or base["num_key_value_heads"] is None:
        return None
    dtype = dtype_name(plan.out_dtype) if plan.out_dtype else base.get("dtype")
    if not (dtype is None or isinstance(dtype, str)):
        return None
    config = {k: v for k, v in base.items() if k not in _BASE_KEYS}
    config.update(_MIXTRAL_DEFAULTS)
    config.update(
        architectures=["MixtralForCausalLM"],
        model_type="mixtral",
        transformers_version=version,
        num_local_experts=len(plan.recipe.experts),
        num_experts_per_tok=plan.recipe.experts_per_token,
        sliding_window=None,
    )
    if dtype is not None:
        config["dtype"] = dtype
    return config


def _transformers_version() -> str | None:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        return None


def output_config(plan: MoePlan) -> Any:
    """mergekit-moe's `_generate_config` of the chosen architecture, from the base's config."""
    import transformers

    from mergetui.dtypes import torch_dtype
    from mergetui.merge.moe_plan import MIXTRAL

    base = transformers.AutoConfig.from_pretrained(
        str(plan.models["base"].path), trust_remote_code=False
    )
    recipe = plan.recipe
    if plan.architecture == MIXTRAL:
        if not isinstance(base, transformers.MistralConfig):
            mistral = transformers.MistralConfig(**base.to_dict())
            mistral.sliding_window = None
            mistral.max_position_embeddings = base.max_position_embeddings
            base = mistral
        config = transformers.MixtralConfig(**base.to_dict())
        config.architectures = ["MixtralForCausalLM"]
        config.num_local_experts = len(recipe.experts)
        config.num_experts_per_tok = recipe.experts_per_token
        config.sliding_window = None
    else:
        config = transformers.Qwen2MoeConfig(**base.to_dict())
        config.architectures = ["Qwen2MoeForCausalLM"]
        config.num_experts = len(recipe.experts)
        config.num_experts_per_tok = recipe.experts_per_token
        config.decoder_sparse_step = 1
        config.norm_topk_prob = True
        config.sliding_window = None
        config.use_sliding_window = False
        config.shared_expert_intermediate_size = config.intermediate_size
        config.moe_intermediate_size = config.intermediate_size
    if plan.out_dtype is not None:
        config.dtype = torch_dtype(plan.out_dtype)
    return config

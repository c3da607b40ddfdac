"""The router weights of an MoE assembly, computed exactly as mergekit-moe's `router.py` does, so
the deterministic gate modes give the same tensors bit for bit.

- `hidden` (= `hidden_last`) / `hidden_avg`: the base model, loaded in bfloat16 as mergekit-moe
  loads it, runs each expert's prompts; every layer's input hidden state (the embeddings and all
  layers but the last's output) at the last token (or averaged over the sequence), averaged over
  the prompts. Negative prompts' vectors are subtracted; each layer's vector is L2-normalised.
- `cheap_embed`: the sum of the prompts' token embeddings (float32), normalised, the same for
  every layer; negatives subtracted and normalised again.
- `random` / `uniform_random`: drawn from `seed` (torch.randn / nn.Linear's uniform init).

Prompts are tokenised as mergekit-moe does: the tokenizer's BOS text prefixed, no special tokens
added, padded on the left with BOS (EOS when there is none): `merge.moe_tokenizer`.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

from mergetui.errors import CancelledError, UserError

if TYPE_CHECKING:
    import torch

    from mergetui.merge.moe_plan import MoePlan
    from mergetui.merge.reader import TensorReader


def gate_vectors(
    plan: MoePlan,
    tokenizer: Any,
    reader: TensorReader,
    cancel: threading.Event | None = None,
) -> torch.Tensor:
    """(layers, experts + shared experts, hidden) router rows, in mergekit-moe's dtype."""
    import torch

    recipe = plan.recipe
    base = plan.models["base"]
    config = base.config
    layers = len(base.layers)
    hidden = base.tensors["model.embed_tokens.weight"].shape[1]
    count = len(recipe.all_experts())
    generator = torch.Generator().manual_seed(plan.seed)
    if recipe.gate_mode == "random":
        return torch.randn((layers, count, hidden), generator=generator)
    if recipe.gate_mode == "uniform_random":
        scale = math.sqrt(1.0 / hidden)
        return torch.rand((layers, count, hidden), generator=generator) * 2 * scale - scale
    if recipe.gate_mode == "cheap_embed":
        info = base.tensors["model.embed_tokens.weight"]
        vocab = int(config.get("vocab_size") or info.shape[0])

        def states(tokens: Any) -> torch.Tensor:
            used, where = torch.unique(tokens["input_ids"], return_inverse=True)
            rows = _embedding_rows(info, used.tolist(), min(vocab, info.shape[0]), reader)
            return _cheap_embedding(rows, where, tokens["attention_mask"], layers)

        return _for_each_expert(plan, tokenizer, states, cancel)
    model = _load_base_model(plan)  # freed on return: the tensors are written after
    average = recipe.gate_mode == "hidden_avg"

    def hidden_states(tokens: Any) -> torch.Tensor:
        return _hidden_states(model, tokens, average)

    return _for_each_expert(plan, tokenizer, hidden_states, cancel)


def _for_each_expert(plan: MoePlan, tokenizer: Any, states: Any, cancel: Any) -> torch.Tensor:
    """mergekit-moe's `get_gate_params` loop: positive minus negative, normalised, stacked."""
    import torch

    vectors = []
    for _, expert in plan.recipe.all_experts():
        if cancel is not None and cancel.is_set():
            raise CancelledError()
        vector = states(tokenizer.encode(expert.positive_prompts))
        if expert.negative_prompts:
            vector -= states(tokenizer.encode(expert.negative_prompts))
        vector /= vector.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        vectors.append(vector)
    return torch.stack(vectors, dim=0).permute(1, 0, 2).cpu()


def _embedding_rows(info: Any, ids: list[int], vocab: int, reader: TensorReader) -> torch.Tensor:
    """The embedding rows of `ids` (sorted, distinct), read alone: the prompts' few tokens, not
    the whole vocabulary's matrix."""
    import torch

    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise UserError(
            f"the base's tokenizer gives token id {bad[0]}, and its embedding has {vocab} rows",
            where=str(info.file),
            fix="use the tokenizer that belongs to the base model",
        )
    hidden = info.shape[1]
    size = info.nbytes // info.shape[0]
    rows = [
        reader.read(info.file, info.offset + i * size, size, info.dtype, (hidden,), info.name)
        for i in ids
    ]
    return torch.stack(rows)


def _cheap_embedding(rows: Any, where: Any, mask: Any, layers: int) -> torch.Tensor:
    """mergekit-moe's `get_cheap_embedding`, operation for operation, over the rows of the tokens
    used (`where`: each token's row): the one-hot product picks each row exactly (one term is
    the row, every other a zero) as the product over the whole vocabulary does."""
    import torch

    onehot = torch.nn.functional.one_hot(where, num_classes=rows.shape[0])
    h = onehot.float() @ rows.float()
    embedded = (h * mask.unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
    result = embedded / embedded.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return result.repeat(layers, 1)


def _hidden_states(model: Any, tokens: Any, average: bool) -> torch.Tensor:
    """mergekit-moe's `get_hidden_states`: every layer's input state, one vector per layer."""
    import torch

    with torch.no_grad():
        output = model(**tokens.to(model.device), output_hidden_states=True, return_dict=True)
    states = torch.stack(output.hidden_states[:-1])  # (layers, batch, seq, hidden)
    if average:
        states = states.sum(dim=2) / states.shape[2]
    else:
        states = states[:, :, -1, :]
    return states.sum(dim=1) / states.shape[1]  # on the model's device, as mergekit-moe keeps it


def _load_base_model(plan: MoePlan) -> Any:
    """The base in bfloat16, as mergekit-moe loads it for hidden states (never its own code)."""
    import torch
    import transformers

    from mergetui.device import resolve_device

    device = resolve_device(plan.device)
    folder = plan.models["base"].path
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our progress bar is the one on screen
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.bfloat16, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load the base model for its hidden states: {exc}",
            where=str(folder),
            fix='use gate_mode = "cheap_embed" or "random", which need no model',
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()

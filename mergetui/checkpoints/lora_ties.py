"""An adapter's head pieces on a base whose head is tied to its input embeddings.

A tied checkpoint (Gemma, Llama 3.2 1B/3B, the demo family) stores no `lm_head.weight`, but an
adapter made on it often carries one: extract-lora (ours and mergekit's) lists `lm_head` in
modules_to_save, and PEFT trains `lm_head` as a LoRA target or a saved module. PEFT's
`merge_and_unload`, which mergekit-yaml runs on `base+adapter`, gives:

- a LoRA on the head: the head's weight *is* the embedding's, so the update lands on the
  embedding (after the embedding's own LoRA, if any: PEFT merges modules in order, rounding each);
  the head stays tied.
- a saved head (modules_to_save): a separate head, untied from the embedding. When its values are
  the embedding's own (what extract-lora saves from a tied fine-tune), the tied checkpoint already
  says that; otherwise a tied checkpoint cannot hold it, and mergekit's output is not a faithful
  merge either (an untied head under `tie_word_embeddings: true` for Llama, none at all for
  Gemma), so mergetui refuses it, saying how to untie the base first.

`fit_tied_head` rewrites the adapter's pieces to that effect (idempotent), reading tensor values
only to compare a saved head with the embedding.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mergetui.checkpoints.layers import block_kind, layer_index

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint
    from mergetui.checkpoints.lora import Adapter, AdapterMisfit
    from mergetui.checkpoints.safetensors_io import TensorInfo

_ROWS_AT_ONCE = 4096  # rows compared at a time: memory stays bounded whatever the vocabulary


def _is_head(name: str) -> bool:
    return block_kind(name) == "head" and layer_index(name) is None


def tied_embedding(checkpoint: Checkpoint) -> str | None:
    """The input embedding a checkpoint without a head ties its head to (None: not tied)."""
    return checkpoint.tied_embedding_name() if checkpoint.tied else None


def unsaved_head_warnings(adapter: Adapter) -> list[str]:
    """A head named in modules_to_save whose tensor the adapter lacks: mergekit-extract-lora on a
    tied model writes that, and PEFT refuses to load it (KeyError), so mergekit-yaml fails."""
    held = {name.rsplit(".", 1)[0] for name in (*adapter.modules, *adapter.replaced)}
    return [
        f"modules_to_save names {module} but the adapter holds no {module} tensor (as "
        "mergekit-extract-lora writes it for a model with tied embeddings); PEFT cannot load it "
        "and mergekit-yaml fails, mergetui applies the tensors it holds: the head stays tied to "
        "the embeddings"
        for module in adapter.modules_to_save
        if _is_head(module) and not any(h == module or h.endswith(f".{module}") for h in held)
    ]


def fit_tied_head(adapter: Adapter, checkpoint: Checkpoint) -> AdapterMisfit | None:
    """Move the adapter's pieces of a head the base does not store onto the embedding it is tied
    to, as PEFT merges them; None when done (or nothing to do), else why it cannot be done."""
    embed = tied_embedding(checkpoint)
    if embed is None:
        return None
    heads = [
        name
        for name in (*adapter.modules, *adapter.replaced)
        if name not in checkpoint.tensors and _is_head(name) and name.endswith(".weight")
    ]
    for head in heads:
        problem = _fit_one(adapter, checkpoint, head, embed)
        if problem is not None:
            return problem
    return None


def _fit_one(
    adapter: Adapter, checkpoint: Checkpoint, head: str, embed: str
) -> AdapterMisfit | None:
    from mergetui.checkpoints.lora import AdapterMisfit, LoraBias

    untie = (
        f"a tied checkpoint cannot hold a head that differs from {embed}: untie the base first "
        f"(save it with tie_word_embeddings: false and {head} a copy of {embed}) and use that "
        "folder as the model's source"
    )
    module = adapter.modules.get(head)
    if module is not None:
        saved = adapter.replaced.get(embed)
        if saved is not None and not isinstance(saved, LoraBias):
            return AdapterMisfit(
                f"the adapter changes {head} with a LoRA and replaces {embed} (modules_to_save), "
                f"but the base ties its head to {embed}: after the merge they would differ",
                untie,
            )
        del adapter.modules[head]
        moved = dataclasses.replace(module, target=embed)
        first = adapter.modules.get(embed)
        if first is not None:  # the embedding's own LoRA first, then the head's, as PEFT merges
            base = module.base if module.base is not None else first.base
            moved = dataclasses.replace(
                first, base=base, then=dataclasses.replace(moved, base=None)
            )
        adapter.modules[embed] = moved
        return None
    saved_head = adapter.replaced[head]
    if embed in adapter.modules:
        return AdapterMisfit(
            f"the adapter replaces {head} (modules_to_save) and changes {embed} with a LoRA, but "
            f"the base ties its head to {embed}: after the merge they would differ",
            untie,
        )
    final = adapter.replaced.get(embed) or checkpoint.tensors[embed]
    if not equal_values(saved_head, final, checkpoint.tensors[embed].dtype):
        return AdapterMisfit(
            f"the adapter replaces {head} (modules_to_save) with values of its own, but the base "
            f"stores no {head}: its head is tied to {embed}, which the merge leaves different",
            untie,
        )
    del adapter.replaced[head]  # the head the tied checkpoint already has
    return None


def equal_values(first: TensorInfo, second: TensorInfo, dtype: str) -> bool:
    """Whether two stored tensors are equal once cast to `dtype` (the checkpoint's), a block of
    rows at a time."""
    if tuple(first.shape) != tuple(second.shape):
        return False
    import torch

    from mergetui.dtypes import torch_dtype

    want = torch_dtype(dtype)
    rows = first.shape[0] if first.shape else 1
    for start in range(0, rows, _ROWS_AT_ONCE):
        stop = min(rows, start + _ROWS_AT_ONCE)
        a = _rows(first, start, stop).to(want)
        b = _rows(second, start, stop).to(want)
        if not torch.equal(a, b):
            return False
    return True


def _rows(info: TensorInfo, start: int, stop: int):  # noqa: ANN202 (torch.Tensor, lazily)
    """Rows [start, stop) of a stored tensor (a .bin entry: loaded whole, weights only)."""
    import torch

    if info.offset < 0:
        state = torch.load(info.file, map_location="cpu", weights_only=True, mmap=True)
        return state[info.name][start:stop]
    from safetensors import safe_open

    with safe_open(str(info.file), framework="pt") as handle:
        return handle.get_slice(info.name)[start:stop]

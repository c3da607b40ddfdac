"""Helpers of the LoRA input tests: adapters made offline with peft, tensors of a folder."""

from __future__ import annotations

from pathlib import Path

import torch


def make_adapter(base: Path, out: Path, *, seed: int = 0, **config) -> Path:
    """A PEFT LoRA adapter for `base` with seeded non-zero lora_B (an embedding's A and B), and
    modules_to_save changed, so every piece changes something."""
    import transformers
    from peft import LoraConfig, get_peft_model

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**config))
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name or "lora_embedding_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.1
        elif "modules_to_save" in name:
            param.data += torch.randn(param.shape, generator=generator) * 0.1
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    found: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        found.update(load_file(file))
    return found

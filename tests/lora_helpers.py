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
        elif "lora_embedding_A" in name:  # PEFT starts an embedding's A at zero, not its B
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


def make_tied_llama(out: Path, *, seed: int = 0, dtype: str = "float32") -> Path:
    """A tiny Llama whose head is tied to its input embeddings (no lm_head.weight stored), as
    the demo family and Llama 3.2 1B are; make_tiny_model(base=it) keeps fine-tunes tied."""
    import shutil

    import transformers

    from mergetui.demo import make_tiny_model
    from mergetui.demo.tiny import save_model

    staging = make_tiny_model(out.with_name(out.name + "-untied"), seed=seed)
    config = transformers.AutoConfig.from_pretrained(staging)
    config.tie_word_embeddings = True
    model = transformers.AutoModelForCausalLM.from_pretrained(staging, config=config)
    model.tie_weights()
    save_model(model, out, dtype)
    shutil.rmtree(staging)
    assert "lm_head.weight" not in tensors(out)
    return out

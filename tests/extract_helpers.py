"""Helpers of the extract-lora tests: fine-tunes with a known low-rank delta, mergekit's own run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

PREFIX = "base_model.model."


def make_finetune(
    base: Path,
    out: Path,
    spectrum: Callable[[str], list[float]],
    *,
    noise: float = 0.0,
    seed: int = 0,
) -> Path:
    """`base` + for each projection weight a delta U diag(spectrum(name)) V^T (random orthonormal
    U, V), + Gaussian noise of std `noise` on every tensor: a fine-tune of known spectrum."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, out)
    weights = load_file(out / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for name, weight in weights.items():
        w = weight.float()
        if name.endswith("proj.weight"):
            values = torch.tensor(spectrum(name), dtype=torch.float32)
            k = values.numel()
            u = torch.linalg.qr(torch.randn(w.shape[0], k, generator=generator))[0]
            v = torch.linalg.qr(torch.randn(w.shape[1], k, generator=generator))[0]
            w = w + u @ torch.diag(values) @ v.T
        if noise:
            w = w + noise * torch.randn(w.shape, generator=generator)
        weights[name] = w.to(weight.dtype).contiguous()
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def run_mergekit_extract(finetuned: Path, base: Path, out: Path, *args: str) -> None:
    """mergekit-extract-lora in this process. Its model card asks the Hub about the base, which
    fails offline after the adapter is written: that failure alone is let pass."""
    from mergekit.scripts.extract_lora import main

    try:
        main.main(
            ["--model", str(finetuned), "--base-model", str(base), "--out-path", str(out), *args],
            standalone_mode=False,
        )
    except Exception:
        if not (out / "adapter_config.json").is_file():
            raise


def lora_products(adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each module's B @ A in float32 (independent of the SVD's sign choices), by module name."""
    products = {}
    for name, a in adapter.items():
        for piece_a, piece_b in (
            (".lora_A.weight", ".lora_B.weight"),
            (".lora_embedding_A", ".lora_embedding_B"),
        ):
            if name.endswith(piece_a):
                module = name.removeprefix(PREFIX).removesuffix(piece_a)
                b = adapter[name.removesuffix(piece_a) + piece_b]
                products[module] = b.float() @ a.float()
    return products

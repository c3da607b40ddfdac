"""`mergetui extract-lora`'s run: each module's delta decomposed by truncated SVD, module by
module, and the adapter written into a temporary folder renamed into place when complete.

The result is mergekit-extract-lora's: delta = fine-tune - base (here subtracted in float32, so a
bfloat16 pair loses nothing to the subtraction), rank min(--rank, the module's shorter side), the
top singular triplets with the singular values split evenly between the pieces: A = sqrt(S) Vh,
B = U sqrt(S), both cast to the fine-tune's dtype; an embedding is decomposed transposed, as PEFT
stores lora_embedding_A/B. mergekit takes them from a full float32 SVD; merge.extract_svd computes
only those (top eigenvectors of the float64 Gram matrix), a fraction of the work. With `--energy`,
each module keeps the fewest singular values holding that share of the delta's squared Frobenius
norm (still capped by the rank). The adapter config puts the largest rank in `r` and `lora_alpha`
and the others in `rank_pattern` / `alpha_pattern`, so every module's scale is 1 and B @ A is the
update.

Memory: the run holds one module's delta (float64), its Gram matrix and its factors;
finished pieces go to a spill file in the temporary folder (their shapes are known only once every
rank is), then into adapter_model.safetensors by the streaming writer; modules_to_save tensors are
copied a piece at a time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.lora import (
    ADAPTER_CONFIG,
    ADAPTER_SAFETENSORS,
    PEFT_PREFIX,
    peft_tensor_names,
)
from mergetui.errors import CancelledError
from mergetui.merge.extract_plan import ExtractPlan, LoraTarget, SavedTensor
from mergetui.merge.extract_svd import (
    gram,
    lora_pieces,
    one_blas_thread,
    project,
    relative_error,
    top_eigenvectors,
)

if TYPE_CHECKING:
    import threading

    import torch

    from mergetui.merge.reader import TensorReader

CARD_FILE = "README.md"
ADAPTER_FILES = frozenset({ADAPTER_CONFIG, ADAPTER_SAFETENSORS, CARD_FILE})
# Written into the adapter's safetensors metadata: what `--force` may replace carries it.
MARK = ("mergetui", "extract-lora")
_SPILL = "pieces.spill"
_COPY_CHUNK = 8 << 20  # bytes of a saved tensor read and written at a time
_SUBTRACT_ELEMENTS = 1 << 18  # of each weight converted to float32 at a time


@dataclass(frozen=True)
class ModuleResult:
    """One decomposed module: the rank kept and how far B @ A is from the delta."""

    module: str
    rank: int
    max_rank: int
    error: float  # ||delta - B @ A||_F / ||delta||_F (0 for a zero delta)
    energy: float  # the share of the squared singular values kept


@dataclass(frozen=True)
class ExtractProgress:
    """Sent after each module: bytes read so far of `total`, and the module's result if any."""

    done: int
    total: int
    module: str
    result: ModuleResult | None = None


@dataclass
class ExtractResult:
    out: Path
    modules: list[ModuleResult] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)  # checkpoint names copied whole
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def max_error(self) -> float:
        return max((m.error for m in self.modules), default=0.0)


def run_extraction(
    plan: ExtractPlan,
    out: Path,
    *,
    force: bool = False,
    device: str = "auto",
    on_event: Callable[[ExtractProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> ExtractResult:
    """Write the adapter to `out` (an existing folder only with `force`, and only one this command
    wrote); nothing is left behind when it fails or is cancelled."""
    from mergetui.device import resolve_device
    from mergetui.merge.target import TempFolder, check_output, remove_stale_temps

    started = time.perf_counter()
    inputs = [plan.finetuned.path, plan.base.path]
    check_output(out, force, inputs=inputs, written_by_us=not_an_extracted_adapter)
    dev = resolve_device(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    temp = TempFolder(out)
    try:
        result = _write_adapter(plan, temp.path, dev, on_event, cancel)
    except BaseException:
        temp.remove()
        raise
    temp.release_into(out, force, inputs=inputs, written_by_us=not_an_extracted_adapter)
    result.out = out
    result.seconds = time.perf_counter() - started
    return result


def _write_adapter(
    plan: ExtractPlan,
    folder: Path,
    device: torch.device,
    on_event: Callable[[ExtractProgress], None] | None,
    cancel: threading.Event | None,
) -> ExtractResult:
    """Decompose every target into the spill file, then write the adapter's three files."""
    from mergetui.merge.reader import TensorReader

    result = ExtractResult(out=folder)
    reader = TensorReader()
    spill_path = folder / _SPILL
    pieces: list[tuple[str, str, tuple[int, ...], int, int]] = []  # name, dtype, shape, at, size
    done = 0
    try:
        with open(spill_path, "wb") as spill:
            for target in plan.targets:
                if cancel is not None and cancel.is_set():
                    raise CancelledError("extraction cancelled")
                module, tensors = _decompose_target(plan, target, reader, device)
                for name, tensor in tensors:
                    _spill(spill, pieces, name, tensor)
                result.modules.append(module)
                done += target.finetuned.nbytes + target.base.nbytes
                if on_event is not None:
                    on_event(ExtractProgress(done, plan.total_bytes, target.module, module))
        result.config = adapter_config(plan, result.modules)
        _write_weights(plan, folder, reader, pieces, done, on_event, cancel)
        result.saved = [s.name for s in plan.saved]
    finally:
        reader.close()
        spill_path.unlink(missing_ok=True)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(result.config, indent=4) + "\n", "utf-8")
    (folder / CARD_FILE).write_text(adapter_card(plan, result), encoding="utf-8")
    return result


def _read(reader: TensorReader, info: Any) -> torch.Tensor:
    import torch

    tensor = reader.read(info.file, info.offset, info.nbytes, info.dtype, info.shape, info.name)
    return tensor.to(torch.float32)


def _delta(reader: TensorReader, target: LoraTarget, device: torch.device) -> torch.Tensor:
    """Fine-tune - base on `device`: subtracted in float32 (a bfloat16 pair loses nothing) and held
    in float64, which the Gram matrix, the projection and the error all read; a few rows at a time,
    so neither weight is ever copied whole in float32."""
    import torch

    tuned, base = (
        reader.read(info.file, info.offset, info.nbytes, info.dtype, info.shape, info.name)
        for info in (target.finetuned, target.base)
    )
    delta = torch.empty(tuned.shape, dtype=torch.float64, device=device)
    rows = max(1, _SUBTRACT_ELEMENTS // max(1, tuned.numel() // max(1, tuned.shape[0])))
    for start in range(0, tuned.shape[0], rows):
        part = slice(start, start + rows)
        delta[part] = tuned[part].to(device, torch.float32) - base[part].to(device, torch.float32)
    return delta


def _decompose_target(
    plan: ExtractPlan, target: LoraTarget, reader: TensorReader, device: torch.device
) -> tuple[ModuleResult, list[tuple[str, torch.Tensor]]]:
    """One module: its delta's factors in the fine-tune's dtype, and how well they fit."""
    import torch

    from mergetui.dtypes import torch_dtype
    from mergetui.errors import UserError

    if device.type == "mps":  # no float64 there: the CPU computes it
        device = torch.device("cpu")
    delta = _delta(reader, target, device)
    if target.embedding:
        delta = delta.T
    try:
        step = gram(delta)
    except ValueError:
        raise UserError(
            f"the fine-tune minus the base holds a NaN or an infinity in {target.module}",
            where=str(plan.finetuned.path),
            fix=f"check both checkpoints, or leave the module out: --exclude '{target.module}'",
        ) from None
    with one_blas_thread():
        vectors = top_eigenvectors(step, min(plan.options.rank, step.x.shape[0]))
    u, s, vh = project(step, vectors)
    a, b, kept = lora_pieces(u, s, vh, step.total, plan.options.energy)
    dtype = torch_dtype(target.finetuned.dtype)
    a, b = a.to(dtype), b.to(dtype)
    error = relative_error(delta, a, b, step.total)
    del delta, step
    module = ModuleResult(target.module, a.shape[0], target.max_rank, error, kept)
    name_a, name_b = peft_tensor_names(target.module, target.embedding)
    tensors = [(name_a, a.cpu().contiguous()), (name_b, b.cpu().contiguous())]
    if target.bias is not None:  # mergekit saves a bias's delta as lora_B.bias
        bias = _read(reader, target.bias[0]) - _read(reader, target.bias[1])
        tensors.append((f"{PEFT_PREFIX}{target.module}.lora_B.bias", bias.to(dtype).contiguous()))
    return module, tensors


def _spill(spill: Any, pieces: list, name: str, tensor: torch.Tensor) -> None:
    """Append a finished piece to the spill file and remember where it is."""
    from mergetui.dtypes import dtype_from_torch
    from mergetui.merge.writer import tensor_bytes

    at = spill.tell()
    data = tensor_bytes(tensor)
    spill.write(data)
    pieces.append((name, dtype_from_torch(tensor.dtype), tuple(tensor.shape), at, len(data)))


def _write_weights(
    plan: ExtractPlan,
    folder: Path,
    reader: TensorReader,
    pieces: list[tuple[str, str, tuple[int, ...], int, int]],
    done: int,
    on_event: Callable[[ExtractProgress], None] | None,
    cancel: threading.Event | None,
) -> None:
    """adapter_model.safetensors: the spilled pieces, then each saved tensor read and written."""
    from mergetui.merge.writer import SINGLE_FILE_NAME, ShardSetWriter, layout_output

    entries = [(name, dtype, shape) for name, dtype, shape, _, _ in pieces]
    entries += [(PEFT_PREFIX + s.name, s.info.dtype, tuple(s.info.shape)) for s in plan.saved]
    layout = layout_output(entries, sys.maxsize, metadata={"format": "pt", MARK[0]: MARK[1]})
    writer = ShardSetWriter(folder, layout)
    try:
        spill = folder / _SPILL
        for name, dtype, shape, at, size in pieces:
            writer.write(name, reader.read(spill, at, size, dtype, shape, name).contiguous())
        for saved in plan.saved:
            if cancel is not None and cancel.is_set():
                raise CancelledError("extraction cancelled")
            _copy_saved(reader, writer, saved)
            done += saved.info.nbytes
            if on_event is not None:
                on_event(ExtractProgress(done, plan.total_bytes, saved.name))
        writer.finish()
    finally:
        writer.close()
    os.replace(folder / SINGLE_FILE_NAME, folder / ADAPTER_SAFETENSORS)


def _copy_saved(reader: TensorReader, writer: Any, saved: SavedTensor) -> None:
    """A modules_to_save tensor copied in pieces of at most _COPY_CHUNK bytes (an embedding or a
    head is the largest tensor of a model: never held whole)."""
    info = saved.info
    name = PEFT_PREFIX + saved.name
    if info.offset < 0 or info.nbytes <= _COPY_CHUNK:  # a .bin tensor is read whole anyway
        tensor = reader.read(info.file, info.offset, info.nbytes, info.dtype, info.shape, name)
        writer.write(name, tensor.contiguous())
        return
    for start in range(0, info.nbytes, _COPY_CHUNK):
        size = min(_COPY_CHUNK, info.nbytes - start)
        piece = reader.read(info.file, info.offset + start, size, "U8", (size,), name)
        writer.write(name, piece, start)


def adapter_config(plan: ExtractPlan, modules: list[ModuleResult]) -> dict[str, Any]:
    """mergekit-extract-lora's adapter_config.json (target_modules sorted; lora_bias when a bias
    delta is saved, so PEFT loads it rather than dropping it)."""
    rank = max(m.rank for m in modules)
    others = {m.module: m.rank for m in modules if m.rank != rank}
    config: dict[str, Any] = {
        "base_model_name_or_path": plan.base_source,
        "peft_type": "LORA",
        "use_rslora": False,
        "target_modules": sorted({m.module.split(".")[-1] for m in modules}),
        "modules_to_save": list(plan.modules_to_save),
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": others,
        "alpha_pattern": dict(others),
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    if any(t.bias is not None for t in plan.targets):
        config["lora_bias"] = True
    return config


def adapter_card(plan: ExtractPlan, result: ExtractResult) -> str:
    """The README.md model card: front matter naming the base (the Hub reads `base_model`)."""
    ranks = sorted({m.rank for m in result.modules})
    energy = plan.options.energy
    how = f"rank up to {plan.options.rank}" + (
        f", each module's rank keeping {energy:g} of its delta's energy" if energy else ""
    )
    lines = [
        "---",
        "base_model:",
        f"- {json.dumps(plan.base_source)}",
        "library_name: peft",
        "tags:",
        "- mergetui",
        "- lora",
        "- extract-lora",
        "---",
        "",
        f"# LoRA adapter extracted from {plan.finetuned_source}",
        "",
        f"A PEFT LoRA adapter for **{plan.base_source}**, made by `mergetui extract-lora` from "
        f"the difference between {plan.finetuned_source} and its base by truncated SVD ({how}).",
        "",
        f"- modules decomposed: {len(result.modules)} (ranks {', '.join(map(str, ranks))})",
        f"- largest relative reconstruction error: {result.max_error:.4g}",
        f"- saved whole (modules_to_save): {', '.join(plan.modules_to_save) or 'none'}",
        "",
    ]
    return "\n".join(lines)


def not_an_extracted_adapter(folder: Path) -> str | None:
    """None when `folder` is empty or an adapter extract-lora wrote (its files only, its mark)."""
    from mergetui.checkpoints.safetensors_io import read_header
    from mergetui.errors import UserError

    names = {entry.name for entry in os.scandir(folder)}
    if not names:
        return None
    strangers = sorted(names - ADAPTER_FILES)
    if strangers:
        return f"holds files extract-lora does not write ({', '.join(strangers[:3])})"
    try:
        metadata = read_header(folder / ADAPTER_SAFETENSORS)[1]
    except UserError:
        metadata = {}
    if metadata.get(MARK[0]) != MARK[1]:
        return f"is not an adapter extract-lora wrote (no {MARK[0]} mark in {ADAPTER_SAFETENSORS})"
    return None

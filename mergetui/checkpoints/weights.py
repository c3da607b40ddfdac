"""Which files hold a local checkpoint's weights, and their tensors (from headers; .bin by loading).

A folder's weights are its shard index's files (`model.safetensors.index.json`), else every
`*.safetensors` but an adapter's, else `pytorch_model*.bin` (pickles: refused unless allowed). A
shard the index names but the folder lacks, a tensor in two files, or an index that disagrees with
its shards is a `UserError` that says how to repair the download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mergetui.checkpoints.files import index_shard_paths, open_regular
from mergetui.checkpoints.safetensors_io import TensorInfo, read_header
from mergetui.dtypes import dtype_from_torch
from mergetui.errors import UserError

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Files that are safetensors but not a full model's weights.
NOT_MODEL_WEIGHTS = frozenset({"adapter_model.safetensors"})


def read_weights(
    folder: Path, allow_bin: bool, warnings: list[str]
) -> tuple[list[Path], dict[str, TensorInfo], str]:
    """(weight files, their tensors, "safetensors" or "bin") of a local checkpoint folder; problems
    a user can ignore are added to `warnings`."""
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        files, tensors = _read_safetensors_index(index_path, warnings)
        return files, tensors, "safetensors"
    safetensors_files = sorted(
        p for p in folder.glob("*.safetensors") if p.name not in NOT_MODEL_WEIGHTS
    )
    if safetensors_files:
        tensors: dict[str, TensorInfo] = {}
        for file in safetensors_files:
            _merge_tensors(tensors, read_header(file)[0], file)
        return safetensors_files, tensors, "safetensors"

    bin_files = _bin_files(folder)
    if bin_files:
        if not allow_bin:
            raise UserError(
                "checkpoint is in pytorch_model.bin (pickle) format, which mergetui does not open "
                "by default: loading a pickle can run code and loads every tensor into memory",
                where=str(folder),
                fix="convert it to safetensors (e.g. save_pretrained in transformers), "
                "or pass --allow-bin if you trust it",
            )
        return bin_files, read_bin_tensors(bin_files), "bin"

    if (folder / "adapter_model.safetensors").is_file():
        raise UserError(
            "this is a LoRA/PEFT adapter, not a full checkpoint",
            where=str(folder),
            fix='name its base model as the source and this folder as lora (lora = "..." in '
            "TOML, base+adapter in mergekit YAML; see docs/lora.md)",
        )
    raise UserError(
        "no model weights found (no *.safetensors, model.safetensors.index.json or "
        "pytorch_model.bin)",
        where=str(folder),
        fix="point at the folder that holds the model's weight files",
    )


def _read_safetensors_index(
    index_path: Path, warnings: list[str]
) -> tuple[list[Path], dict[str, TensorInfo]]:
    folder = index_path.parent
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(
            f"broken shard index ({exc})",
            where=str(index_path),
            fix="restore model.safetensors.index.json from the model's source",
        ) from None
    shard_paths = index_shard_paths(folder, weight_map, index_path)
    shard_names = [str(path.relative_to(folder)) for path in shard_paths]
    headers: dict[str, dict[str, TensorInfo]] = {}
    for shard, shard_path in zip(shard_names, shard_paths, strict=True):
        if _is_missing(shard_path):
            raise UserError(
                f"shard {shard} listed in {SAFETENSORS_INDEX} is missing",
                where=str(folder),
                fix="download the missing shard (the checkpoint is incomplete)",
            )
        headers[shard] = read_header(shard_path)[0]
    tensors: dict[str, TensorInfo] = {}
    for name, shard in weight_map.items():
        info = headers[shard].get(name)
        if info is None:
            raise UserError(
                f"{SAFETENSORS_INDEX} places tensor {name} in {shard}, which does not contain it",
                where=str(folder),
                fix="the index and the shards come from different versions; download them again",
            )
        tensors[name] = info
    for shard, header in headers.items():
        extra = sorted(set(header) - set(weight_map))
        if extra:
            warnings.append(
                f"{shard} holds {len(extra)} tensors missing from the index: {extra[:3]}"
            )
            _merge_tensors(tensors, {name: header[name] for name in extra}, folder / shard)
    return shard_paths, tensors


def _is_missing(path: Path) -> bool:
    """Missing, or a link to nothing (an unfinished download); a link that loops, a FIFO or an
    unreadable file is not missing: reading it says what it is."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _merge_tensors(tensors: dict[str, TensorInfo], new: dict[str, TensorInfo], file: Path) -> None:
    for name, info in new.items():
        if name in tensors:
            raise UserError(
                f"tensor {name} appears in both {tensors[name].file.name} and {file.name}",
                where=str(file.parent),
                fix="remove the stray weight file (two copies of the model in one folder?)",
            )
        tensors[name] = info


def _bin_files(folder: Path) -> list[Path]:
    index_path = folder / BIN_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"broken shard index ({exc})", where=str(index_path)) from None
        return index_shard_paths(folder, weight_map, index_path)
    return sorted(folder.glob("pytorch_model*.bin"))


def read_bin_tensors(files: list[Path]) -> dict[str, TensorInfo]:
    """The tensors of pytorch .bin files (torch.load, weights only, memory-mapped; offset -1)."""
    import pickle

    import torch

    tensors: dict[str, TensorInfo] = {}
    for file in files:
        if _is_missing(file):
            raise UserError(
                f"shard {file.name} is missing",
                where=str(file.parent),
                fix="download the missing shard (the checkpoint is incomplete)",
            )
        os.close(open_regular(file))  # torch opens it by name: a FIFO would block, a loop crash
        try:
            try:
                state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                # Files in torch's legacy (pre-1.6, non-zip) format cannot be memory-mapped.
                if "mmap" not in str(exc):
                    raise
                state = torch.load(str(file), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise UserError(
                f"cannot read this .bin file ({str(exc).splitlines()[0]})",
                where=str(file),
                fix="it may be truncated or not a plain state dict; convert it to safetensors",
            ) from None
        if not isinstance(state, dict):
            raise UserError("the .bin file does not hold a state dict", where=str(file))
        found: dict[str, TensorInfo] = {}
        for name, tensor in state.items():
            if not isinstance(tensor, torch.Tensor):
                continue
            try:
                dtype = dtype_from_torch(tensor.dtype)
            except ValueError:
                raise UserError(
                    f"tensor {name} has dtype {tensor.dtype}, which safetensors cannot hold",
                    where=str(file),
                ) from None
            found[name] = TensorInfo(
                name, tuple(tensor.shape), dtype, file, -1, tensor.numel() * tensor.element_size()
            )
        _merge_tensors(tensors, found, file)
    return tensors

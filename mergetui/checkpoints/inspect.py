"""What a checkpoint folder holds, from headers and config alone: no tensor is loaded.

`open_checkpoint` is the one way the rest of mergetui learns about a model: the planner needs every
tensor's name, shape, dtype and byte range; the app and `mergetui inspect` need the layer map, the
parameter count and whether a tokenizer and chat template come with it. Problems the user can fix
(missing folder, no weights, broken config, a truncated shard, a pickle checkpoint) raise `UserError`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from mergetui.checkpoints.layers import (
    BLOCK_KINDS,
    BlockKind,
    block_kind,
    is_pre_layer,
    layer_index,
)
from mergetui.checkpoints.safetensors_io import TensorInfo, read_header
from mergetui.checkpoints.weights import BIN_INDEX, SAFETENSORS_INDEX, read_weights
from mergetui.errors import UserError

# Any one of these, and the checkpoint comes with a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
# Token embeddings, as opposed to position or type embeddings, most specific first: a head with
# no tensor of its own is tied to the first found (mergekit's `tied_names`).
TOKEN_EMBEDDINGS = ("embed_tokens", "wte", "tok_embeddings", "word_embeddings", "embed_in")


@dataclass
class Checkpoint:
    """A checkpoint folder as mergetui sees it. `tensors` runs embeddings, layers in order, then the rest."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    weight_files: list[Path]
    files: list[str]
    format: str  # "safetensors" or "bin"
    layers: list[dict[BlockKind, list[str]]]
    pre_layer: list[str]
    post_layer: list[str]
    has_tokenizer: bool
    has_chat_template: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def architecture(self) -> str | None:
        architectures = self.config.get("architectures") or []
        return architectures[0] if architectures else None

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def num_layers(self) -> int:
        configured = _config_layer_count(self.config)
        return configured if configured is not None else len(self.layers)

    @property
    def parameter_count(self) -> int:
        return sum(info.numel for info in self.tensors.values())

    @property
    def dtypes(self) -> dict[str, int]:
        """Number of tensors per safetensors dtype name, most common first."""
        return dict(Counter(info.dtype for info in self.tensors.values()).most_common())

    @property
    def dtype(self) -> str | None:
        """The dtype holding the most parameters (what "a bf16 model" means)."""
        weights: Counter[str] = Counter()
        for info in self.tensors.values():
            weights[info.dtype] += info.numel
        return weights.most_common(1)[0][0] if weights else None

    @property
    def size_on_disk(self) -> int:
        """Bytes of the weight files (symlinks into the HF cache are followed)."""
        return sum(file.stat().st_size for file in self.weight_files)

    @property
    def tied(self) -> bool:
        """No head tensor is stored: the output projection reuses the input embeddings."""
        has_embedding = any(block_kind(name) == "embedding" for name in self.pre_layer)
        has_head = any(block_kind(name) == "head" for name in self.post_layer)
        return has_embedding and not has_head

    @property
    def tie_word_embeddings(self) -> bool:
        """What config.json declares (transformers' default, true, when it says nothing)."""
        value = self.config.get("tie_word_embeddings")
        if value is None and isinstance(self.config.get("text_config"), dict):
            value = self.config["text_config"].get("tie_word_embeddings")
        return True if value is None else bool(value)

    @property
    def vocab_size(self) -> int | None:
        value = _config_value(self.config, ("vocab_size", "padded_vocab_size"))
        if value is not None:
            return int(value)
        embedding = self._embedding_tensor()
        return embedding.shape[0] if embedding is not None else None

    @property
    def hidden_size(self) -> int | None:
        value = _config_value(self.config, _HIDDEN_KEYS)
        if value is not None:
            return int(value)
        embedding = self._embedding_tensor()
        return embedding.shape[-1] if embedding is not None else None

    def _embedding_tensor(self) -> TensorInfo | None:
        for name in self.pre_layer:
            if set(TOKEN_EMBEDDINGS) & set(name.split(".")) and len(self.tensors[name].shape) == 2:
                return self.tensors[name]
        return None

    def tied_embedding_name(self) -> str | None:
        """The token embedding before the layers that a head with no tensor of its own is tied
        to (the planner reads it for such a head; an adapter's head pieces land on it)."""
        for hint in TOKEN_EMBEDDINGS:
            for name in self.pre_layer:
                if hint in name.split("."):
                    return name
        return None

    def layer_tensors(self, index: int) -> list[str]:
        """Every tensor name of one layer, grouped by block kind."""
        return [name for kind in BLOCK_KINDS for name in self.layers[index].get(kind, [])]

    @classmethod
    def from_tensors(cls, raw: dict[str, TensorInfo], **fields: Any) -> Self:
        """A checkpoint of the tensors `raw`, put in layer order (embeddings, each layer grouped by
        block kind, then the rest) with their layer map; `fields` give everything else."""
        tensors, layers, pre_layer, post_layer = _layer_map(raw)
        return cls(
            tensors=tensors, layers=layers, pre_layer=pre_layer, post_layer=post_layer, **fields
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything above as plain JSON types (for `mergetui inspect --json` and the app)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "architecture": self.architecture,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "parameters": self.parameter_count,
            "dtype": self.dtype,
            "dtypes": self.dtypes,
            "size_on_disk": self.size_on_disk,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "tied": self.tied,
            "has_tokenizer": self.has_tokenizer,
            "has_chat_template": self.has_chat_template,
            "files": self.files,
            "weight_files": [file.name for file in self.weight_files],
            "pre_layer": self.pre_layer,
            "post_layer": self.post_layer,
            "layers": [
                {kind: names for kind, names in layer.items() if names} for layer in self.layers
            ],
            "tensors": {
                name: {"shape": list(info.shape), "dtype": info.dtype, "file": info.file.name}
                for name, info in self.tensors.items()
            },
            "warnings": self.warnings,
        }


def open_checkpoint(path: str | Path, *, allow_bin: bool = False) -> Checkpoint:
    """Read a local checkpoint folder's config and weight headers.

    `pytorch_model.bin` checkpoints are pickles: opening one runs a restricted unpickler and loads
    every tensor, so they are refused unless `allow_bin` is set (then read with
    `torch.load(weights_only=True, mmap=True)`; their TensorInfo.offset is -1).
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(
            "checkpoint folder not found",
            where=str(folder),
            fix="check the path, or give a Hugging Face repo id that is in the local cache",
        )
    if not folder.is_dir():
        raise UserError(
            "expected a checkpoint folder, got a file",
            where=str(folder),
            fix=f"pass the folder that holds it: {folder.parent}",
        )
    warnings: list[str] = []
    config = _read_config(folder, warnings)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    weight_files, raw_tensors, fmt = read_weights(folder, allow_bin, warnings)
    checkpoint = _local_checkpoint(folder, raw_tensors, config, weight_files, files, fmt, warnings)
    configured = _config_layer_count(config)
    if configured is not None and configured != len(checkpoint.layers):
        warnings.append(
            f"config.json says {configured} layers but the tensors number "
            f"{len(checkpoint.layers)} layers"
        )
    return checkpoint


def open_weight_file(path: str | Path) -> Checkpoint:
    """One .safetensors file's tensors (its header), with config.json from its folder if there.

    For `mergetui inspect FILE`: a shard or a lone weight file. Only that file's tensors are shown;
    a warning says so when the folder holds other weight files (inspect the folder for the model).
    """
    file = Path(path).expanduser()
    if file.suffix != ".safetensors":
        raise UserError(
            "this is a file, not a checkpoint folder (only a .safetensors file can be inspected "
            "on its own)",
            where=str(file),
            fix=f"pass the folder that holds it: {file.parent}",
        )
    raw, _metadata = read_header(file)
    folder = file.parent
    warnings: list[str] = []
    config = _read_config(folder, warnings)
    others = sorted(p.name for p in folder.glob("*.safetensors") if p.name != file.name) + [
        name for name in (SAFETENSORS_INDEX, BIN_INDEX) if (folder / name).is_file()
    ]
    if others:
        warnings.append(
            f"only this file's tensors: the folder also holds {', '.join(others[:3])}"
            + (" ..." if len(others) > 3 else "")
            + f"; inspect {folder} for the whole checkpoint"
        )
    return _local_checkpoint(file, raw, config, [file], [file.name], "safetensors", warnings)


def _local_checkpoint(
    path: Path,
    raw: dict[str, TensorInfo],
    config: dict[str, Any],
    weight_files: list[Path],
    files: list[str],
    fmt: str,
    warnings: list[str],
) -> Checkpoint:
    """A checkpoint on disk: its tokenizer and chat template are looked for beside its weights."""
    folder = path if path.is_dir() else path.parent
    return Checkpoint.from_tensors(
        raw,
        path=path,
        config=config,
        weight_files=weight_files,
        files=files,
        format=fmt,
        has_tokenizer=any((folder / name).is_file() for name in TOKENIZER_FILES),
        has_chat_template=has_chat_template(
            _FolderFiles(folder), lambda name: (folder / name).read_text(encoding="utf-8")
        ),
        warnings=warnings,
    )


class _FolderFiles:
    """The names of the regular files in a folder, as a container (`name in files`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self.folder / name).is_file()


def _read_config(folder: Path, warnings: list[str]) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        warnings.append("no config.json: architecture and layer count come from tensor names")
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"config.json is not valid JSON ({exc})",
            where=str(config_path),
            fix="restore config.json from the model's source",
        ) from None
    if not isinstance(config, dict):
        raise UserError(
            "config.json is not a JSON object",
            where=str(config_path),
            fix="restore config.json from the model's source",
        )
    return config


def _layer_map(
    raw: dict[str, TensorInfo],
) -> tuple[dict[str, TensorInfo], list[dict[BlockKind, list[str]]], list[str], list[str]]:
    pre_layer: list[str] = []
    post_layer: list[str] = []
    by_layer: dict[int, list[str]] = {}
    for name in raw:
        index = layer_index(name)
        if index is not None:
            by_layer.setdefault(index, []).append(name)
        elif is_pre_layer(name):
            pre_layer.append(name)
        else:
            post_layer.append(name)
    # After the stack: final norm first, the head last, as a forward pass meets them.
    post_layer.sort(key=lambda name: {"norm": 0, "head": 2}.get(block_kind(name), 1))
    count = max(by_layer) + 1 if by_layer else 0
    layers: list[dict[BlockKind, list[str]]] = []
    ordered_names = list(pre_layer)
    for index in range(count):
        groups: dict[BlockKind, list[str]] = {kind: [] for kind in BLOCK_KINDS}
        for name in by_layer.get(index, []):
            groups[block_kind(name)].append(name)
        layers.append(groups)
        ordered_names.extend(name for kind in BLOCK_KINDS for name in groups[kind])
    ordered_names.extend(post_layer)
    return {name: raw[name] for name in ordered_names}, layers, pre_layer, post_layer


def _config_value(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for source in (config, config.get("text_config")):
        if isinstance(source, dict):
            for key in keys:
                if isinstance(source.get(key), int) and not isinstance(source.get(key), bool):
                    return source[key]
    return None


def _config_layer_count(config: dict[str, Any]) -> int | None:
    value = _config_value(config, _LAYER_COUNT_KEYS)
    return int(value) if value is not None else None


def has_chat_template(names: Container[str], read: Callable[[str], str | bytes]) -> bool:
    """Whether a checkpoint whose files are `names` has a chat template: a template file, or one in
    tokenizer_config.json (read with `read`; unreadable JSON, or a failed fetch, means no)."""
    if any(name in names for name in CHAT_TEMPLATE_FILES):
        return True
    if "tokenizer_config.json" not in names:
        return False
    try:
        data = json.loads(read("tokenizer_config.json"))
    except (ValueError, UserError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return isinstance(data, dict) and bool(data.get("chat_template"))

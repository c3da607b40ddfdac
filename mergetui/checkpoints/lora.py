"""PEFT LoRA adapters as merge inputs: what an adapter folder holds, read from its config and its
safetensors header, and which checkpoint tensor each of its pieces changes.

An adapter changes a model's tensors as they are read (`mergetui.merge.lora_apply`), so nothing
here loads a tensor: the planner and the validator check an adapter against its base from headers
alone (but for a saved head on a tied base, compared with the embedding: lora_ties.py), and
`mergetui inspect` shows its rank, alpha and targets. Only plain LoRA is supported
(`SUPPORTED_KINDS`); any other PEFT adapter is refused with a located error before weights load.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.safetensors_io import TensorInfo, read_header
from mergetui.errors import UserError

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
SUPPORTED_KINDS = (
    "plain LoRA (peft_type LORA, rsLoRA included, with modules_to_save and lora_bias); not DoRA, "
    "trained base biases (bias: all / lora_only), target_parameters, nor other PEFT types (IA3, "
    "LoHa, LoKr, prompt tuning ...)"
)
# PEFT saves an adapter's tensors under the wrapped model's names: `base_model.model.` + the
# checkpoint's module path, then `lora_A.weight` / `lora_B.weight` (Linear, Conv1D) or
# `lora_embedding_A` / `lora_embedding_B` (Embedding); a modules_to_save tensor keeps its own name.
PEFT_PREFIX = "base_model.model."
_PIECES = {
    ".lora_A.weight": ("A", False),
    ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True),
    ".lora_embedding_B": ("B", True),
}
LORA_BIAS = ".lora_B.bias"  # lora_bias: true (PEFT >= 0.14): added to the layer's own bias


@dataclass(frozen=True)
class LoraModule:
    """One low-rank update: the checkpoint tensor `target` becomes
    W + scale * (B @ A) (transposed for Conv1D's fan_in_fan_out and for embeddings)."""

    target: str
    a: TensorInfo
    b: TensorInfo
    scale: float
    transposed: bool
    # The weight the update is added to, when the adapter saved its own copy (PEFT saves the
    # embedding layers it adapts: `...embed_tokens.base_layer.weight`); None: the base's.
    base: TensorInfo | None = None
    # A second update of the same tensor, added after this one is rounded: a tied head's LoRA,
    # which PEFT merges into the embedding it shares after the embedding's own (lora_ties.py).
    then: LoraModule | None = None
    # An embedding's update (lora_embedding_A/B): PEFT's Embedding.merge rounds the update to
    # the weight's dtype before adding it, so the sum is rounded twice (a Linear's, once).
    embedding: bool = False

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def delta_shape(self) -> tuple[int, int]:
        """The shape of B @ A as the checkpoint stores the tensor."""
        rows, cols = self.b.shape[0], self.a.shape[1]
        return (cols, rows) if self.transposed else (rows, cols)


@dataclass(frozen=True)
class LoraBias(TensorInfo):
    """A `lora_bias` piece (lora_B.bias, where this TensorInfo points): the checkpoint tensor
    `target` (the layer's bias) becomes bias + scale * lora_B.bias, as PEFT merges it."""

    target: str
    scale: float


@dataclass(frozen=True)
class Adapter:
    """An adapter folder: its config's facts and its tensors mapped to checkpoint names."""

    path: Path
    config: dict[str, Any] = field(repr=False)
    file: Path
    format: str  # "safetensors" or "bin"
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: list[str]
    modules_to_save: list[str]
    base_model: str | None
    modules: dict[str, LoraModule] = field(repr=False)  # by checkpoint tensor name
    # modules_to_save, and lora_bias updates (LoraBias), by checkpoint name
    replaced: dict[str, TensorInfo] = field(repr=False)
    # lora_B.bias tensors of an adapter without lora_bias: true, which PEFT drops on load
    ignored: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        """The default scaling, alpha / r (rsLoRA: alpha / sqrt(r))."""
        return lora_scale(self.alpha, self.rank, self.use_rslora)

    @property
    def size_on_disk(self) -> int:
        return self.file.stat().st_size

    def to_dict(self) -> dict[str, Any]:
        """What `mergetui inspect --json` prints for an adapter."""
        return {
            "adapter": str(self.path),
            "peft_type": "LORA",
            "rank": self.rank,
            "alpha": self.alpha,
            "use_rslora": self.use_rslora,
            "scale": self.scale,
            "target_modules": self.target_modules,
            "modules_to_save": self.modules_to_save,
            "base_model": self.base_model,
            "format": self.format,
            "lora_tensors": len(self.modules),
            "replaced_tensors": sorted(
                name for name, info in self.replaced.items() if not isinstance(info, LoraBias)
            ),
            "bias_updates": sorted(n for n, i in self.replaced.items() if isinstance(i, LoraBias)),
            "ranks": sorted({module.rank for module in self.modules.values()}),
            "size_on_disk": self.size_on_disk,
        }


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) for rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def peft_tensor_names(module: str, embedding: bool) -> tuple[str, str]:
    """The names PEFT saves module `module`'s lora_A and lora_B under (an embedding's pieces have
    their own names): the inverse of what `open_adapter` reads, for writing an adapter."""
    pieces = {piece: suffix for suffix, (piece, emb) in _PIECES.items() if emb == embedding}
    return f"{PEFT_PREFIX}{module}{pieces['A']}", f"{PEFT_PREFIX}{module}{pieces['B']}"


def is_adapter_folder(path: str | Path) -> bool:
    """Whether `path` is a folder holding a PEFT adapter config."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def open_adapter(path: str | Path, *, allow_bin: bool = False, where: str | None = None) -> Adapter:
    """Read and check an adapter folder (config and header only). `where` locates errors (a
    recipe key); by default they point at the folder's files."""
    folder = Path(path).expanduser()
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise UserError(
            f"no {ADAPTER_CONFIG} in {folder}: not a PEFT adapter folder",
            where=where or str(folder),
            fix="point lora at the folder that holds adapter_config.json and "
            "adapter_model.safetensors",
        )
    config = _read_config(config_path, where)
    _check_kind(config, where or str(config_path))
    file, fmt, tensors = _adapter_tensors(folder, allow_bin, where)
    rank = _positive(config.get("r"), "r", where or str(config_path))
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise UserError(
            f"lora_alpha must be a number, not {alpha!r}", where=where or str(config_path)
        )
    use_rslora = bool(config.get("use_rslora", False))
    modules, replaced, ignored = _map_tensors(
        tensors, config, float(alpha), use_rslora, where or str(file)
    )
    targets = config.get("target_modules") or []
    return Adapter(
        path=folder,
        config=config,
        file=file,
        format=fmt,
        rank=rank,
        alpha=float(alpha),
        use_rslora=use_rslora,
        target_modules=[targets] if isinstance(targets, str) else sorted(map(str, targets)),
        modules_to_save=sorted(map(str, config.get("modules_to_save") or [])),
        base_model=config.get("base_model_name_or_path") or None,
        modules=modules,
        replaced=replaced,
        ignored=tuple(ignored),
    )


def _read_config(config_path: Path, where: str | None) -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"cannot read {ADAPTER_CONFIG} ({exc})",
            where=where or str(config_path),
            fix="download or save the adapter again",
        ) from None
    if not isinstance(config, dict):
        raise UserError(f"{ADAPTER_CONFIG} is not a JSON object", where=where or str(config_path))
    return config


def _check_kind(config: dict[str, Any], where: str) -> None:
    """Refuse every adapter that is not plain LoRA, saying which kinds are supported."""
    peft_type = config.get("peft_type")
    refusals = []
    if peft_type != "LORA":
        refusals.append(f"a {peft_type or 'untyped'} adapter (peft_type is not LORA)")
    if config.get("use_dora"):
        refusals.append("a DoRA adapter (use_dora: true)")
    if config.get("bias") not in (None, "none"):
        refusals.append(f"an adapter that trains the base's biases (bias: {config.get('bias')})")
    if config.get("target_parameters"):
        refusals.append("an adapter on parameters (target_parameters)")
    if config.get("trainable_token_indices"):
        refusals.append("an adapter with trainable tokens (trainable_token_indices)")
    if refusals:
        raise UserError(
            f"this is {refusals[0]}, which mergetui cannot apply",
            where=where,
            fix=f"supported: {SUPPORTED_KINDS}; merge it into its base with peft "
            "(merge_and_unload) and use that folder",
        )


def _positive(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{key} must be a positive integer, not {value!r}", where=where)
    return value


def _adapter_tensors(
    folder: Path, allow_bin: bool, where: str | None
) -> tuple[Path, str, dict[str, TensorInfo]]:
    """The adapter's weight file, its format and its tensors (headers; .bin only if allowed)."""
    safetensors = folder / ADAPTER_SAFETENSORS
    if safetensors.is_file():
        return safetensors, "safetensors", read_header(safetensors)[0]
    pickled = folder / ADAPTER_BIN
    if pickled.is_file():
        if not allow_bin:
            raise UserError(
                f"the adapter is in {ADAPTER_BIN} (pickle) format, which mergetui does not open "
                "by default: loading a pickle can run code",
                where=where or str(pickled),
                fix="save it again with safetensors (save_pretrained(..., safe_serialization="
                "True)), or pass --allow-bin if you trust it",
            )
        from mergetui.checkpoints.weights import read_bin_tensors

        return pickled, "bin", read_bin_tensors([pickled])
    raise UserError(
        f"no {ADAPTER_SAFETENSORS} in {folder}",
        where=where or str(folder),
        fix="download the adapter's weights too",
    )


def _map_tensors(
    tensors: dict[str, TensorInfo],
    config: dict[str, Any],
    alpha: float,
    use_rslora: bool,
    where: str,
) -> tuple[dict[str, LoraModule], dict[str, TensorInfo], list[str]]:
    """PEFT's tensor names -> (LoRA pairs, replacement tensors and bias updates) by checkpoint
    tensor name, and the lora_B.bias tensors PEFT would drop (no lora_bias in the config)."""
    pairs: dict[str, dict[str, TensorInfo]] = {}
    transposed: dict[str, bool] = {}
    embeddings: set[str] = set()
    replaced: dict[str, TensorInfo] = {}
    biases: dict[str, TensorInfo] = {}
    ignored: list[str] = []
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    for name, info in tensors.items():
        key = name.removeprefix(PEFT_PREFIX)
        if key.endswith(LORA_BIAS):
            if config.get("lora_bias"):
                biases[key[: -len(LORA_BIAS)]] = info
            else:  # PEFT builds lora_B without a bias and drops the tensor (mergekit-extract-lora)
                ignored.append(name)
            continue
        for suffix, (piece, embedding) in _PIECES.items():
            if key.endswith(suffix):
                module = key[: -len(suffix)]
                pairs.setdefault(module, {})[piece] = info
                transposed[module] = embedding or fan_in_fan_out
                if embedding:
                    embeddings.add(module)
                break
        else:
            if ".lora_" in key or "lora_magnitude" in key:
                raise UserError(f"unsupported adapter tensor {name}", where=where)
            # modules_to_save keep the module's name; a saved base layer replaces its weight
            target = key.replace(".modules_to_save.", ".").replace(".base_layer.", ".")
            replaced[target] = info
    modules: dict[str, LoraModule] = {}
    alpha_pattern = config.get("alpha_pattern") or {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise UserError(
                f"module {module} has lora_{''.join(pair)} but not its pair", where=where
            )
        a, b = pair["A"], pair["B"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise UserError(
                f"module {module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not "
                "make a rank-r product",
                where=where,
            )
        module_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        scale = lora_scale(module_alpha, a.shape[0], use_rslora)
        target = f"{module}.weight"
        base = replaced.pop(target, None)
        modules[target] = LoraModule(
            target, a, b, scale, transposed[module], base, embedding=module in embeddings
        )
        bias = biases.pop(module, None)
        if bias is not None:
            if tuple(bias.shape) != (b.shape[0],):
                raise UserError(
                    f"module {module}: lora_B.bias is {list(bias.shape)}, not [{b.shape[0]}]",
                    where=where,
                )
            replaced[f"{module}.bias"] = LoraBias(
                **{k: getattr(bias, k) for k in TensorInfo.__dataclass_fields__},
                target=f"{module}.bias",
                scale=scale,
            )
    if biases:
        raise UserError(f"module {next(iter(biases))} has a lora_B.bias but no lora_A", where=where)
    return modules, replaced, ignored


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's `get_pattern_key`: the first pattern that matches the module's name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass(frozen=True)
class AdapterMisfit:
    """Why an adapter does not fit a base, and what to do about it."""

    message: str
    fix: str


def check_adapter(
    adapter: Adapter, checkpoint: Checkpoint, source: str
) -> tuple[AdapterMisfit | None, list[str]]:
    """Whether `adapter` fits the base `checkpoint` (headers only): (None, warnings) when it
    does, else (the first misfit, warnings). The base the adapter names is only a warning. On a base
    with tied embeddings, the adapter's head pieces are first moved onto the embedding as PEFT
    merges them (lora_ties.py: the one case that compares tensor values)."""
    from mergetui.checkpoints.lora_ties import fit_tied_head, unsaved_head_warnings

    warnings: list[str] = []
    named = adapter.base_model
    if named and Path(named).name.lower() != Path(source.rstrip("/")).name.lower():
        warnings.append(
            f"the adapter was trained on {named!r}, here applied to {source!r}; its shapes fit"
        )
    if adapter.ignored:
        warnings.append(
            f"the adapter holds {len(adapter.ignored)} lora_B.bias tensors but its config does "
            "not set lora_bias: true, so they are not applied (PEFT and mergekit-yaml drop them "
            'too); set "lora_bias": true in its adapter_config.json to apply them'
        )
    warnings += unsaved_head_warnings(adapter)
    warnings += _bias_free_layers(adapter, checkpoint)
    misfit = fit_tied_head(adapter, checkpoint)
    if misfit is not None:
        return misfit, warnings
    own_base = f"use the adapter with the base it was trained on ({adapter.base_model or '?'})"
    tensors = checkpoint.tensors
    for name, module in adapter.modules.items():
        info = tensors.get(name)
        if info is None:
            return AdapterMisfit(_missing(name, checkpoint), own_base), warnings
        if module.base is not None and tuple(module.base.shape) != tuple(info.shape):
            message = (
                f"the adapter's copy of {name} is {list(module.base.shape)}, but the base's "
                f"is {list(info.shape)}"
            )
            return AdapterMisfit(message, own_base), warnings
        step: LoraModule | None = module
        while step is not None:
            if tuple(info.shape) != step.delta_shape:
                message = (
                    f"the adapter changes {name} by a {list(step.delta_shape)} update, but the "
                    f"base's {name} is {list(info.shape)}: it was made for another model size"
                )
                return AdapterMisfit(message, own_base), warnings
            step = step.then
    for name, info in adapter.replaced.items():
        have = tensors.get(name)
        if isinstance(info, LoraBias) and have is None:
            return _no_bias(name, checkpoint), warnings
        if have is None:
            return AdapterMisfit(_missing(name, checkpoint), own_base), warnings
        if tuple(have.shape) != tuple(info.shape):
            message = (
                f"the adapter replaces {name} with a {list(info.shape)} tensor, but the base's "
                f"is {list(have.shape)}"
            )
            return AdapterMisfit(message, own_base), warnings
    return None, warnings


def _bias_free_layers(adapter: Adapter, checkpoint: Checkpoint) -> list[str]:
    """lora_bias: true is global in PEFT: layers with neither a bias nor a lora_B.bias (what
    extract-lora writes for a Qwen2's o_proj) make PEFT's merge fail, not its model."""
    if not adapter.config.get("lora_bias"):
        return []
    bare = [
        name.removesuffix(".weight")
        for name, module in adapter.modules.items()
        if not module.embedding
        and name.endswith(".weight")
        and f"{name.removesuffix('.weight')}.bias" not in adapter.replaced
        and f"{name.removesuffix('.weight')}.bias" not in checkpoint.tensors
    ]
    if not bare:
        return []
    return [
        f"lora_bias: true, but {len(bare)} adapted layers have no bias (first {bare[0]}) and "
        "the adapter gives them none: PEFT's merge refuses that (mergekit-yaml fails), mergetui "
        "applies the biases the adapter holds, as PEFT's unmerged model does"
    ]


def _no_bias(name: str, checkpoint: Checkpoint) -> AdapterMisfit:
    module = name.removesuffix(".bias")
    return AdapterMisfit(
        f"the adapter adds a bias to {module} (lora_bias: true), but the base's {module} has no "
        f"bias ({name}): PEFT cannot merge it ('Impossible to merge LoRA with lora_bias=True "
        "because the base layer has no bias', so mergekit-yaml fails too), and a "
        f"{checkpoint.architecture or 'model'} whose config declares no such bias would not "
        "load one",
        "use the adapter on a base whose layers have biases, or merge it without its biases by "
        "setting lora_bias: false in its adapter_config.json",
    )


def _missing(name: str, checkpoint: Checkpoint) -> str:
    arch = checkpoint.architecture or "this architecture"
    return f"the adapter changes {name}, which the base ({arch}) does not have: it is for another architecture"

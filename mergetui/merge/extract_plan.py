"""What `mergetui extract-lora` will do, decided from configs and headers before a tensor is read.

mergekit-extract-lora walks the fine-tune's modules (a model built on the meta device, so no
memory; for the decoder families in `_LAYOUTS` the same list comes from the config and tensor names,
sparing the import of transformers' modelling code) and sorts each module that has a weight: a Linear (or Conv, or an Embedding with
`--embed-lora`) gets a low-rank update from the SVD of its delta; an embedding without
`--embed-lora`, a module named by `--save-module`, and any other module with a weight (norms) is
saved whole in `modules_to_save`; `--include` / `--exclude` regexes pick which modules are
decomposed. This module makes the same choices in the same order, so the adapter has the same
tensors, and checks every number, regex, architecture and shape first (located `UserError`s).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergetui.checkpoints.compat import describe_architecture, same_architecture
from mergetui.checkpoints.inspect import Checkpoint, open_checkpoint
from mergetui.checkpoints.safetensors_io import TensorInfo
from mergetui.errors import UserError

DEFAULT_RANK = 128  # mergekit-extract-lora's --max-rank
MAX_RANK = 65536  # no weight matrix a model ships has a side this long's rank to spare


@dataclass(frozen=True)
class ExtractOptions:
    """The command's choices (mergekit's names in comments)."""

    rank: int = DEFAULT_RANK  # --max-rank
    energy: float | None = None  # ours: keep this share of the squared singular values
    embed_lora: bool = False  # --embed-lora
    save_modules: tuple[str, ...] = ()  # --save-module
    include: tuple[str, ...] = ()  # --include-regex
    exclude: tuple[str, ...] = ()  # --exclude-regex


@dataclass(frozen=True)
class LoraTarget:
    """A module whose delta is decomposed: B @ A approximates fine-tune - base."""

    module: str
    finetuned: TensorInfo
    base: TensorInfo
    embedding: bool  # an nn.Embedding: PEFT stores its pieces transposed
    bias: tuple[TensorInfo, TensorInfo] | None = None  # (fine-tune, base) biases

    @property
    def max_rank(self) -> int:
        return min(self.finetuned.shape)


@dataclass(frozen=True)
class SavedTensor:
    """A fine-tune tensor copied whole into the adapter (modules_to_save)."""

    module: str
    info: TensorInfo
    name: (
        str  # the checkpoint name it is saved under (a tied head: the head's, not the embedding's)
    )


@dataclass(frozen=True)
class ModuleEntry:
    """A module with a weight, as mergekit's walk sees it."""

    name: str
    kind: str  # "embedding" (nn.Embedding), "linear" (Linear or Conv), "other" (a norm...)
    role: str  # "input" / "output": the model's input / output embedding; else ""


# Decoder families whose modules are known without building the model (transformers' modelling
# code costs ~170 MB and seconds to import): model_type -> (its architecture, one layer's modules
# in the model's order), between model.embed_tokens and model.norm, lm_head.
# tests/test_extract_lora_plan.py checks each against the model transformers builds.
_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm")
_LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama": ("LlamaForCausalLM", _ATTENTION + _MLP + _NORMS),
    "mistral": ("MistralForCausalLM", _ATTENTION + _MLP + _NORMS),
    "qwen2": ("Qwen2ForCausalLM", _ATTENTION + _MLP + _NORMS),
    "gemma": ("GemmaForCausalLM", _ATTENTION + _MLP + _NORMS),
    "phi3": (
        "Phi3ForCausalLM",
        ("self_attn.o_proj", "self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj") + _NORMS,
    ),
}


@dataclass
class ExtractPlan:
    """Everything the run needs: the two checkpoints, what to decompose, what to copy."""

    finetuned: Checkpoint
    base: Checkpoint
    finetuned_source: str
    base_source: str
    options: ExtractOptions
    targets: list[LoraTarget] = field(default_factory=list)
    saved: list[SavedTensor] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """The bytes the run reads, for a progress bar."""
        lora = sum(t.finetuned.nbytes + t.base.nbytes for t in self.targets)
        return lora + sum(s.info.nbytes for s in self.saved)


def check_options(options: ExtractOptions) -> None:
    """Every number and regex, before any file is opened."""
    rank = options.rank
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
        raise UserError(
            f"the rank must be a whole number from 1 to {MAX_RANK}, not {rank!r}",
            where="--rank",
            fix=f"mergekit's default is {DEFAULT_RANK}; each module's rank is also capped by "
            "its shape",
        )
    energy = options.energy
    if energy is not None and not (math.isfinite(energy) and 0 < energy <= 1):
        raise UserError(
            f"the energy share must be above 0 and at most 1, not {energy!r}",
            where="--energy",
            fix="e.g. --energy 0.9 keeps 90% of each delta's squared singular values",
        )
    for flag, patterns in (("--include", options.include), ("--exclude", options.exclude)):
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise UserError(
                    f"{pattern!r} is not a regular expression ({exc})",
                    where=flag,
                    fix="write a Python regex searched in module names, e.g. 'self_attn' or "
                    r"'layers\.(0|1)\.'",
                ) from None
    for name in options.save_modules:
        if not name or not name.strip():
            raise UserError("an empty module name", where="--save-module", fix="e.g. lm_head")


def plan_extraction(
    finetuned: Path,
    base: Path,
    options: ExtractOptions,
    *,
    finetuned_source: str | None = None,
    base_source: str | None = None,
    allow_bin: bool = False,
) -> ExtractPlan:
    """Open both checkpoints (headers), check they match, and sort the fine-tune's modules."""
    check_options(options)
    ft = open_checkpoint(finetuned, allow_bin=allow_bin)
    bs = open_checkpoint(base, allow_bin=allow_bin)
    if not same_architecture(ft, bs):
        raise UserError(
            f"the fine-tune is a {describe_architecture(ft)} but the base is a "
            f"{describe_architecture(bs)}",
            where=str(base),
            fix="extract against the model the fine-tune was trained from",
        )
    plan = ExtractPlan(
        ft, bs, finetuned_source or str(finetuned), base_source or str(base), options
    )
    modules = known_layout(ft)
    if modules is None:
        modules = _walk(_meta_model(ft))
    embed_lora = options.embed_lora
    if embed_lora and ft.vocab_size != bs.vocab_size:
        plan.notices.append(
            f"the vocabularies differ ({ft.vocab_size} tokens against {bs.vocab_size}): "
            "embeddings are saved whole, not as LoRA (as mergekit does)"
        )
        embed_lora = False
    _sort_modules(plan, modules, embed_lora)
    if not plan.targets and (options.include or options.exclude):
        raise UserError(
            "no module is left to decompose",
            where="--include" if options.include else "--exclude",
            fix="loosen --include / --exclude (they are searched in module names such as "
            "model.layers.0.self_attn.q_proj)",
        )
    if not plan.targets:
        raise UserError(
            "no module of this model can be decomposed: only torch Linear, Conv and Embedding "
            "layers are (transformers' Conv1D, as in GPT-2, is saved whole, as mergekit does)",
            where=str(finetuned),
            fix="pass --embed-lora to decompose the embeddings, or merge the fine-tune instead",
        )
    return plan


def _meta_model(checkpoint: Checkpoint) -> Any:
    """The fine-tune's model built on the meta device (no memory): its modules and their types."""
    import torch
    import transformers

    if checkpoint.config.get("auto_map"):
        raise UserError(
            "this model's architecture needs its own code (auto_map), which extract-lora "
            "does not run",
            where=str(checkpoint.path / "config.json"),
            fix="use a model whose architecture transformers has built in",
        )
    try:
        config = transformers.AutoConfig.from_pretrained(str(checkpoint.path))
        names = checkpoint.config.get("architectures") or []
        cls = getattr(transformers, names[0], None) if names else None
        with torch.device("meta"):
            if cls is not None:
                return cls(config)
            return transformers.AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            "transformers cannot build this architecture "
            f"({(str(exc) or repr(exc)).splitlines()[0]})",
            where=str(checkpoint.path / "config.json"),
            fix="extract-lora needs a config.json transformers knows",
        ) from None


def _walk(model: Any) -> list[ModuleEntry]:
    """The modules with a weight of a (meta) model, in its order, as mergekit's walk sorts them."""
    import torch
    from torch import nn

    embed_in, embed_out = model.get_input_embeddings(), model.get_output_embeddings()
    entries = []
    for name, module in model.named_modules():
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        if isinstance(module, nn.Embedding):
            kind = "embedding"
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            kind = "linear"
        else:
            kind = "other"
        role = "output" if module is embed_out else "input" if module is embed_in else ""
        entries.append(ModuleEntry(name, kind, role))
    return entries


def known_layout(checkpoint: Checkpoint) -> list[ModuleEntry] | None:
    """The modules of a decoder of a family in _LAYOUTS, from its config alone, when its tensors
    are exactly those modules' weights (and Linear biases); else None (build the model)."""
    config = checkpoint.config
    layout = _LAYOUTS.get(config.get("model_type"))
    layers = config.get("num_hidden_layers")
    if layout is None or config.get("architectures") != [layout[0]] or config.get("auto_map"):
        return None
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        return None
    names = ["model.embed_tokens"]
    for layer in range(layers):
        names += [f"model.layers.{layer}.{module}" for module in layout[1]]
    names += ["model.norm", "lm_head"]
    entries = [ModuleEntry(name, _kind(name), "") for name in names]
    entries[0] = ModuleEntry("model.embed_tokens", "embedding", "input")
    entries[-1] = ModuleEntry("lm_head", "linear", "output")
    expected = {entry.name + ".weight" for entry in entries}
    expected.discard("lm_head.weight")  # a tied head is not stored
    stored = set(checkpoint.tensors)
    linear = {entry.name + ".bias" for entry in entries if entry.kind == "linear"}
    if not expected <= stored or not stored - expected <= linear | {"lm_head.weight"}:
        return None
    return entries


def _kind(name: str) -> str:
    return "other" if name.endswith("norm") else "linear"


def _sort_modules(plan: ExtractPlan, modules: list[ModuleEntry], embed_lora: bool) -> None:
    """mergekit's walk over the modules: decompose, save whole, or skip each one. Names the
    embeddings add to `modules_to_save` and `--save-module`'s own names all reach the config."""
    options = plan.options
    save = list(options.save_modules)
    embed_in_name = next((m.name for m in modules if m.role == "input"), None)
    for module in modules:
        name = module.name
        key = name.split(".")[-1]
        embedding = module.role != "" or module.kind == "embedding"
        excluded = any(re.search(p, name) for p in options.exclude)
        if not embed_lora and embedding and not excluded and key not in save:
            save.append(key)
        tied_to = embed_in_name if module.role == "output" else None
        if name in save or key in save:
            _save_module(plan, name, tied_to)
        elif _should_extract(name, options):
            if module.kind != "other":
                _add_target(plan, name, module.kind == "embedding")
            else:  # a norm or another module with a weight: whole, as mergekit does
                if key not in save:
                    save.append(key)
                _save_module(plan, name, tied_to)
    plan.modules_to_save = save


def _should_extract(name: str, options: ExtractOptions) -> bool:
    if options.include and not any(re.search(p, name) for p in options.include):
        return False
    return not any(re.search(p, name) for p in options.exclude)


def _save_module(plan: ExtractPlan, module: str, tied_to: str | None) -> None:
    """The fine-tune's weight (and bias) of `module`, copied whole. A head that is not stored
    (tied to the input embedding `tied_to`) is saved as the embedding's weight, as mergekit does."""
    tensors = plan.finetuned.tensors
    for suffix in (".weight", ".bias"):
        name = module + suffix
        info = tensors.get(name)
        if info is None and suffix == ".weight" and tied_to is not None:
            info = tensors.get(tied_to + ".weight")
        if info is not None:
            plan.saved.append(SavedTensor(module, info, name))


def _add_target(plan: ExtractPlan, module: str, embedding: bool) -> None:
    """A module to decompose: both weights present, 2-D, of one shape (else a located error)."""
    name = module + ".weight"
    ft = plan.finetuned.tensors.get(name)
    if ft is None:
        return  # a module the checkpoint does not store (mergekit's optional weights)
    bs = plan.base.tensors.get(name)
    if bs is None:
        raise UserError(
            f"the base has no {name}, which the fine-tune has",
            where=str(plan.base.path),
            fix="extract against the model the fine-tune was trained from",
        )
    if tuple(bs.shape) != tuple(ft.shape):
        raise UserError(
            f"{name} is {list(ft.shape)} in the fine-tune but {list(bs.shape)} in the base",
            where=str(plan.base.path),
            fix="the two models are different sizes; extract against the fine-tune's own base",
        )
    if len(ft.shape) != 2:
        raise UserError(
            f"{name} is {len(ft.shape)}-D ({list(ft.shape)}); only 2-D weights can be decomposed",
            where=module,
            fix=f"leave it out with --exclude '{re.escape(module)}' or save it with "
            f"--save-module {module.split('.')[-1]}",
        )
    bias = None
    ft_bias = plan.finetuned.tensors.get(module + ".bias")
    bs_bias = plan.base.tensors.get(module + ".bias")
    if ft_bias is not None and bs_bias is not None and ft_bias.shape == bs_bias.shape:
        bias = (ft_bias, bs_bias)
    plan.targets.append(LoraTarget(module, ft, bs, embedding, bias))

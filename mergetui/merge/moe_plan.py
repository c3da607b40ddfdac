"""The plan of an MoE assembly, from headers and configs only: which output architecture (as
mergekit-moe picks it), every output tensor with the pieces of input tensors it is made of, and the
shard layout. Everything a person can get wrong about the models (another architecture, another
shape, a missing tensor, shared experts on an output without them) is a located `UserError` here,
before any weight is read.

Output layouts are mergekit-moe's (transformers v5 names): Mixtral stacks each layer's expert
MLPs into `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows then up rows per expert) and
`mlp.experts.down_proj` [E, H, I]; Qwen2-MoE keeps one tensor per expert
(`mlp.experts.N.gate_proj.weight`...) plus `mlp.shared_expert.*` and `mlp.shared_expert_gate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.dtypes import DTYPE_SIZES, dtype_code, dtype_name
from mergetui.errors import UserError
from mergetui.formatting import human_bytes
from mergetui.merge.writer import DEFAULT_SHARD_SIZE, OutputLayout, layout_output
from mergetui.recipe.moe import OUTPUT_ARCHITECTURES, RANDOM_GATE_MODES, MoeExpert, MoeRecipe

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint

MIXTRAL, QWEN = OUTPUT_ARCHITECTURES["mixtral"], OUTPUT_ARCHITECTURES["qwen"]
_MIXTRAL_TYPES = ("llama", "mistral")
_QWEN_TYPES = ("llama", "mistral", "qwen2")
_MLP = ("gate_proj", "up_proj", "down_proj")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Piece:
    """Input tensor `tensor` of model `model` ("base", "experts.1"...), written `start` bytes into
    its output tensor; `expert` gets its noise and (`residual`) its residual scale."""

    model: str
    tensor: str
    start: int = 0
    expert: MoeExpert | None = None
    residual: bool = False


@dataclass
class MoeTensor:
    """One output tensor. `kind`: "copy" (its pieces), "zeros" (a bias Qwen2-MoE needs and the
    base lacks), "router" / "shared_router" (the gate rows of this `layer`)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str = "copy"
    pieces: list[Piece] = field(default_factory=list)
    layer: int | None = None

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * DTYPE_SIZES[self.dtype]


@dataclass
class MoePlan:
    """What `merge.moe_run.run_moe` does, decided before any weight is read."""

    recipe: MoeRecipe
    architecture: str  # MIXTRAL or QWEN
    models: dict[str, Checkpoint]  # "base", "experts.N", "shared_experts.0"
    out_dtype: str | None  # a safetensors code; None: each tensor keeps its own
    tensors: list[MoeTensor]
    layout: OutputLayout
    output_dir: Path
    recipe_dir: Path
    device: str = "auto"
    seed: int = 0
    notices: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return self.layout.total_bytes

    @property
    def layer_count(self) -> int:
        return len(self.models["base"].layers)

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def shard_count(self) -> int:
        return len(self.layout.shards)

    @property
    def estimated_peak_bytes(self) -> int:
        """The largest piece read into memory in float32 twice (read, cast; a plain copy goes
        file to file), and for `hidden` gates the base model loaded in bfloat16 (as
        mergekit-moe loads it), freed before the tensors."""
        largest = max((self._piece_bytes(t) for t in self.tensors), default=0)
        if self.recipe.gate_mode.startswith("hidden"):
            params = self.models["base"].parameter_count
            largest = max(largest, 2 * params + params // 4)
        return largest

    def _piece_bytes(self, tensor: MoeTensor) -> int:
        infos = [(p, self.models[p.model].tensors[p.tensor]) for p in tensor.pieces]
        sizes = [4 * _numel(i.shape) for p, i in infos if not plain_copy(p, i, tensor.dtype)]
        return 2 * max(sizes, default=0 if tensor.pieces else 4 * _numel(tensor.shape))

    def summary_lines(self) -> list[str]:
        """The dry run's lines: what a run would write."""
        r = self.recipe
        return [
            f"output architecture: {self.architecture}",
            f"experts: {len(r.experts)} ({r.experts_per_token} per token)"
            + (f", shared: {len(r.shared_experts)}" if r.shared_experts else ""),
            f"gate mode: {r.gate_mode}",
            f"layers: {self.layer_count}",
            f"tensors: {len(self.tensors)}",
            f"size: {human_bytes(self.total_bytes)} in {len(self.layout.shards)} file(s)",
            f"dtype: {dtype_name(self.out_dtype) if self.out_dtype else 'as each input'}",
            f"output: {self.output_dir}",
            f"estimated peak memory: {human_bytes(self.estimated_peak_bytes)}",
        ]


def plain_copy(piece: Piece, info: Any, dtype: str) -> bool:
    """Whether the piece's bytes go to the output as they are in its file (`MoeTensor` dtype
    `dtype`): a safetensors tensor of that dtype, no noise, no residual scale."""
    expert = piece.expert
    if info.offset < 0 or info.dtype != dtype:  # offset < 0: a pickled .bin tensor
        return False
    if expert is None:
        return True
    scaled = piece.residual and expert.residual_scale is not None
    return expert.noise_scale is None and not scaled


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def make_moe_plan(
    recipe: MoeRecipe,
    *,
    recipe_dir: Path,
    out: Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str = "auto",
    seed: int | None = None,
    allow_bin: bool = False,
) -> MoePlan:
    """Open every model's headers, pick the output architecture, check every shape, lay out the
    output. Raises a located UserError for anything a run would trip on."""
    from mergetui.recipe.paths import cli_path, recipe_path

    if out is not None:
        output_dir = cli_path(out)
    elif recipe.output:
        output_dir = recipe_path(recipe.output, recipe_dir)
    else:
        raise UserError(
            "the MoE recipe names no output folder",
            where=recipe.source_path,
            fix="pass --out DIR (or set output in the [moe] table)",
        )
    models, architecture = check_moe_models(recipe, recipe_dir, allow_bin=allow_bin)
    base = models["base"]
    out_dtype = dtype_code(recipe.dtype) if recipe.dtype else _config_dtype(base.config)
    tensors = (_mixtral_tensors if architecture == MIXTRAL else _qwen_tensors)(
        recipe, models, out_dtype
    )
    layout = layout_output(((t.name, t.dtype, t.shape) for t in tensors), shard_size)
    plan = MoePlan(
        recipe=recipe,
        architecture=architecture,
        models=models,
        out_dtype=out_dtype,
        tensors=tensors,
        layout=layout,
        output_dir=output_dir,
        recipe_dir=Path(recipe_dir),
        device=device,
        seed=seed if seed is not None else (recipe.seed or 0),
    )
    count = len(recipe.experts)
    if count & (count - 1):
        plan.notices.append(
            f"{count} experts is not a power of two: llama.cpp cannot run this model"
        )
    paths = {models[f"experts.{i}"].path for i in range(count)}
    if count > 1 and len(paths) == 1:
        plan.notices.append(
            "every expert is the same model: the MoE computes what that model computes, "
            "at more cost (useful only as a start for training)"
        )
    if any(e.noise_scale is not None for _, e in recipe.all_experts()):
        plan.notices.append(f"noise_scale draws its noise from seed {plan.seed}")
    return plan


def check_moe_models(
    recipe: MoeRecipe, recipe_dir: Path, *, allow_bin: bool = False
) -> tuple[dict[str, Checkpoint], str]:
    """Every model's headers opened (by the recipe's path rule, else the HF cache), the output
    architecture picked and every expert's shapes checked: (models, architecture). What
    `mergetui validate` checks of an MoE recipe, and the first half of its plan."""
    models = _open_models(recipe, recipe_dir, allow_bin)
    architecture = select_architecture(recipe, models)
    _check_shapes(recipe, models)
    return models, architecture


def _open_models(recipe: MoeRecipe, recipe_dir: Path, allow_bin: bool) -> dict[str, Checkpoint]:
    from mergetui.checkpoints.inspect import open_checkpoint
    from mergetui.recipe.paths import locate_model
    from mergetui.recipe.yaml_import import split_reference

    sources = [("base", recipe.base, recipe.where("base"))] + [
        (key, e.source, recipe.where(f"{key}.source")) for key, e in recipe.all_experts()
    ]
    opened: dict[str, Checkpoint] = {}
    by_path: dict[Path, Checkpoint] = {}
    for key, source, where in sources:
        path, revision = split_reference(source)
        found = locate_model(path, revision, recipe_dir)
        if found is None:
            pull = f"mergetui pull {path}" + (f" --revision {revision}" if revision else "")
            raise UserError(
                f"model {source!r} is not on this machine",
                where=where,
                fix=f"check the path, or download it first: {pull}",
            )
        path = found[0]
        if path not in by_path:
            by_path[path] = open_checkpoint(path, allow_bin=allow_bin)
        opened[key] = by_path[path]
    return opened


def _config_dtype(config: dict[str, Any]) -> str | None:
    """The base's own dtype when the recipe names none (mergekit-moe's `select_dtype`)."""
    name = config.get("dtype") or config.get("torch_dtype")
    return dtype_code(str(name)) if name else None


def select_architecture(recipe: MoeRecipe, models: dict[str, Checkpoint]) -> str:
    """Mixtral or Qwen MoE, as mergekit-moe's `select_output_arch` picks (Mixtral first); the
    reason in a located error when neither fits."""
    base_type = models["base"].model_type
    for key, expert in recipe.all_experts():
        other = models[key].model_type
        if other != base_type:
            raise UserError(
                f"expert {expert.source!r} is a {other} model and the base is a {base_type} model",
                where=recipe.where(f"{key}.source"),
                fix="use experts of the base's architecture",
            )
    wanted = (recipe.architecture or "").lower()
    candidates = [a for a in (MIXTRAL, QWEN) if a.lower().startswith(wanted)]
    if MIXTRAL in candidates and not recipe.shared_experts and base_type in _MIXTRAL_TYPES:
        return MIXTRAL
    if QWEN in candidates and len(recipe.shared_experts) == 1 and base_type in _QWEN_TYPES:
        return QWEN
    if recipe.shared_experts and QWEN not in candidates:
        raise UserError(
            "shared experts need a Qwen MoE output, and Mixtral has none",
            where=recipe.where("shared_experts"),
            fix="drop the shared experts, or set architecture to qwen",
        )
    if recipe.shared_experts:
        raise UserError(
            f"a Qwen MoE is built from llama, mistral or qwen2 models, not {base_type}",
            where=recipe.where("base"),
            fix="use a base and experts of one of those architectures",
        )
    if base_type in _QWEN_TYPES and QWEN in candidates:
        raise UserError(
            f"{base_type} experts make a Qwen2-MoE, which needs one shared expert",
            where=recipe.where("experts"),
            fix="add a shared_experts list with one expert and its prompts",
        )
    raise UserError(
        f"mergetui builds MoEs from llama or mistral models (Mixtral) and from qwen2 models "
        f"with a shared expert (Qwen2-MoE), not from {base_type} models"
        + (f" as {recipe.architecture}" if recipe.architecture else ""),
        where=recipe.where("architecture" if recipe.architecture else "base"),
        fix="use experts of one of those architectures",
    )


def _mlp_name(layer: int, proj: str) -> str:
    return f"model.layers.{layer}.mlp.{proj}.weight"


def _check_shapes(recipe: MoeRecipe, models: dict[str, Checkpoint]) -> None:
    """Every expert has the base's layers and each MLP tensor of the base's shape."""
    base = models["base"]
    layers = len(base.layers)
    for layer in range(layers):
        for proj in _MLP:
            if _mlp_name(layer, proj) not in base.tensors:
                raise UserError(
                    f"the base has no {_mlp_name(layer, proj)}: not a llama-style checkpoint",
                    where=recipe.where("base"),
                )
    for key, expert in recipe.all_experts():
        model = models[key]
        where = recipe.where(f"{key}.source")
        if len(model.layers) != layers:
            raise UserError(
                f"expert {expert.source!r} has {len(model.layers)} layers and the base {layers}",
                where=where,
                fix="use experts fine-tuned from the base (the same shape)",
            )
        for layer in range(layers):
            for proj in _MLP:
                name = _mlp_name(layer, proj)
                want = base.tensors[name].shape
                have = model.tensors.get(name)
                if have is None or have.shape != want:
                    shown = "missing" if have is None else f"{list(have.shape)}"
                    raise UserError(
                        f"expert {expert.source!r}: {name} is {shown}, the base's is {list(want)}",
                        where=where,
                        fix="use experts fine-tuned from the base (the same shape)",
                    )


def _router_dtype(recipe: MoeRecipe, out_dtype: str | None) -> str:
    """The gates' dtype: the output's, else what they are computed in (bfloat16 hidden states,
    float32 embeddings or random draws), as mergekit-moe writes them."""
    if out_dtype:
        return out_dtype
    return "BF16" if recipe.gate_mode.startswith("hidden") else "F32"


def _base_tensors(
    models: dict[str, Checkpoint], out_dtype: str | None, names: list[tuple[str, bool]]
) -> list[MoeTensor]:
    """Copies of the base's tensors (name, optional): a missing optional one is left out."""
    base = models["base"]
    result = []
    for name, optional in names:
        info = base.tensors.get(name)
        if info is None:
            if optional:
                continue
            raise UserError(f"the base has no tensor {name}", where=str(base.path))
        result.append(
            MoeTensor(
                name,
                out_dtype or info.dtype,
                tuple(info.shape),
                pieces=[Piece("base", name)],
                layer=_layer_of(name),
            )
        )
    return result


def _layer_of(name: str) -> int | None:
    from mergetui.checkpoints.layers import layer_index

    return layer_index(name)


def _layer_names(layer: int, attention_bias: bool = False) -> list[str]:
    prefix = f"model.layers.{layer}"
    names = [f"{prefix}.input_layernorm.weight"]
    names += [f"{prefix}.self_attn.{p}.weight" for p in _ATTENTION]
    if attention_bias:
        names += [f"{prefix}.self_attn.{p}.bias" for p in _ATTENTION[:3]]
    return names + [f"{prefix}.post_attention_layernorm.weight"]


def _mixtral_tensors(
    recipe: MoeRecipe, models: dict[str, Checkpoint], out_dtype: str | None
) -> list[MoeTensor]:
    """mergekit-moe's MixtralMoE.write_model: the base's non-MLP tensors, each layer's stacked
    experts, then the routers."""
    base = models["base"]
    layers = len(base.layers)
    names = [("model.embed_tokens.weight", False)]
    for layer in range(layers):
        names += [(n, False) for n in _layer_names(layer)]
    names += [("model.norm.weight", False), ("lm_head.weight", True)]
    tensors = _base_tensors(models, out_dtype, names)
    count = len(recipe.experts)
    for layer in range(layers):
        gate = base.tensors[_mlp_name(layer, "gate_proj")]
        inter, hidden = gate.shape
        dtype = out_dtype or gate.dtype
        size = DTYPE_SIZES[dtype]
        gate_up = MoeTensor(
            f"model.layers.{layer}.mlp.experts.gate_up_proj",
            dtype,
            (count, 2 * inter, hidden),
            layer=layer,
        )
        down = MoeTensor(
            f"model.layers.{layer}.mlp.experts.down_proj",
            dtype,
            (count, hidden, inter),
            layer=layer,
        )
        for e, expert in enumerate(recipe.experts):
            key = f"experts.{e}"
            block = 2 * inter * hidden * size
            gate_up.pieces.append(Piece(key, _mlp_name(layer, "gate_proj"), e * block, expert))
            gate_up.pieces.append(
                Piece(key, _mlp_name(layer, "up_proj"), e * block + block // 2, expert)
            )
            down.pieces.append(
                Piece(key, _mlp_name(layer, "down_proj"), e * hidden * inter * size, expert, True)
            )
        tensors += [gate_up, down]
    router = _router_dtype(recipe, out_dtype)
    hidden = base.tensors[_mlp_name(0, "gate_proj")].shape[1]
    for layer in range(layers):
        tensors.append(
            MoeTensor(
                f"model.layers.{layer}.mlp.gate.weight",
                router,
                (count, hidden),
                "router",
                layer=layer,
            )
        )
    return tensors


def _qwen_tensors(
    recipe: MoeRecipe, models: dict[str, Checkpoint], out_dtype: str | None
) -> list[MoeTensor]:
    """mergekit-moe's QwenMoE.write_model: per layer the base's attention (zero biases where the
    base has none), each expert's and the shared expert's MLPs; then the routers."""
    base = models["base"]
    config = base.config
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = hidden // heads  # mergekit-moe's formula for the zero biases
    tensors = _base_tensors(models, out_dtype, [("model.embed_tokens.weight", False)])
    layers = len(base.layers)
    for layer in range(layers):
        for name in _layer_names(layer, attention_bias=True):
            if name.endswith(".bias") and name not in base.tensors:
                rows = (kv_heads if (".k_proj" in name or ".v_proj" in name) else heads) * head_dim
                tensors.append(MoeTensor(name, out_dtype or "F32", (rows,), "zeros", layer=layer))
            else:
                tensors += _base_tensors(models, out_dtype, [(name, False)])
        for proj in _MLP:
            source = _mlp_name(layer, proj)
            info = base.tensors[source]
            experts = [(f"experts.{e}", f"experts.{e}", x) for e, x in enumerate(recipe.experts)]
            experts.append(("shared_experts.0", "shared_expert", recipe.shared_experts[0]))
            for key, infix, expert in experts:
                dtype = out_dtype or models[key].tensors[source].dtype
                name = source.replace(".mlp.", f".mlp.{infix}.")
                piece = Piece(key, source, 0, expert, proj == "down_proj")
                tensors.append(
                    MoeTensor(name, dtype, tuple(info.shape), pieces=[piece], layer=layer)
                )
    tensors += _base_tensors(
        models, out_dtype, [("model.norm.weight", False), ("lm_head.weight", True)]
    )
    router = _router_dtype(recipe, out_dtype)
    count = len(recipe.experts)
    for layer in range(layers):
        prefix = f"model.layers.{layer}.mlp"
        tensors.append(
            MoeTensor(f"{prefix}.gate.weight", router, (count, hidden), "router", layer=layer)
        )
        tensors.append(
            MoeTensor(
                f"{prefix}.shared_expert_gate.weight",
                router,
                (1, hidden),
                "shared_router",
                layer=layer,
            )
        )
    return tensors


def needs_prompts(recipe: MoeRecipe) -> bool:
    """Whether the gates come from prompts (the tokenizer and maybe the base model load)."""
    return recipe.gate_mode not in RANDOM_GATE_MODES

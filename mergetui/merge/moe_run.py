"""Runs an MoE plan: gates first (they may need the base model), then every output tensor piece by
piece (a Mixtral layer's stacked experts are written expert by expert at their offsets): a piece
kept as it is in its file goes file to file in the kernel, any other through memory, one input
tensor at a time; then config, tokenizer, recipe copy and card, into a temporary folder renamed
into place. The same events, cancel and folder rules as `merge.runner.run_merge`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.errors import CancelledError, UserError
from mergetui.merge.events import (
    Cancelled,
    EventCallback,
    Failed,
    Finished,
    MergeResult,
    Notice,
    PlanReady,
    TensorDone,
)
from mergetui.merge.output import CARD_FILE, GENERATION_CONFIG_FILE, RECIPE_FILE
from mergetui.merge.target import TempFolder, check_output, remove_stale_temps

if TYPE_CHECKING:
    import torch

    from mergetui.merge.moe_plan import MoePlan, MoeTensor, Piece
    from mergetui.merge.reader import TensorReader
    from mergetui.merge.writer import ShardSetWriter
    from mergetui.recipe.moe import MoeRecipe


def moe_guard(plan: MoePlan) -> dict[str, Any]:
    """What `--force` must never replace: the inputs and the recipe's folder."""
    return {"inputs": [m.path for m in plan.models.values()], "recipe_dir": plan.recipe_dir}


def run_moe(
    plan: MoePlan,
    *,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> MergeResult:
    """Assemble the MoE; return once its folder is complete and in place. Raises UserError or
    CancelledError after emitting Failed or Cancelled, leaving no folder behind."""
    emit = on_event or (lambda event: None)
    started = time.perf_counter()
    done = [0]
    try:
        device = _assemble_into_place(plan, emit, cancel, force, done)
    except CancelledError:
        emit(Cancelled(done[0]))
        raise
    except UserError as exc:
        emit(Failed(str(exc)))
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            emit(Cancelled(done[0]))
        else:
            emit(Failed(f"internal error: {exc!r}"))
        raise
    seconds = time.perf_counter() - started
    emit(Finished(plan.output_dir, seconds, len(plan.tensors), plan.total_bytes))
    return MergeResult(
        output_dir=plan.output_dir,
        seconds=seconds,
        tensor_count=len(plan.tensors),
        total_bytes=plan.total_bytes,
        shard_files=tuple(plan.layout.filenames),
        device=device,
        notices=tuple(plan.notices),
    )


def _assemble_into_place(
    plan: MoePlan, emit: EventCallback, cancel: threading.Event | None, force: bool, done: list[int]
) -> str:
    from mergetui.device import resolve_device

    target = plan.output_dir
    guard = moe_guard(plan)
    check_output(target, force, **guard)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temps(target):
        emit(Notice(f"removed {stale.name}, left behind by an interrupted merge"))
    device = str(resolve_device(plan.device))
    temp = TempFolder(target)
    try:
        emit(
            PlanReady(
                method=f"moe ({plan.architecture})",
                models=tuple(m.path.name for m in plan.models.values()),
                tensor_count=len(plan.tensors),
                layer_count=plan.layer_count,
                total_bytes=plan.total_bytes,
                shard_count=len(plan.layout.shards),
                output_dir=target,
                device=device,
                estimated_peak_bytes=plan.estimated_peak_bytes,
            )
        )
        for message in plan.notices:
            emit(Notice(message))
        _assemble(plan, temp.path, emit, cancel, done)
        if cancel is not None and cancel.is_set():
            raise CancelledError("merge cancelled")
        temp.release_into(target, force, **guard)
    except BaseException:
        temp.remove()
        raise
    return device


def _assemble(
    plan: MoePlan,
    folder: Path,
    emit: EventCallback,
    cancel: threading.Event | None,
    done: list[int],
) -> None:
    """Gates, tensors, then the files beside them, all into `folder`."""
    import torch

    from mergetui.merge.moe_gates import gate_vectors
    from mergetui.merge.moe_plan import needs_prompts
    from mergetui.merge.moe_tokenizer import load_gate_tokenizer
    from mergetui.merge.reader import TensorReader
    from mergetui.merge.writer import ShardSetWriter

    tokenizer = None
    if needs_prompts(plan.recipe) or plan.models["base"].has_tokenizer:
        tokenizer = load_gate_tokenizer(plan)
    with TensorReader() as reader:
        gates = gate_vectors(plan, tokenizer, reader, cancel)
        message = degenerate_gates(gates)
        if message:
            emit(Notice(message))
        writer = ShardSetWriter(folder, plan.layout)
        generator = torch.Generator().manual_seed(plan.seed)
        written = 0
        try:
            for index, tensor in enumerate(plan.tensors):
                if cancel is not None and cancel.is_set():
                    raise CancelledError("merge cancelled")
                _write_tensor(plan, tensor, reader, writer, gates, generator)
                written += tensor.nbytes
                done[0] += 1
                emit(
                    TensorDone(
                        index,
                        len(plan.tensors),
                        tensor.name,
                        written,
                        plan.total_bytes,
                        tensor.layer,
                    )
                )
            writer.finish()
        finally:
            writer.close()
    write_moe_extras(plan, folder, tokenizer)


def degenerate_gates(gates: torch.Tensor, threshold: float = 5.0) -> str | None:
    """mergekit-moe's warning: the layers whose router rows are nearly dependent (condition
    number above `threshold`), where some experts will be picked rarely; None when there are none."""
    import torch

    layers = [
        i for i in range(gates.shape[0]) if torch.linalg.cond(gates[i].float()).item() > threshold
    ]
    if not layers:
        return None
    if len(layers) == gates.shape[0]:
        shown = "every layer"
    else:
        shown = ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))
    return (
        f"the gates of {shown} are nearly alike: some experts will rarely be picked "
        "(make each expert's prompts more distinct)"
    )


def _write_tensor(
    plan: MoePlan,
    tensor: MoeTensor,
    reader: TensorReader,
    writer: ShardSetWriter,
    gates: torch.Tensor,
    generator: torch.Generator,
) -> None:
    """One output tensor, piece by piece, each cast to the output dtype as mergekit-moe casts."""
    import torch

    from mergetui.dtypes import torch_dtype
    from mergetui.merge.moe_plan import plain_copy

    dtype = torch_dtype(tensor.dtype)
    count = len(plan.recipe.experts)
    if tensor.kind == "zeros":
        writer.write(tensor.name, torch.zeros(tensor.shape, dtype=dtype))
    elif tensor.kind in ("router", "shared_router"):
        rows = (
            gates[tensor.layer, :count] if tensor.kind == "router" else gates[tensor.layer, count:]
        )
        writer.write(tensor.name, rows.to(dtype=dtype).contiguous())
    else:
        for piece in tensor.pieces:
            info = plan.models[piece.model].tensors[piece.tensor]
            if plain_copy(piece, info, tensor.dtype):
                source = reader.descriptor(info.file)
                where = str(info.file)
                writer.copy_range(
                    tensor.name, source, info.offset, info.nbytes, piece.start, where=where
                )
                continue
            value = _read_piece(plan, piece, reader, generator)
            writer.write(tensor.name, value.to(dtype=dtype).contiguous(), piece.start)


def _read_piece(
    plan: MoePlan, piece: Piece, reader: TensorReader, generator: torch.Generator
) -> torch.Tensor:
    """An input tensor with its expert's noise and residual scale (mergekit-moe's
    `noise_and_scale`, in the input's dtype)."""
    import torch

    info = plan.models[piece.model].tensors[piece.tensor]
    value = reader.read(info.file, info.offset, info.nbytes, info.dtype, info.shape, info.name)
    expert = piece.expert
    if expert is not None and expert.noise_scale is not None:
        noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
        value = value + noise * expert.noise_scale
    if expert is not None and piece.residual and expert.residual_scale is not None:
        value = value * expert.residual_scale
    return value


def write_moe_extras(plan: MoePlan, folder: Path, tokenizer: Any) -> None:
    """config.json as mergekit-moe writes it, the base's generation config, the tokenizer (with
    mergekit-moe's padding), the recipe copy and a model card."""
    import shutil

    from mergetui.merge.moe_config import write_output_config
    from mergetui.recipe.moe import dumps_moe

    write_output_config(plan, folder)
    generation = plan.models["base"].path / GENERATION_CONFIG_FILE
    if generation.is_file():
        shutil.copyfile(generation, folder / GENERATION_CONFIG_FILE)
    if tokenizer is not None:
        tokenizer.save(folder)
    as_run = dumps_moe(moe_recipe_as_run(plan), "toml")
    (folder / RECIPE_FILE).write_text(as_run, encoding="utf-8")
    (folder / CARD_FILE).write_text(_card(plan, as_run), encoding="utf-8")


def moe_recipe_as_run(plan: MoePlan) -> MoeRecipe:
    """The recipe copy the output keeps: local models as absolute folders (the copy lives
    elsewhere than the recipe), Hub ids as written, the seed used, no output."""
    import copy

    from mergetui.recipe.paths import locate_model
    from mergetui.recipe.yaml_import import split_reference

    recipe = copy.deepcopy(plan.recipe)

    def as_run(source: str) -> str:
        found = locate_model(*split_reference(source), plan.recipe_dir)
        return str(found[0]) if found is not None and found[1] else source

    recipe.base = as_run(recipe.base)
    for _, expert in recipe.all_experts():
        expert.source = as_run(expert.source)
    recipe.output, recipe.seed, recipe.source_path = None, plan.seed, None
    return recipe


def _card(plan: MoePlan, recipe_toml: str) -> str:
    """A model card: the Hub parents in its front matter (local folders are not parents a Hub
    page can link), what was assembled, and the recipe."""
    recipe = moe_recipe_as_run(plan)
    sources = [recipe.base] + [e.source for _, e in recipe.all_experts()]
    parents = [s for s in dict.fromkeys(sources) if not Path(s).is_absolute()]
    lines = ["---"] + (["base_model:"] + [f"- {s}" for s in parents] if parents else [])
    lines += ["tags:", "- merge", "- moe", "- mergetui", "---", ""]
    lines += [
        f"# {plan.output_dir.name}",
        "",
        f"A {plan.architecture} mixture of experts assembled by mergetui (mergekit-moe's method):",
        f"the attention and embeddings of `{plan.recipe.base}`, the MLPs of "
        f"{len(plan.recipe.experts)} experts, {plan.recipe.experts_per_token} per token, gates "
        f"from `{plan.recipe.gate_mode}`.",
        "",
        "```toml",
        recipe_toml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)

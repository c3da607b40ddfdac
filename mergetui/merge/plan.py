"""The plan: a recipe and its checkpoints turned into the exact list of output tensors.

Everything is decided here, from headers and configs alone, before a single tensor is read: each
output tensor's name, shape and dtype, where each of its inputs lives on disk, the parameters the
method gets for it (resolved exactly as mergekit resolves them), which shard it goes to and where,
the output config, and how much memory the run needs. Whatever can be wrong with a merge is found
here and reported as a `UserError`, so a merge never fails half-way on the user's input: first
the validator's checks of the recipe alone (`validate.check_recipe`: its first error the plan
cannot get past, with the validator's recipe path and line), then, with the models opened (`plan_models`), their
architectures, layer ranges (`walk.layer_problems`, as the validator) and vocabularies
(`plan_tokenizer`), and each output tensor (`plan_tensors`, on the walk the validator follows).

No torch import here: a dry run and the app's recipe screen stay fast.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.compat import check_architectures
from mergetui.device import check_device_name
from mergetui.dtypes import dtype_name
from mergetui.errors import UserError
from mergetui.formatting import human_bytes
from mergetui.merge.output import build_output_config
from mergetui.merge.plan_models import (
    PlannedModel,
    check_output_apart_from_inputs,
    choose_output_dir,
    open_model,
)
from mergetui.merge.plan_tensors import PlannedTensor, plan_tensors, recipe_dtype
from mergetui.merge.plan_tokenizer import chat_template, check_vocabularies, tokenizer_donor
from mergetui.merge.remote_code import left_out_notice, strip_code_keys
from mergetui.merge.writer import DEFAULT_SHARD_SIZE, OutputLayout, layout_output
from mergetui.recipe.paths import folder_of
from mergetui.recipe.problems import Problems
from mergetui.recipe.validate import check_recipe
from mergetui.recipe.walk import layer_problems, layer_sources, used_models

if TYPE_CHECKING:
    from mergetui.recipe.methods import MethodSpec
    from mergetui.recipe.model import Recipe, Slice


# Rough resident size of Python + torch before any tensor: part of the estimate.
PROCESS_BASELINE_BYTES = 300 * 1000**2
# Pieces whose working sets fit half of max(largest, this) may run two at a time (runner).
SHARED_WORKING_BYTES = 128 * 1024**2
# Elements per piece when an element-wise method streams a big tensor (4 MB in float32). Smaller
# pieces keep the reader, compute and writer threads' buffers (and the allocator's slack) small;
# per-piece overhead is still far below the arithmetic at this size.
PIECE_ELEMENTS = 1 << 20
# Whole-tensor input sets of more stored bytes than this are, for a method that reads chunks, left
# in the files and read slice by slice (see runner and chunked.py) instead of held.
CHUNKS_FROM_FILE_BYTES = 32 * 1024 * 1024


@dataclass
class Plan:
    """A merge, fully decided: the runner only executes it."""

    recipe: Recipe
    recipe_dir: Path | None
    method: str
    models: dict[str, PlannedModel]
    base: str | None
    tensors: list[PlannedTensor]
    layout: OutputLayout
    output_dir: Path
    output_config: dict[str, Any]
    output_dtype: str | None
    layer_count: int | None
    donor: str
    tokenizer_donor: str
    chat_template: str | None
    device: str
    seed: int | None
    shard_size: int
    estimated_peak_bytes: int
    notices: list[str] = field(default_factory=list)
    # Copy the donors' own Python code (auto_map, .py files) into the output: --trust-remote-code.
    trust_remote_code: bool = False

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def total_bytes(self) -> int:
        return self.layout.total_bytes

    @property
    def shard_count(self) -> int:
        return len(self.layout.shards)

    def summary(self) -> dict[str, Any]:
        """The facts a person checks before running (dry run, PlanReady, the app's Run screen)."""
        return {
            "method": self.method,
            "models": list(self.models),
            "base": self.base,
            "output": str(self.output_dir),
            "layers": self.layer_count,
            "tensors": self.tensor_count,
            "output_bytes": self.total_bytes,
            "shards": self.layout.filenames,
            "dtype": self.output_dtype,
            "device": self.device,
            "seed": self.seed,
            "estimated_peak_bytes": self.estimated_peak_bytes,
        }

    def summary_lines(self) -> list[str]:
        models = ", ".join(
            f"{name}{' (base)' if name == self.base else ''}"
            + (f" + LoRA {model.adapter.path.name}" if model.adapter is not None else "")
            for name, model in self.models.items()
        )
        shards = self.layout.filenames
        shard_text = shards[0] if len(shards) == 1 else f"{len(shards)} shards ({shards[0]} ...)"
        lines = [
            f"method: {self.method}",
            f"models: {models}",
            f"output: {self.output_dir}",
            f"layers: {self.layer_count if self.layer_count is not None else 'n/a'}",
            f"tensors: {self.tensor_count}",
            f"output size: {human_bytes(self.total_bytes)} ({self.total_bytes:,} bytes)",
            f"files: {shard_text}",
            f"dtype: {self.output_dtype or 'as the inputs'}",
            f"device: {self.device}",
            f"estimated peak memory: {human_bytes(self.estimated_peak_bytes)}",
        ]
        if self.seed is not None:
            lines.append(f"seed: {self.seed}")
        return lines


# ----------------------------------------------------------------------------------------------


def make_plan(
    recipe: Recipe,
    *,
    recipe_dir: str | Path | None = None,
    out: str | Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str = "auto",
    seed: int | None = None,
    allow_bin: bool = False,
    trust_remote_code: bool = False,
    allow_mixed_architectures: bool = False,
) -> Plan:
    """Turn a recipe into a Plan, reading only configs and safetensors headers.

    Paths in the recipe follow `mergetui.recipe.paths`: relative to `recipe_dir` (default: the
    folder of the recipe's file, else the working folder). Model sources are looked up as a folder
    there, then relative to the working folder (what mergekit does), then in the Hugging Face cache.
    `out` (a command-line path, relative to the working folder) overrides the recipe's output.
    Raises UserError for anything wrong with the recipe or the checkpoints.
    Models of different architectures are refused unless `allow_mixed_architectures`. Without
    `trust_remote_code` the output config leaves out the donor's `auto_map` (see `remote_code`).
    """
    problems, spec = check_recipe(recipe)
    problems.raise_blocking()
    assert spec is not None
    device = check_device_name(device)
    recipe_dir = folder_of(recipe, recipe_dir)
    output_dir = choose_output_dir(recipe, recipe_dir, out)
    models, notices = _open_models(recipe, recipe_dir, output_dir, allow_bin)
    slices = recipe.effective_slices({name: m.num_layers for name, m in models.items()})
    if not slices:
        raise UserError("the recipe has no models to merge", where="models")
    donor = recipe.base if recipe.base in models else slices[0].sources[0].model
    notices += check_architectures(models, donor, allow=allow_mixed_architectures)
    _check_layers(recipe, models)
    check_vocabularies(recipe, models)
    tensors = plan_tensors(recipe, spec, models, slices)
    if not tensors:
        raise UserError("the merge would produce no tensors", where="models")
    output_dtype = recipe_dtype(recipe.out_dtype or recipe.dtype, "out_dtype")
    output_dtype = dtype_name(output_dtype) if output_dtype else None
    output_config = _output_config(models, donor, output_dtype, slices)
    tokenizer = tokenizer_donor(recipe, models, donor)
    if not trust_remote_code:
        notices += _left_out(output_config, models, donor, tokenizer)
    seed = _seed(recipe, spec, seed, notices)
    return Plan(
        recipe=recipe,
        recipe_dir=recipe_dir,
        method=recipe.method,
        models=models,
        base=recipe.base,
        tensors=tensors,
        layout=layout_output([(t.name, t.dtype, t.shape) for t in tensors], shard_size),
        output_dir=output_dir,
        output_config=output_config,
        output_dtype=output_dtype,
        layer_count=len(layer_sources(slices)) or None,
        donor=donor,
        tokenizer_donor=tokenizer,
        chat_template=chat_template(recipe, models),
        device=device,
        seed=seed,
        shard_size=shard_size,
        estimated_peak_bytes=estimate_peak_bytes(tensors, method=recipe.method, device=device),
        notices=notices,
        trust_remote_code=trust_remote_code,
    )


def _open_models(
    recipe: Recipe, recipe_dir: Path, output_dir: Path, allow_bin: bool
) -> tuple[dict[str, PlannedModel], list[str]]:
    """Every model the merge reads, opened, with the notices their checkpoints raised; none of
    them may overlap the output folder."""
    models = {name: open_model(recipe, name, recipe_dir, allow_bin) for name in used_models(recipe)}
    notices = [
        f"{m.name}: {w}"
        for m in models.values()
        for w in (*m.checkpoint.warnings, *m.adapter_warnings)
    ]
    check_output_apart_from_inputs(output_dir, models)
    return models, notices


def _check_layers(recipe: Recipe, models: Mapping[str, PlannedModel]) -> None:
    """Layer ranges against the models' depths, as the validator checks them."""
    problems = Problems(recipe)
    for where, message, fix in layer_problems(recipe, {n: m.num_layers for n, m in models.items()}):
        problems.error(where, message, fix, blocks_plan=True)
    problems.raise_blocking()


def _output_config(
    models: Mapping[str, PlannedModel], donor: str, dtype: str | None, slices: Sequence[Slice]
) -> dict[str, Any]:
    """The donor's config for the merged model: its dtype, and per output layer the settings
    of the layer it comes from (see `output.build_output_config`)."""
    sources = [(models[model].config, layer) for model, layer in layer_sources(slices)]
    return build_output_config(
        models[donor].config, dtype_name=dtype, layer_sources=sources or None
    )


def _left_out(
    config: dict[str, Any], models: Mapping[str, PlannedModel], donor: str, tokenizer: str
) -> list[str]:
    """Without --trust-remote-code: the config loses its auto_map; say so when it had code."""
    folders = {name: models[name].path for name in (donor, tokenizer)}
    notice = left_out_notice(strip_code_keys(config), folders, tokenizer)
    return [notice] if notice else []


def _seed(recipe: Recipe, spec: MethodSpec, seed: int | None, notices: list[str]) -> int | None:
    """The run's seed: the given one, else the recipe's; a random method without one draws it
    (and says so, since the recipe copy stores it)."""
    if seed is None:
        seed = recipe.seed
    if seed is None and spec.random:
        seed = random.SystemRandom().randrange(2**31)
        notices.append(f"{recipe.method} is random: using seed {seed} (stored in the recipe copy)")
    return seed


def estimate_peak_bytes(
    tensors: Sequence[PlannedTensor], *, method: str, device: str = "auto"
) -> int:
    """Peak resident memory of a run: the process baseline plus the most the engine can hold.

    The engine's own limits decide it (runner's `_WorkModel.bound`): the reader's byte budget
    (every worker's inputs and a prefetch margin), one working set per compute worker (one per
    core up to MAX_WORKERS on the CPU: each worker's allocator keeps its largest), the buffer
    pool, the results and chunks on their way to the writer. So it is an upper bound: measured
    peaks stay below it (docs/engine.md, "Memory bound")."""
    from mergetui.merge.runner import working_bound

    return PROCESS_BASELINE_BYTES + working_bound(tensors, method, device)


def chunk_working_bytes(tensor: PlannedTensor, numel: int, cache_elements: int = 0) -> int:
    """What a chunk-reading method holds for `numel` elements of a tensor besides its inputs and
    result: float32 chunk temporaries, and up to `cache_elements` a float32 copy per non-base
    input (the task-vector cache). The runner's gate and the peak estimate both use it."""
    from mergetui.merge.methods._common import CHUNK_ELEMENTS

    temporaries = 4 * min(numel, CHUNK_ELEMENTS) * (len(tensor.inputs) + 4)
    cached = 4 * numel * (len(tensor.inputs) - 1) if numel <= cache_elements else 0
    return temporaries + cached

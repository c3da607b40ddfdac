"""The plan: a recipe and its checkpoints turned into the exact list of output tensors.

Everything is decided here, from headers and configs alone, before a single tensor is read: each
output tensor's name, shape and dtype, where each of its inputs lives on disk, the parameters the
method gets for it (resolved exactly as mergekit resolves them), which shard it goes to and where,
the output config, and how much memory the run needs. Whatever can be wrong with a merge (a missing
tensor, shapes or vocabularies that differ, a layer range past the end of a model) is found here and
reported as a `UserError` naming the model and tensor, so a merge never fails half-way on the
user's input.

The tensor set and order follow mergekit's planner: the pre-layer weights (embeddings) from the
first slice's models at t = 0, then each output slice's layers, renumbered consecutively (so layer
stacks repeat or skip layers freely), then the post-layer weights (final norm, head) from the last
slice's models at t = 0. A head that is missing (tied embeddings) stays missing; a model that lacks
the head while another has it contributes its input embeddings instead (mergekit's `tied_names`).

No torch import here: a dry run and the app's recipe screen stay fast.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.compat import check_architectures
from mergetui.checkpoints.layers import block_kind, is_skipped, layer_index, with_layer_index
from mergetui.checkpoints.locate import looks_like_hub_id
from mergetui.checkpoints.safetensors_io import TensorInfo
from mergetui.dtypes import FLOAT_CODES, compute_code, dtype_name
from mergetui.errors import UserError
from mergetui.formatting import human_bytes
from mergetui.merge.device import check_device_name
from mergetui.merge.output import build_output_config, config_vocab_size
from mergetui.merge.remote_code import left_out_notice, strip_code_keys
from mergetui.merge.writer import DEFAULT_SHARD_SIZE, OutputLayout, layout_output
from mergetui.recipe.paths import folder_of, local_model_path, output_folder

if TYPE_CHECKING:
    from mergetui.checkpoints.inspect import Checkpoint
    from mergetui.recipe.methods import MethodSpec
    from mergetui.recipe.model import Recipe, Slice

# Input embeddings a tied head falls back to (mergekit's `tied_names`), most specific first.
_EMBEDDING_HINTS = ("embed_tokens", "wte", "tok_embeddings", "word_embeddings", "embed_in")

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


@dataclass(frozen=True)
class PlannedInput:
    """One input of one output tensor: which model, which tensor there, and where its bytes are."""

    model: str
    tensor: str
    file: Path
    offset: int  # absolute; -1 for a pytorch .bin tensor
    nbytes: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor and everything needed to compute it."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # output safetensors dtype
    inputs: tuple[PlannedInput, ...]
    # Index into `inputs` of the base; None when there is none or the method ignores it.
    base_index: int | None
    shared: Mapping[str, Any]
    per_model: tuple[Mapping[str, Any], ...]  # aligned with inputs
    section: str  # "pre", "layer" or "post"
    layer: int | None = None  # output layer index
    copy_only: bool = False  # a non-floating buffer: copied (inputs must agree), never merged
    # Each output element depends only on the same element of the inputs, so the engine may
    # stream the tensor in pieces (bounded memory whatever the tensor's size).
    elementwise: bool = False

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        from mergetui.merge.writer import tensor_nbytes

        return tensor_nbytes(self.dtype, self.shape)


@dataclass(frozen=True)
class PlannedModel:
    """A model the merge reads: where it is and what it holds."""

    name: str
    source: str
    revision: str | None
    path: Path
    checkpoint: Checkpoint = field(repr=False)
    hub_id: str | None  # the Hub id, when the source is one
    local_source: Path | None  # the resolved folder when the source is a local path

    @property
    def num_layers(self) -> int:
        return self.checkpoint.num_layers

    @property
    def config(self) -> dict[str, Any]:
        return self.checkpoint.config


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
            f"{name}{' (base)' if name == self.base else ''}" for name in self.models
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
    from mergetui.recipe.methods import METHODS

    spec = METHODS.get(recipe.method)
    if spec is None:
        raise UserError(
            f"unknown merge method {recipe.method!r}",
            where="merge.method",
            fix="use one of " + ", ".join(METHODS),
        )
    device = check_device_name(device)
    recipe_dir = folder_of(recipe, recipe_dir)
    output_dir = _output_dir(recipe, recipe_dir, out)
    notices: list[str] = []

    used = _used_models(recipe)
    models = {name: _open_model(recipe, name, recipe_dir, allow_bin) for name in used}
    for model in models.values():
        notices.extend(f"{model.name}: {w}" for w in model.checkpoint.warnings)
    _check_output_apart_from_inputs(output_dir, models)

    slices = recipe.effective_slices({name: m.num_layers for name, m in models.items()})
    if not slices:
        raise UserError("the recipe has no models to merge", where="models")
    donor = recipe.base if recipe.base in models else slices[0].sources[0].model
    notices += check_architectures(models, donor, allow=allow_mixed_architectures)
    _check_slices(recipe, slices, models)
    _check_vocabularies(recipe, models, [s.model for s in slices[0].sources])

    builder = _TensorBuilder(recipe, spec, models, slices)
    tensors = builder.build()
    if not tensors:
        raise UserError("the merge would produce no tensors", where="models")

    layout = layout_output([(t.name, t.dtype, t.shape) for t in tensors], shard_size)

    output_dtype = _recipe_dtype(recipe.out_dtype or recipe.dtype, "out_dtype")
    layer_sources = [
        (models[model].config, source_layer) for model, source_layer in builder.layer_sources
    ]
    output_config = build_output_config(
        models[donor].config,
        dtype_name=dtype_name(output_dtype) if output_dtype else None,
        layer_sources=layer_sources or None,
    )

    tokenizer_donor = _tokenizer_donor(recipe, models, donor)
    chat_template = _chat_template(recipe, models)
    if not trust_remote_code:
        left_out = left_out_notice(
            strip_code_keys(output_config),
            {name: models[name].path for name in (donor, tokenizer_donor)},
            tokenizer_donor,
        )
        notices += [left_out] if left_out else []

    if seed is None:
        seed = recipe.seed
    if seed is None and spec.random:
        seed = random.SystemRandom().randrange(2**31)
        notices.append(f"{recipe.method} is random: using seed {seed} (stored in the recipe copy)")

    return Plan(
        recipe=recipe,
        recipe_dir=recipe_dir,
        method=recipe.method,
        models=models,
        base=recipe.base,
        tensors=tensors,
        layout=layout,
        output_dir=output_dir,
        output_config=output_config,
        output_dtype=dtype_name(output_dtype) if output_dtype else None,
        layer_count=len(builder.layer_sources) or None,
        donor=donor,
        tokenizer_donor=tokenizer_donor,
        chat_template=chat_template,
        device=device,
        seed=seed,
        shard_size=shard_size,
        estimated_peak_bytes=estimate_peak_bytes(tensors, method=recipe.method, device=device),
        notices=notices,
        trust_remote_code=trust_remote_code,
    )


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


# ----------------------------------------------------------------------------------------------
# Models


def _used_models(recipe: Recipe) -> list[str]:
    """Models the merge reads, in recipe order; unknown names are errors."""
    known = recipe.models
    if recipe.slices is None:
        names = list(known)
        if not names:
            raise UserError("the recipe lists no models", where="models")
    else:
        names = []
        for number, slice_ in enumerate(recipe.slices, start=1):
            if not slice_.sources:
                raise UserError(f"slice {number} has no sources", where=f"slices[{number}]")
            for source in slice_.sources:
                if source.model not in known:
                    raise UserError(
                        f"slice {number} uses model {source.model!r}, which the recipe does not define",
                        where=f"slices[{number}]",
                        fix=f"add [models.{source.model}] with its source, or use one of "
                        f"{', '.join(known) or '(none)'}",
                    )
                if source.model not in names:
                    names.append(source.model)
            if slice_.base is not None and slice_.base not in known:
                raise UserError(
                    f"slice {number} names base {slice_.base!r}, which the recipe does not define",
                    where=f"slices[{number}].base",
                )
    if recipe.base is not None:
        if recipe.base not in known:
            raise UserError(
                f"the base {recipe.base!r} is not one of the recipe's models",
                where="merge.base",
                fix=f"use one of {', '.join(known)}",
            )
        if recipe.base not in names and recipe.slices is not None:
            names.append(recipe.base)
    for slice_ in recipe.slices or []:
        if slice_.base is not None and slice_.base not in names:
            names.append(slice_.base)
    return names


def resolve_model_path(
    source: str, revision: str | None, recipe_dir: Path | None
) -> tuple[Path, bool] | None:
    """(folder, is_local_path) for a model source, or None when it is nowhere on this machine."""
    from mergetui.checkpoints.locate import find_local

    candidate = local_model_path(source, recipe_dir if recipe_dir is not None else Path.cwd())
    if candidate.is_dir():
        return candidate.resolve(), True
    found = find_local(source, revision)
    if found is not None:
        return Path(found), False
    return None


def _open_model(
    recipe: Recipe, name: str, recipe_dir: Path | None, allow_bin: bool
) -> PlannedModel:
    from mergetui.checkpoints.inspect import open_checkpoint

    entry = recipe.models[name]
    resolved = resolve_model_path(entry.source, entry.revision, recipe_dir)
    if resolved is None:
        hub = looks_like_hub_id(entry.source)
        raise UserError(
            f"model {name!r} ({entry.source}) is not on this machine"
            + (" (not a folder, and not in the Hugging Face cache)" if hub else ""),
            where=f"models.{name}.source",
            fix=(
                f"download it first (huggingface-cli download {entry.source}, or the app's "
                "Checkpoints screen)"
                if hub
                else "check the path; relative paths are read from the recipe's folder (then, "
                "as mergekit does, from the current directory)"
            ),
        )
    path, is_local = resolved
    checkpoint = open_checkpoint(path, allow_bin=allow_bin)
    return PlannedModel(
        name=name,
        source=entry.source,
        revision=entry.revision,
        path=path,
        checkpoint=checkpoint,
        hub_id=None if is_local else entry.source,
        local_source=path if is_local else None,
    )


def _check_output_apart_from_inputs(output_dir: Path, models: Mapping[str, PlannedModel]) -> None:
    """Never write into, or replace, a folder the merge reads from."""
    target = output_dir.resolve()
    for model in models.values():
        source = model.path.resolve()
        if target == source or source in target.parents or target in source.parents:
            raise UserError(
                f"the output folder overlaps the input model {model.name!r} ({source})",
                where=str(output_dir),
                fix="choose an output folder outside every input model",
            )


def _output_dir(recipe: Recipe, recipe_dir: Path, out: str | Path | None) -> Path:
    chosen = output_folder(recipe, recipe_dir, out)
    if chosen is None:
        raise UserError(
            "no output folder: the recipe has no `output` and none was given",
            where="merge.output",
            fix="pass --out DIR, or set output in the recipe's [merge] table",
        )
    return chosen


# ----------------------------------------------------------------------------------------------
# Checks


def _check_slices(
    recipe: Recipe, slices: Sequence[Slice], models: Mapping[str, PlannedModel]
) -> None:
    for number, slice_ in enumerate(slices, start=1):
        where = f"slices[{number}]" if recipe.slices is not None else "models"
        lengths = set()
        for source in slice_.sources:
            start, end = source.layer_range
            total = models[source.model].num_layers
            if start < 0 or end > total or start >= end and total > 0:
                raise UserError(
                    f"layer range [{start}, {end}) of model {source.model!r} is outside its "
                    f"{total} layers (0 to {total - 1})",
                    where=where,
                    fix=f"use a range within [0, {total}]",
                )
            lengths.add(end - start)
        if len(lengths) > 1:
            detail = ", ".join(
                f"{s.model} [{s.layer_range[0]}, {s.layer_range[1]})" for s in slice_.sources
            )
            raise UserError(
                f"the sources of slice {number} span different numbers of layers: {detail}",
                where=where,
                fix="give every source of a slice a range of the same length",
            )


def _check_vocabularies(
    recipe: Recipe, models: Mapping[str, PlannedModel], first_slice_models: Sequence[str]
) -> None:
    """Vocabulary sizes must agree; mergekit's vocabulary permutation is not implemented."""
    sizes = {}
    for name, model in models.items():
        size = config_vocab_size(model.config)
        if size is None:
            size = model.checkpoint.vocab_size
        if size is not None:
            sizes[name] = size
    differing = len(set(sizes.values())) > 1
    tokenizer_setting = recipe.tokenizer_source or (recipe.tokenizer or {}).get("source")
    if recipe.tokenizer is not None and tokenizer_setting is None:
        tokenizer_setting = "union"  # mergekit's default for a tokenizer block
    detail = ", ".join(f"{name} has {size}" for name, size in sizes.items())
    if differing:
        if tokenizer_setting is not None:
            raise UserError(
                f"vocabulary sizes differ ({detail}) and the recipe asks for mergekit's tokenizer "
                f"merge (tokenizer source {tokenizer_setting!r}), which mergetui does not "
                "implement: it cannot re-map embedding rows between vocabularies",
                where="tokenizer_source" if recipe.tokenizer_source else "tokenizer",
                fix="merge models that share one tokenizer, or run this recipe with mergekit",
            )
        raise UserError(
            f"vocabulary sizes differ: {detail}",
            where="models",
            fix="merge models with the same tokenizer and vocabulary size",
        )
    if tokenizer_setting is not None:
        reference = _check_same_tokenizers(models, tokenizer_setting, sizes)
        _check_tokenizer_block(recipe.tokenizer or {}, reference, sizes)


def _check_tokenizer_block(
    block: Mapping[str, Any], vocab: Mapping[str, int] | None, sizes: Mapping[str, int]
) -> None:
    """A `tokenizer:` block is only a no-op here: new or forced tokens, or padding that would
    change the vocabulary size, need mergekit's embedding surgery, which is refused."""
    tokens = block.get("tokens") or {}
    for token, setting in tokens.items():
        forced = isinstance(setting, Mapping) and bool(setting.get("force"))
        if forced or vocab is None or token not in vocab:
            raise UserError(
                f"the tokenizer block {'forces' if forced else 'adds'} the token {token!r}, "
                "which needs mergekit's embedding surgery; mergetui does not implement it",
                where=f"tokenizer.tokens.{token}",
                fix="remove it from the recipe, or run this recipe with mergekit",
            )
    multiple = block.get("pad_to_multiple_of")
    size = next(iter(sizes.values()), None)
    if multiple and size is not None and size % int(multiple):
        raise UserError(
            f"pad_to_multiple_of = {multiple} would resize the {size}-row embeddings, which "
            "mergetui does not implement",
            where="tokenizer.pad_to_multiple_of",
            fix="remove pad_to_multiple_of, or run this recipe with mergekit",
        )


def _check_same_tokenizers(
    models: Mapping[str, PlannedModel], setting: str, sizes: Mapping[str, int]
) -> dict[str, int] | None:
    """With one shared vocabulary, mergekit's permutation is the identity: allow it; else refuse."""
    vocabularies = {}
    for name, model in models.items():
        vocab = _tokenizer_vocab(model.path)
        if vocab is not None:
            vocabularies[name] = vocab
    names = list(vocabularies)
    reference = vocabularies[names[0]] if names else None
    for name in names[1:]:
        if vocabularies[name] != reference:
            raise UserError(
                f"the tokenizers of {names[0]!r} and {name!r} differ and the recipe asks for "
                f"mergekit's tokenizer merge (tokenizer source {setting!r}), which mergetui does "
                "not implement",
                where="tokenizer_source",
                fix="merge models that share one tokenizer, or run this recipe with mergekit",
            )
    if reference is not None and sizes:
        size = next(iter(sizes.values()))
        if len(reference) != size:
            raise UserError(
                f"the tokenizer has {len(reference)} tokens but the embeddings have {size} rows; "
                f"mergekit would resize them to the tokenizer (tokenizer source {setting!r}), "
                "which mergetui does not implement",
                where="tokenizer_source",
                fix="remove tokenizer_source from the recipe (the tokenizers are the same)",
            )
    return reference


def _tokenizer_vocab(folder: Path) -> dict[str, int] | None:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    except Exception:  # noqa: BLE001 - an unreadable tokenizer compares as unknown
        return None


# ----------------------------------------------------------------------------------------------
# Tensors


class _TensorBuilder:
    """Walks slices and layers like mergekit's MergePlanner, producing PlannedTensors."""

    def __init__(
        self,
        recipe: Recipe,
        spec: MethodSpec,
        models: Mapping[str, PlannedModel],
        slices: Sequence[Slice],
    ) -> None:
        self.recipe = recipe
        self.spec = spec
        self.models = models
        self.slices = slices
        self.tensors: list[PlannedTensor] = []
        self.layer_sources: list[tuple[str, int]] = []
        self.out_layer = 0

    def build(self) -> list[PlannedTensor]:
        first, last = self.slices[0], self.slices[-1]
        first_models = [s.model for s in first.sources]
        last_models = [s.model for s in last.sources]

        for name in self._names(first_models, pre=True):
            self._plan(name, [(m, name) for m in first_models], first, 0.0, "pre", None)

        for slice_ in self.slices:
            count = slice_.num_layers
            for offset in range(count):
                t = offset / (count - 1) if count > 1 else 1.0
                self._plan_layer(slice_, offset, t)

        for name in self._names(last_models, pre=False):
            self._plan(name, [(m, name) for m in last_models], last, 0.0, "post", None)
        return self.tensors

    def _names(self, model_names: Sequence[str], *, pre: bool) -> list[str]:
        """Pre- or post-layer tensor names of the first model; a head any of the models has is
        included too (mergekit: an optional weight present in any input)."""
        first = self.models[model_names[0]].checkpoint
        names = [n for n in (first.pre_layer if pre else first.post_layer) if not is_skipped(n)]
        if not pre:
            for model_name in model_names[1:]:
                for n in self.models[model_name].checkpoint.post_layer:
                    if n not in names and block_kind(n) == "head" and not is_skipped(n):
                        names.append(n)
        return names

    def _plan_layer(self, slice_: Slice, offset: int, t: float) -> None:
        out_layer = self.out_layer
        first = slice_.sources[0]
        first_layer = first.layer_range[0] + offset
        first_ckpt = self.models[first.model].checkpoint
        if first_layer < len(first_ckpt.layers):
            template = [n for n in first_ckpt.layer_tensors(first_layer) if not is_skipped(n)]
        else:
            template = []
        for name in template:
            inputs = [
                (s.model, with_layer_index(name, s.layer_range[0] + offset)) for s in slice_.sources
            ]
            self._plan(with_layer_index(name, out_layer), inputs, slice_, t, "layer", out_layer)
        self.layer_sources.append((first.model, first_layer))
        self.out_layer += 1

    def _plan(
        self,
        out_name: str,
        inputs: Sequence[tuple[str, str]],
        slice_: Slice,
        t: float,
        section: str,
        out_layer: int | None,
    ) -> None:
        planned = [self._input(model, tensor, out_name) for model, tensor in inputs]
        present = [p for p in planned if p is not None]
        if not present:
            return  # a tied head nobody stores: mergekit skips the optional weight
        missing = [model for (model, _), p in zip(inputs, planned, strict=True) if p is None]
        if missing:
            have = inputs[planned.index(present[0])][0]
            raise UserError(
                f"tensor {inputs[0][1]} is missing in model {missing[0]!r} (model {have!r} has it)",
                where=out_name,
                fix="merge models of the same architecture and size",
            )
        shapes = {p.shape for p in present}
        if len(shapes) > 1:
            detail = ", ".join(f"{p.model} {list(p.shape)}" for p in present)
            vocab_hint = ""
            if section != "layer" and block_kind(out_name) in ("embedding", "head"):
                vocab_hint = " (the vocabularies differ)"
            raise UserError(
                f"tensor {out_name} has different shapes in the models{vocab_hint}: {detail}",
                where=out_name,
                fix="merge models of the same architecture and size",
            )
        dtypes = {p.dtype for p in present}
        floating = dtypes <= FLOAT_CODES
        if not floating and len(dtypes) > 1:
            raise UserError(
                f"tensor {out_name} mixes dtypes across models: "
                + ", ".join(f"{p.model} {p.dtype}" for p in present),
                where=out_name,
            )
        if floating:
            out_dtype = _recipe_dtype(self.recipe.out_dtype or self.recipe.dtype, "out_dtype")
            out_dtype = out_dtype or _promote(dtypes)
        else:
            out_dtype = present[0].dtype

        model_names = [p.model for p in present]
        base = self._slice_base(slice_)
        shared, per_model = self._parameters(slice_, out_name, list(inputs), t, base)
        base_index = None
        if base is not None and self.spec.base != "ignored":
            if base not in model_names:
                raise UserError(
                    f"the base {base!r} is not among the inputs of {out_name} "
                    f"({', '.join(model_names)})",
                    where="slices" if self.recipe.slices is not None else "merge.base",
                    fix="add the base to every slice's sources, or drop the base",
                )
            base_index = model_names.index(base)
        self.tensors.append(
            PlannedTensor(
                index=len(self.tensors),
                name=out_name,
                shape=present[0].shape,
                dtype=out_dtype,
                inputs=tuple(present),
                base_index=base_index,
                shared=shared,
                per_model=tuple(per_model),
                section=section,
                layer=out_layer,
                copy_only=not floating,
                elementwise=floating and _is_elementwise(self.spec, per_model),
            )
        )

    def _input(self, model_name: str, tensor: str, out_name: str) -> PlannedInput | None:
        checkpoint = self.models[model_name].checkpoint
        info: TensorInfo | None = checkpoint.tensors.get(tensor)
        if info is None and block_kind(tensor) == "head" and layer_index(tensor) is None:
            info = _tied_embedding(checkpoint)
        if info is None:
            return None
        return PlannedInput(
            model=model_name,
            tensor=info.name,
            file=info.file,
            offset=info.offset,
            nbytes=info.nbytes,
            dtype=info.dtype,
            shape=tuple(info.shape),
        )

    def _slice_base(self, slice_: Slice) -> str | None:
        return slice_.base if slice_.base is not None else self.recipe.base

    def _parameters(
        self,
        slice_: Slice,
        tensor_name: str,
        inputs: list[tuple[str, str]],
        t: float,
        base: str | None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Shared values (filters see the output name) and per-input values (filters see each
        input's own tensor name), exactly as mergekit resolves them."""
        from mergetui.recipe.resolve import resolve_tensor_params

        try:
            shared, per_model = resolve_tensor_params(
                self.recipe, self.spec, slice_, tensor_name, inputs, t, base
            )
        except UserError as exc:
            if exc.where is None:
                exc.where = tensor_name
            raise
        return dict(shared), [dict(per_model.get(model, {})) for model, _ in inputs]


def _is_elementwise(spec: MethodSpec, per_model: Sequence[Mapping[str, Any]]) -> bool:
    """Whether each output element depends only on the same input element (the spec says so,
    or says so when nothing is sparsified and every density is >= 1)."""
    if spec.elementwise:
        return True
    if spec.elementwise_when_dense:
        densities = [p.get("density", 1.0) for p in per_model]
        return all(d is None or float(d) >= 1.0 for d in densities)
    return False


def _tied_embedding(checkpoint: Checkpoint) -> TensorInfo | None:
    """The input embedding a model without a head ties its output projection to."""
    for hint in _EMBEDDING_HINTS:
        for name in checkpoint.pre_layer:
            if hint in name.split("."):
                return checkpoint.tensors[name]
    return None


def _recipe_dtype(name: str | None, where: str) -> str | None:
    if not name:
        return None
    code = compute_code(name)
    if code is None:
        raise UserError(
            f"unknown dtype {name!r}",
            where=where,
            fix="use bfloat16, float16 or float32",
        )
    return code


def _promote(dtypes: set[str]) -> str:
    """torch.promote_types over float dtype codes, without torch."""
    if len(dtypes) == 1:
        return next(iter(dtypes))
    if "F64" in dtypes:
        return "F64"
    return "F32"


def _tokenizer_donor(recipe: Recipe, models: Mapping[str, PlannedModel], donor: str) -> str:
    source = recipe.tokenizer_source or (recipe.tokenizer or {}).get("source")
    if isinstance(source, str) and source in models:
        return source
    if isinstance(source, str) and source not in ("base", "union") and source in recipe.models:
        raise UserError(
            f"tokenizer source {source!r} is not one of the merged models",
            where="tokenizer_source",
        )
    return donor


def _chat_template(recipe: Recipe, models: Mapping[str, PlannedModel]) -> str | None:
    from mergetui.merge.chat_templates import resolve_chat_template

    if not recipe.chat_template:
        return None
    templates = []
    if recipe.chat_template == "auto":
        templates = [_model_chat_template(m.path) for m in models.values()]
    return resolve_chat_template(recipe.chat_template, templates)


def _model_chat_template(folder: Path) -> str | None:
    import json

    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name, key in (
        ("chat_template.json", "chat_template"),
        ("tokenizer_config.json", "chat_template"),
    ):
        path = folder / name
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get(key)
            except (ValueError, AttributeError):
                continue
            if isinstance(value, list):  # named templates: take the default
                value = next((v.get("template") for v in value if v.get("name") == "default"), None)
            if isinstance(value, str):
                return value
    return None


def replace_output(plan: Plan, output_dir: str | Path) -> Plan:
    """The same plan writing somewhere else (the app's "save as")."""
    return dataclasses.replace(plan, output_dir=Path(output_dir).absolute())

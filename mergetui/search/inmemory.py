"""Candidates merged in memory: the parents read once, each candidate's tensors computed into one
resident model by the merge's own method path, nothing written.

`ResidentMerge(recipe)` plans the search's recipe as `mergetui merge` would (`merge.plan.make_plan`:
the same checks, tensors, parameters, output config and tokenizer choice), reads every input tensor
the plan names once onto the device (as stored: bf16 stays bf16), builds the merged model's
transformers model from the plan's output config (the architecture `mergetui merge` writes, loaded
as `mergetui chat` would load it: the dtype `chat.dtype.choose_dtype` picks for the device), and the
tokenizer the merge would copy. `apply(candidate)` then re-plans the candidate (for a candidate
shaped like the search's recipe only its parameters are resolved again: `plan_tensors` on the models
already opened) and computes each output tensor with `merge.compute.method_output`, the engine's own
method call, straight into the resident parameter. A tensor whose inputs and resolved parameters are
those of the value it already holds is left as it is, so what a search does not change is never
recomputed.

Why this equals the merge on disk: the same plan, the same method function and context, the same
compute dtype, and the result rounded once to the output dtype, then cast to the parameter's dtype
exactly as transformers casts the stored tensor when `mergetui chat` loads the merged folder.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetui.checkpoints.safetensors_io import TensorInfo
from mergetui.device import resolve_device
from mergetui.errors import UserError

if TYPE_CHECKING:
    import torch

    from mergetui.merge.plan import Plan
    from mergetui.merge.plan_tensors import PlannedInput, PlannedTensor
    from mergetui.recipe.model import Recipe

# make_plan needs an output folder; nothing is ever written there (it only has to stay apart
# from the inputs, which a folder under the temporary directory does).
UNUSED_OUTPUT = Path(tempfile.gettempdir()) / "mergetui-in-memory-candidate"


@dataclass(frozen=True)
class MergeReport:
    """What one `apply` did: tensors computed, tensors left as they were, and the time it took."""

    computed: int
    reused: int
    seconds: float


class ResidentMerge:
    """The parents and the merged model, resident on one device; candidates merged into it."""

    def __init__(self, recipe: Recipe, *, device: str = "auto", seed: int | None = None) -> None:
        from mergetui.recipe.paths import folder_of

        self.device = resolve_device(device)
        self._seed = seed
        # Relative model paths of every candidate are read from the search recipe's folder.
        self._recipe_dir = folder_of(recipe)
        self.plan = self._full_plan(recipe)
        self._structure = _structure(recipe)
        self.dtype = scoring_dtype(self.plan, self.device)
        self._parents = _load_parents(self.plan, self.device)
        self.model = _resident_model(self.plan, self.device, self.dtype)
        self.tokenizer = _load_tokenizer(self.plan)
        self._targets = _targets(self.model, self.plan)
        self._holds: dict[str, Hashable] = {}  # tensor name -> key of the value it holds
        self._pool: ThreadPoolExecutor | None = None

    # -- planning ----------------------------------------------------------------------------

    def _seed_for(self, recipe: Recipe) -> int | None:
        """The recipe's seed, else the search's: a random method's candidates must not each
        draw their own (the same values would score differently)."""
        return recipe.seed if recipe.seed is not None else self._seed

    def _full_plan(self, recipe: Recipe) -> Plan:
        from mergetui.merge.plan import make_plan

        return make_plan(
            recipe,
            recipe_dir=self._recipe_dir,
            out=UNUSED_OUTPUT,
            device=str(self.device),
            seed=self._seed_for(recipe),
            allow_bin=False,
            trust_remote_code=False,
        )

    def same_shape(self, recipe: Recipe) -> bool:
        """Whether the candidate differs from the search's recipe only in parameter values."""
        return _structure(recipe) == self._structure

    def plan_for(self, recipe: Recipe) -> Plan:
        """The candidate's plan, as `mergetui merge` would make it. A candidate shaped like the
        search's recipe (same method, models, slices, dtypes: only parameter values differ) gets
        its tensors' parameters resolved again on the models already opened; any other is
        planned from scratch and must read the same parent tensors."""
        from mergetui.merge.plan_tensors import plan_tensors
        from mergetui.recipe.validate import check_recipe

        if not self.same_shape(recipe):
            plan = self._full_plan(recipe)
            self._check_same_parents(plan)
            return plan
        problems, spec = check_recipe(recipe)
        problems.raise_blocking()
        assert spec is not None
        template = self.plan
        slices = recipe.effective_slices({n: m.num_layers for n, m in template.models.items()})
        tensors = plan_tensors(recipe, spec, template.models, slices)
        return dataclasses.replace(
            template, recipe=recipe, tensors=tensors, seed=self._seed_for(recipe)
        )

    def _check_same_parents(self, plan: Plan) -> None:
        """A candidate planned from scratch must make the resident model's tensors, no more and
        no fewer, from parent tensors already loaded, into the same architecture."""
        fix = "search over parameter values only; keep the recipe's models and slices"
        if _without_dtype(plan.output_config) != _without_dtype(self.plan.output_config):
            raise UserError("a candidate's merged model has another configuration", fix=fix)
        names = {tensor.name for tensor in plan.tensors}
        other = sorted(names ^ set(self._targets))
        if other:
            raise UserError(
                f"a candidate's merged model {'has' if other[0] in names else 'lacks'} tensor "
                f"{other[0]}, unlike the search's",
                where=other[0],
                fix=fix,
            )
        for tensor in plan.tensors:
            if tuple(tensor.shape) != tuple(self._targets[tensor.name].shape):
                raise UserError(
                    f"a candidate's tensor {tensor.name} has another shape",
                    where=tensor.name,
                    fix=fix,
                )
            for source in tensor.inputs:
                if _parent_key(source) not in self._parents:
                    raise UserError(
                        f"a candidate reads {source.tensor} of {source.model!r}, which the "
                        "search did not load",
                        where=tensor.name,
                        fix=fix,
                    )

    # -- merging -----------------------------------------------------------------------------

    def apply(self, recipe: Recipe) -> MergeReport:
        """Merge the candidate into the resident model (in place); nothing is written."""
        from mergetui.merge.methods import get_method_function
        from mergetui.merge.work import STORED, WHOLE
        from mergetui.recipe.methods import METHODS

        started = time.perf_counter()
        plan = self.plan_for(recipe)
        method = get_method_function(plan.method)
        # A method that reads chunks gets its inputs as stored, as the engine hands them over.
        mode = STORED if METHODS[plan.method].reads_chunks else WHOLE
        todo: list[tuple[PlannedTensor, Hashable]] = []
        reused = 0
        for tensor in plan.tensors:
            key = _tensor_key(plan, tensor)
            if self._holds.get(tensor.name) == key:
                reused += 1
                continue
            self._holds.pop(tensor.name, None)  # half-written if anything below fails
            todo.append((tensor, key))
        pool = self._workers()
        compute = functools.partial(self._compute, plan, method, mode)
        if pool is None:
            for tensor, _ in todo:
                compute(tensor)
        else:
            futures = [pool.submit(compute, tensor) for tensor, _ in todo]
            wait(futures)  # every one done before any error is raised: none still writing
            for future in futures:
                future.result()
        for tensor, key in todo:
            self._holds[tensor.name] = key
        return MergeReport(len(todo), reused, time.perf_counter() - started)

    def _compute(self, plan: Plan, method: Any, mode: str, tensor: PlannedTensor) -> None:
        """One output tensor, by the engine's method call, into its resident parameter."""
        import torch

        from mergetui.dtypes import torch_dtype
        from mergetui.merge.compute import method_output

        target = self._targets[tensor.name]
        values = [self._parents[_parent_key(s)] for s in tensor.inputs]
        fits = target.dtype == torch_dtype(tensor.dtype) and target.is_contiguous()
        with torch.no_grad():
            result = method_output(
                plan, tensor, values, method, self.device, mode=mode, out=target if fits else None
            )
            if result.data_ptr() != target.data_ptr():
                target.copy_(result)

    def _workers(self) -> ThreadPoolExecutor | None:
        """On the CPU, tensors are merged side by side, one torch thread each, as the engine
        merges them: chunk-sized operations gain little from more threads, and every barrier
        of a team stalls whenever anything else wants the CPU (a whole candidate took 2 to 14 s
        with two threads on a busy 2-core machine, 0.5 s this way). A GPU takes them in turn."""
        if self._pool is None and self.device.type == "cpu":
            from mergetui.device import core_count
            from mergetui.merge.work import MAX_WORKERS

            workers = min(core_count(), MAX_WORKERS)
            self._pool = ThreadPoolExecutor(
                workers, thread_name_prefix="mergetui-candidate", initializer=_one_thread
            )
        return self._pool

    def close(self) -> None:
        """Drop the parents and the model (GPU memory is given back at once)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._parents = {}
        self._targets = {}
        self._holds = {}
        self.model = None
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - nothing to give back
            pass


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # this worker thread's own team


def _structure(recipe: Recipe) -> Recipe:
    """The recipe without its parameter values: candidates that agree here differ only in the
    values the planner resolves per tensor."""
    models = {n: dataclasses.replace(m, parameters={}) for n, m in recipe.models.items()}
    slices = None
    if recipe.slices is not None:
        slices = [
            dataclasses.replace(
                s,
                parameters={},
                sources=[dataclasses.replace(src, parameters={}) for src in s.sources],
            )
            for s in recipe.slices
        ]
    return dataclasses.replace(
        recipe,
        models=models,
        slices=slices,
        parameters={},
        seed=None,
        output=None,
        description=None,
        search=None,
    )


def _without_dtype(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config but for its dtype (a candidate may write another; it is scored the same way)."""
    return {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype")}


def _frozen(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(values.items()))


def _tensor_key(plan: Plan, tensor: PlannedTensor) -> Hashable:
    """Everything a tensor's merged value depends on (random methods: the seed too)."""
    from mergetui.recipe.methods import METHODS

    return (
        plan.method,
        tensor.inputs,
        tensor.base_index,
        tensor.dtype,
        _frozen(tensor.shared),
        tuple(_frozen(p) for p in tensor.per_model),
        plan.seed if METHODS[plan.method].random else None,
    )


# -- building the resident parts -----------------------------------------------------------------


def scoring_dtype(plan: Plan, device: torch.device) -> torch.dtype:
    """The dtype `mergetui chat` (dtype auto) would load the merged model in on this device."""
    import torch

    from mergetui.chat.dtype import choose_dtype, stored_dtype

    stored = stored_dtype((t.dtype, t.numel) for t in plan.tensors)
    float32_need = sum(4 * t.numel for t in plan.tensors)
    choice = choose_dtype("auto", device.type, stored, float32_need=float32_need, free=None)
    name = choice.name or stored or "float32"
    return getattr(torch, name)


def _parent_key(source: PlannedInput) -> tuple[str, ...]:
    """A parent tensor by where it is stored (a model's name may point elsewhere next time), and
    by the adapter piece that changes it, if its model carries one (the same base tensor with and
    without an adapter is two parents)."""
    patch = getattr(source, "lora", None)
    if patch is None:
        return str(source.file), source.tensor
    pieces = (patch,) if isinstance(patch, TensorInfo) else (patch.a, patch.b)
    return (str(source.file), source.tensor, *(f"{p.file}:{p.offset}" for p in pieces))


def _load_parents(plan: Plan, device: torch.device) -> dict[tuple[str, str], torch.Tensor]:
    """Every input tensor the plan names, read once (pread, as the merge reads) onto the device
    as stored, with its model's adapter applied."""
    from mergetui.merge.lora_apply import apply_lora
    from mergetui.merge.reader import TensorReader

    parents: dict[tuple[str, str], torch.Tensor] = {}
    with TensorReader() as reader:
        for tensor in plan.tensors:
            for source in tensor.inputs:
                key = _parent_key(source)
                if key in parents:
                    continue
                value = reader.read(
                    source.file,
                    source.offset,
                    source.nbytes,
                    source.dtype,
                    source.shape,
                    source.tensor,
                )
                # A model's LoRA adapter changes the tensor as the merge's reads do.
                value = apply_lora(reader, source, value, 0, in_place=False)
                parents[key] = value.to(device)
    return parents


def _resident_model(plan: Plan, device: torch.device, dtype: torch.dtype) -> Any:
    """The merged model's transformers model, from the config the merge would write, on the
    device, in eval mode, without gradients; its weights are filled by `apply`."""
    import torch
    import transformers

    config_data = dict(plan.output_config)
    model_type = config_data.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise UserError(
            f"the merged model's architecture ({model_type or 'no model_type'}) needs its own "
            "Python code, which a search never runs",
            where=str(plan.models[plan.donor].path),
            fix="search over models of an architecture transformers knows",
        )
    config = transformers.CONFIG_MAPPING[model_type].from_dict(config_data)
    try:
        with _no_weight_init(), torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.tie_weights()  # skipped with the initialisation; loading a folder ties them
    except torch.OutOfMemoryError as exc:
        raise UserError(
            f"out of memory building the merged model on {device}",
            fix="free some memory or search on another device",
        ) from exc
    except (ValueError, KeyError) as exc:
        raise UserError(
            f"the merged model cannot be built for scoring: {exc}",
            where=str(plan.models[plan.donor].path),
        ) from exc
    model.eval()
    model.requires_grad_(False)
    return model


def _no_weight_init() -> Any:
    """transformers' context that skips random initialisation (the merge fills every weight)."""
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - transformers 4
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _load_tokenizer(plan: Plan) -> Any:
    """The tokenizer the merge would copy into its output (the recipe's tokenizer source),
    without running any code of its own."""
    from transformers import AutoTokenizer

    from mergetui.merge.remote_code import no_stdin_prompts

    name = plan.tokenizer_donor
    folder = plan.models[name].path
    try:
        with no_stdin_prompts():
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any failure means the files are unusable
        first = str(exc).strip().splitlines()
        raise UserError(
            f"the tokenizer of model {name!r} could not be loaded: "
            f"{first[0][:300] if first else type(exc).__name__}",
            where=str(folder),
            fix="a search scores text, so the tokenizer's model needs its tokenizer files "
            "(tokenizer.json or tokenizer.model)",
        ) from exc


def _targets(model: Any, plan: Plan) -> dict[str, torch.Tensor]:
    """The resident tensor each output tensor lands in. Names transformers ties together (a
    head tied to the embeddings) share one tensor; when the plan fills more than one of them,
    they are untied, as transformers unties them when it loads a folder that stores both. Every
    weight of the model must come from the plan."""
    state = model.state_dict()  # detached tensors sharing the parameters' storage
    planned = {t.name for t in plan.tensors}
    missing = [n for n in planned if n not in state]
    if missing:
        raise UserError(
            f"the merged model's {model.config.model_type} architecture has no tensor "
            f"{missing[0]} ({len(missing)} such)",
            where=missing[0],
            fix="search over checkpoints whose tensor names match their architecture",
        )
    groups: dict[int, list[str]] = {}
    for name, value in state.items():
        groups.setdefault(value.untyped_storage().data_ptr(), []).append(name)
    for names in groups.values():
        filled = [n for n in names if n in planned]
        if not filled:
            raise UserError(
                f"the merge would leave {names[0]} of the merged model unset",
                where=names[0],
                fix="merge checkpoints that hold every weight of their architecture",
            )
        for name in filled[1:]:
            _untie(model, name)
    state = model.state_dict()
    return {name: state[name] for name in planned}


def _untie(model: Any, name: str) -> None:
    """Give the parameter `name` storage of its own (it shared another's)."""
    import torch

    owner_name, _, attribute = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    shared = getattr(owner, attribute)
    setattr(owner, attribute, torch.nn.Parameter(shared.detach().clone(), requires_grad=False))

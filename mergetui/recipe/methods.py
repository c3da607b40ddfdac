"""Every merge method's contract, as plain data: the single place methods are listed.

Each `MethodSpec` holds every trait of its method that anything reads: its tensor function (as
"module:attr", imported on first use), the engine's traits (element-wise, chunked reads, streamed
output, cache size), the validator's (base, input counts, parameters and ranges) and the UI's
(the parameter the grid and suggest tune). No other module tests a method's name. The
task-vector family is one generalized method on two axes (`TaskVectorAxes`), as in mergekit.
Figures follow mergekit 0.1.5 (`merge_methods/registry.py`). Nothing here imports torch, so
validation and the app's first frame stay fast. Adding a method: one MethodSpec here, one function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ParamType = Literal["float", "bool", "int"]
# shared: one value per tensor; input: one per input model, the base included;
# non_base: one per input model except the base (mergekit's ParameterScope).
Scope = Literal["shared", "input", "non_base"]
BasePolicy = Literal["required", "optional", "ignored"]

REQUIRED: Any = object()


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a method: what it is, where it applies, its default and sane range."""

    name: str
    type: ParamType
    scope: Scope
    default: Any = REQUIRED
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    # Open bounds (strict inequality) where mergekit rejects the end point itself.
    exclusive_minimum: bool = False
    nullable: bool = False
    step: float = 0.05
    # What a search (`mergetui evolve`) explores when the spec gives no bounds and there is no range.
    search_bounds: tuple[float, float] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def per_model(self) -> bool:
        return self.scope != "shared"


Sparsification = Literal["none", "magnitude", "random", "breadcrumbs", "della"]
Consensus = Literal["none", "sum"]


@dataclass(frozen=True)
class TaskVectorAxes:
    """A task-vector method's two axes, as mergekit's GeneralizedTaskArithmeticMerge has them:
    how each task vector is sparsified, and whether a sign is elected per entry (sum consensus)."""

    sparsification: Sparsification
    consensus: Consensus


@dataclass(frozen=True)
class MethodSpec:
    """A method: what it needs from a recipe (base, input counts, parameters) and the traits the
    engine, planner and UI read (see the module docstring)."""

    name: str
    pretty_name: str
    description: str
    paper: str | None
    base: BasePolicy
    params: tuple[ParamSpec, ...] = ()
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int | None = None
    max_non_base: int | None = None
    random: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)
    # "module:attr" of the tensor function; mergetui.merge.methods.get_method_function imports it
    # on first use, so this table stays torch-free.
    function: str = ""
    # Output element i depends only on input element i: a tensor may be merged piece by piece.
    elementwise: bool = False
    # Element-wise when nothing is sparsified (every density >= 1): the task-vector family.
    elementwise_when_dense: bool = False
    # The inputs may be chunk sources (mergetui.merge.chunked), held as stored or read from file.
    reads_chunks: bool = False
    # The output is written through OutputChunks: with ctx.sink set it goes out chunk by chunk.
    streams_output: bool = False
    # Up to this many entries the function holds a float32 copy per non-base input (0: none).
    cache_elements: int = 0
    # A plain copy of the one input: without a scale it may skip the float32 round trip.
    copies_input: bool = False
    # The parameter the grid and suggest tune: "t" (shared), "weight" (per model), or None.
    tuned_parameter: str | None = None
    # Appended to the "takes N models" error of the recipe-wide merge (not of a slice).
    inputs_hint: str = ""
    # For the task-vector family: its place on the two axes (one generalized function).
    task_vector: TaskVectorAxes | None = None

    def param(self, name: str) -> ParamSpec | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    @property
    def epsilon_window(self) -> bool:
        """Keep probabilities run over density ± epsilon per model (DELLA): see `window_fits`."""
        return self.task_vector is not None and self.task_vector.sparsification == "della"

    @property
    def shared_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.scope == "shared")

    @property
    def per_model_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.scope != "shared")

    @property
    def searchable_params(self) -> tuple[str, ...]:
        """What `mergetui evolve` and the Search screen may set: the method's numbers, in order."""
        return tuple(p.name for p in self.params if p.type == "float")


def _weight(scope: Scope, description: str = "how much this model contributes") -> ParamSpec:
    return ParamSpec("weight", "float", scope, description=description, search_bounds=(0.0, 1.0))


def _task_vector_params(
    normalize: bool, rescale: bool, extra: tuple[ParamSpec, ...] = ()
) -> tuple[ParamSpec, ...]:
    return (
        _weight("non_base", "scale of this model's task vector (x - base)"),
        ParamSpec(
            "density",
            "float",
            "non_base",
            1.0,
            "share of the task vector's entries kept (1 keeps all)",
            minimum=0.0,
            maximum=1.0,
            exclusive_minimum=True,
        ),
        *extra,
        ParamSpec("normalize", "bool", "shared", normalize, "divide by the sum of the weights"),
        ParamSpec("rescale", "bool", "shared", rescale, "restore the L1 norm after sparsifying"),
        ParamSpec("lambda", "float", "shared", 1.0, "scale of the merged task vector", step=0.05),
        ParamSpec("int8_mask", "bool", "shared", False, "store sign masks as int8 (saves memory)"),
    )


_GAMMA = ParamSpec(
    "gamma",
    "float",
    "non_base",
    0.01,
    "share of the largest entries dropped as outliers",
    0.0,
    1.0,
    step=0.01,
)
_EPSILON = ParamSpec(
    "epsilon",
    "float",
    "non_base",
    0.15,
    "spread of keep probabilities around density",
    0.0,
    1.0,
    step=0.01,
)

# RAM's threshold: changes from the base smaller than this count as none.
_RAM_EPSILON = ParamSpec(
    "epsilon", "float", "shared", 1e-5, "smallest change that counts", minimum=0.0, step=1e-5
)

_TASK_VECTOR = "task-vector"
# When a task-vector merge runs a statistics pass, tensors up to this size keep each input's task
# vector from it (float32: 11.5 MB per input for a 2.9M-entry MLP projection) so that the passes
# after it read it instead of subtracting again. Larger ones recompute chunk by chunk.
TAU_CACHE_ELEMENTS = 1 << 22


def _fn(module: str, attr: str | None = None) -> str:
    """The "module:attr" of a function in mergetui.merge.methods (attr: the module's name)."""
    return f"mergetui.merge.methods.{module}:{attr or module}"


def _task_vector_method(
    name: str,
    pretty_name: str,
    description: str,
    paper: str,
    axes: TaskVectorAxes,
) -> MethodSpec:
    """One member of the task-vector family, every trait derived from its two axes: the
    normalize/rescale defaults as mergekit sets them, DARE's and DELLA's randomness, and the
    engine traits (DELLA ranks whole rows, so it alone reads whole tensors)."""
    sparse, sign = axes.sparsification, axes.consensus
    rescale = sparse in ("random", "della")
    normalize = sign == "sum" and sparse in ("magnitude", "della")
    extra = {"breadcrumbs": (_GAMMA,), "della": (_EPSILON,)}.get(sparse, ())
    chunked = sparse != "della"
    return MethodSpec(
        name,
        pretty_name,
        description,
        paper,
        "required",
        _task_vector_params(normalize=normalize, rescale=rescale, extra=extra),
        random=sparse in ("random", "della"),
        tags=(_TASK_VECTOR,),
        function=_fn("task_vector", "generalized_task_arithmetic"),
        elementwise_when_dense=True,
        reads_chunks=chunked,
        streams_output=chunked,
        cache_elements=TAU_CACHE_ELEMENTS if chunked else 0,
        tuned_parameter="weight",
        task_vector=axes,
    )


def _task_vector_family() -> tuple[MethodSpec, ...]:
    """The eight task-vector methods: mergekit's GeneralizedTaskArithmeticMerge, named by axes."""
    tv = _task_vector_method
    dare = "https://arxiv.org/abs/2311.03099"
    crumbs = "https://arxiv.org/abs/2312.06795"
    della = "https://arxiv.org/abs/2406.11617"
    return (
        tv(
            "task_arithmetic",
            "Task Arithmetic",
            "Adds the weighted task vectors (x - base) to the base.",
            "https://arxiv.org/abs/2212.04089",
            TaskVectorAxes("none", "none"),
        ),
        tv(
            "ties",
            "TIES",
            "Keeps each task vector's largest entries, elects a sign per entry, averages agreeing ones.",
            "https://arxiv.org/abs/2306.01708",
            TaskVectorAxes("magnitude", "sum"),
        ),
        tv(
            "dare_ties",
            "DARE TIES",
            "Drops task-vector entries at random, rescales, then TIES sign election.",
            dare,
            TaskVectorAxes("random", "sum"),
        ),
        tv(
            "dare_linear",
            "Linear DARE",
            "Drops task-vector entries at random, rescales, adds them up.",
            dare,
            TaskVectorAxes("random", "none"),
        ),
        tv(
            "breadcrumbs",
            "Model Breadcrumbs",
            "Drops the largest (outliers) and smallest task-vector entries, adds the rest.",
            crumbs,
            TaskVectorAxes("breadcrumbs", "none"),
        ),
        tv(
            "breadcrumbs_ties",
            "Model Breadcrumbs with TIES",
            "Breadcrumbs sparsification followed by TIES sign election.",
            crumbs,
            TaskVectorAxes("breadcrumbs", "sum"),
        ),
        tv(
            "della",
            "DELLA",
            "Magnitude-ranked random pruning of task vectors, rescaled, with sign election.",
            della,
            TaskVectorAxes("della", "sum"),
        ),
        tv(
            "della_linear",
            "Linear DELLA",
            "DELLA pruning without sign election.",
            della,
            TaskVectorAxes("della", "none"),
        ),
    )


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec(
            "linear",
            "Linear",
            "Weighted average of the models (a model soup).",
            "https://arxiv.org/abs/2203.05482",
            "ignored",
            (
                _weight("input"),
                ParamSpec("normalize", "bool", "shared", True, "divide by the sum of the weights"),
            ),
            function=_fn("linear"),
            elementwise=True,
            reads_chunks=True,
            tuned_parameter="weight",
        ),
        MethodSpec(
            "slerp",
            "SLERP",
            "Spherical interpolation between two models; t = 0 gives the base.",
            "https://en.wikipedia.org/wiki/Slerp",
            "required",
            (
                ParamSpec(
                    "t",
                    "float",
                    "shared",
                    description="0 = base, 1 = the other model",
                    minimum=0.0,
                    maximum=1.0,
                ),
            ),
            min_inputs=2,
            max_inputs=2,
            function=_fn("slerp"),
            reads_chunks=True,
            streams_output=True,
            tuned_parameter="t",
        ),
        MethodSpec(
            "nuslerp",
            "NuSLERP",
            "SLERP by weights, of the models or of their task vectors when a base is given.",
            None,
            "optional",
            (
                _weight("non_base"),
                ParamSpec(
                    "nuslerp_flatten", "bool", "shared", True, "treat the tensor as one vector"
                ),
                ParamSpec(
                    "nuslerp_row_wise", "bool", "shared", False, "interpolate rows, not columns"
                ),
            ),
            min_non_base=2,
            max_non_base=2,
            function=_fn("nuslerp"),
            tuned_parameter="weight",
        ),
        MethodSpec(
            "multislerp",
            "Multi-SLERP",
            "Spherical barycentre of any number of models (or task vectors with a base).",
            "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
            "optional",
            (
                _weight("non_base"),
                ParamSpec("normalize_weights", "bool", "shared", True, "make the weights sum to 1"),
                ParamSpec(
                    "eps", "float", "shared", 1e-8, "numerical floor", minimum=0.0, step=1e-8
                ),
            ),
            min_non_base=1,
            function=_fn("multislerp"),
            tuned_parameter="weight",
        ),
        MethodSpec(
            "karcher",
            "Karcher Mean",
            "Riemannian (Karcher) mean of the models on the sphere, equal weights.",
            "https://arxiv.org/abs/2603.04972",
            "ignored",
            (
                ParamSpec("max_iter", "int", "shared", 10, "iterations at most", minimum=1, step=1),
                ParamSpec(
                    "tol", "float", "shared", 1e-5, "convergence tolerance", minimum=0.0, step=1e-5
                ),
            ),
            function=_fn("karcher"),
        ),
        *_task_vector_family(),
        MethodSpec(
            "sce",
            "SCE",
            "Selects high-variance entries, weights task vectors by energy, TIES-style sign election.",
            "https://arxiv.org/abs/2408.07990",
            "required",
            (
                ParamSpec(
                    "select_topk",
                    "float",
                    "shared",
                    1.0,
                    "share of entries kept by variance",
                    0.0,
                    1.0,
                ),
                ParamSpec("int8_mask", "bool", "shared", False, "store sign masks as int8"),
            ),
            function=_fn("sce"),
        ),
        MethodSpec(
            "ram",
            "Reinforced Agent Merging",
            "Keeps each model's unique changes whole and averages the shared ones.",
            "https://arxiv.org/abs/2601.13572",
            "required",
            (_RAM_EPSILON,),
            function=_fn("ram"),
            elementwise=True,
        ),
        MethodSpec(
            "ramplus_tl",
            "Reinforced Agent Merging Plus (Tensor-Local)",
            "RAM, with unique changes boosted by the shared/unique ratio.",
            "https://arxiv.org/abs/2601.13572",
            "required",
            (
                ParamSpec("r", "float", "shared", 0.1, "boost strength", minimum=0.0),
                ParamSpec("alpha", "float", "shared", 0.2, "cap on the ratio", minimum=0.0),
                _RAM_EPSILON,
            ),
            function=_fn("ram", "ramplus_tl"),
        ),
        MethodSpec(
            "model_stock",
            "Model Stock",
            "Interpolates the average of the fine-tunes toward the base by their angle.",
            "https://arxiv.org/abs/2403.19522",
            "required",
            (ParamSpec("filter_wise", "bool", "shared", False, "compute the angle per row"),),
            min_inputs=3,
            function=_fn("model_stock"),
        ),
        MethodSpec(
            "nearswap",
            "NearSwap",
            "Takes the other model's value where it is close to the base's.",
            "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
            "required",
            (
                ParamSpec(
                    "t",
                    "float",
                    "shared",
                    description="similarity threshold",
                    minimum=0.0,
                    exclusive_minimum=True,
                    step=0.0001,
                ),
            ),
            min_inputs=2,
            max_inputs=2,
            function=_fn("nearswap"),
            elementwise=True,
        ),
        MethodSpec(
            "arcee_fusion",
            "Arcee Fusion",
            "Takes the other model's changes only where they matter most (importance above threshold).",
            "https://arcee.ai",
            "required",
            (),
            min_inputs=2,
            max_inputs=2,
            function=_fn("arcee_fusion"),
        ),
        MethodSpec(
            "passthrough",
            "Passthrough",
            "Copies tensors as they are, optionally scaled: builds layer stacks (frankenmerges).",
            None,
            "ignored",
            (
                ParamSpec(
                    "scale",
                    "float",
                    "input",
                    None,
                    "multiply the copied tensor",
                    nullable=True,
                    step=0.05,
                ),
            ),
            min_inputs=1,
            max_inputs=1,
            function=_fn("passthrough"),
            elementwise=True,
            copies_input=True,
            inputs_hint="; to stack layers from several models use [[slices]], one source each",
        ),
    )
}


def window_fits(density: float, epsilon: float) -> bool:
    """Whether DELLA's keep probabilities, density - epsilon to density + epsilon, stay inside
    (0, 1), as mergekit requires; the validator and the method both ask."""
    return not (density - epsilon <= 0 or density + epsilon >= 1)

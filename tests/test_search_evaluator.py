"""Candidates merged in memory: the resident model equals `mergetui merge`'s output, tensor for
tensor, and scores as `mergetui eval` scores that output; what does not change is not recomputed;
the local backend; errors before anything heavy is loaded."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergetui.chat.loader import load_for_chat
from mergetui.chat.perplexity import perplexity
from mergetui.errors import UserError
from mergetui.merge import runner as runner_module
from mergetui.merge.plan import make_plan
from mergetui.merge.runner import run_merge
from mergetui.recipe.model import ModelEntry, Recipe, Slice, SliceSource
from mergetui.resources import sample_text
from mergetui.search.backend_local import LocalBackend
from mergetui.search.backends import make_backend
from mergetui.search.evaluator import CandidateEvaluator
from mergetui.search.inmemory import ResidentMerge
from mergetui.search.spec import Objective, SearchSpec

LABEL = "perplexity:calib.txt"


def _recipe(family: dict[str, Path], method: str, a: object, b: object, **kwargs: object) -> Recipe:
    """base + a + b; `a` and `b` are the two fine-tunes' parameters."""
    return Recipe(
        method=method,
        base="base",
        models={
            "base": ModelEntry("base", str(family["base"])),
            "a": ModelEntry("a", str(family["a"]), parameters=dict(a)),  # type: ignore[call-overload]
            "b": ModelEntry("b", str(family["b"]), parameters=dict(b)),  # type: ignore[call-overload]
        },
        **kwargs,  # type: ignore[arg-type]
    )


def _spec(recipe: Recipe, objectives: tuple[Objective, ...], seed: int = 7) -> SearchSpec:
    return SearchSpec(
        recipe=recipe,
        parameters=("weight",),
        layer_groups=2,
        smooth=True,
        bounds={},
        budget=8,
        population=None,
        seed=seed,
        objectives=objectives,
        source_path=None,
    )


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(sample_text()[:1500], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def template(llama_family: dict[str, Path]) -> Recipe:
    return _recipe(llama_family, "task_arithmetic", {"weight": 0.5}, {"weight": 0.5})


@pytest.fixture(scope="module")
def evaluator(template: Recipe, calib: Path) -> CandidateEvaluator:
    spec = _spec(template, (Objective("perplexity", LABEL, 1.0, path=calib),))
    with CandidateEvaluator(spec, device="cpu") as evaluator:
        yield evaluator


def _candidates(family: dict[str, Path]) -> dict[str, Recipe]:
    return {
        # the search's own shape: per-layer gradients, only the values differ
        "task_arithmetic gradients": _recipe(
            family, "task_arithmetic", {"weight": [0.2, 0.9, 0.4]}, {"weight": [0.7, 0.1]}
        ),
        # not element-wise (a whole-tensor top-k), written in bfloat16: rounded once, then cast
        # to float32 as chat loads it
        "ties bfloat16": _recipe(
            family,
            "ties",
            {"weight": [0.3, 1.0], "density": 0.5},
            {"weight": 0.6, "density": [0.9, 0.3]},
            out_dtype="bfloat16",
        ),
        # random: the candidate has no seed, so the search's (7) is used, as the merge is told
        "dare_ties seeded": _recipe(
            family, "dare_ties", {"weight": 0.8, "density": 0.6}, {"weight": [0.2, 0.5]}
        ),
        # every model an input, the base included
        "linear": Recipe(
            method="linear",
            models={
                name: ModelEntry(name, str(family[name]), parameters={"weight": weight})
                for name, weight in (("base", [1.0, 0.2]), ("a", 0.3), ("b", [0.1, 0.9]))
            },
        ),
    }


@pytest.mark.parametrize(
    "case", ["task_arithmetic gradients", "ties bfloat16", "dare_ties seeded", "linear"]
)
def test_the_in_memory_candidate_is_the_merge_on_disk(
    case: str,
    evaluator: CandidateEvaluator,
    llama_family: dict[str, Path],
    calib: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    candidate = _candidates(llama_family)[case]
    # Float reductions (DARE's L1 rescale) round by torch's thread count: the in-memory merge
    # gives each tensor one thread; so does the engine on one core, so even those agree.
    monkeypatch.setattr(runner_module, "_core_count", lambda: 1)
    scores = evaluator.evaluate(candidate)

    out = tmp_path / "merged"
    run_merge(make_plan(candidate, out=out, seed=7))
    on_disk = load_file(str(out / "model.safetensors"))
    resident = evaluator.model.state_dict()
    assert set(on_disk) == set(resident)
    for name, stored in on_disk.items():
        # bit for bit: the same method call, rounded once to the output dtype, cast as loaded
        assert torch.equal(resident[name], stored.to(resident[name].dtype)), name

    loaded = load_for_chat(out, device="cpu", dtype="float32")
    expected = perplexity(loaded, calib.read_text(encoding="utf-8"), overlap=False)
    assert scores == {LABEL: pytest.approx(expected.mean_nll, rel=1e-4)}


def test_a_candidate_changes_the_score(
    evaluator: CandidateEvaluator, llama_family: dict[str, Path], template: Recipe
) -> None:
    near = evaluator.evaluate(template)[LABEL]
    far = evaluator.evaluate(
        _recipe(llama_family, "task_arithmetic", {"weight": 3.0}, {"weight": -2.0})
    )[LABEL]
    assert abs(far - near) > 1e-3
    assert evaluator.evaluate(template)[LABEL] == near  # deterministic, nothing left behind


def test_unchanged_tensors_are_kept_and_the_rest_recomputed(
    evaluator: CandidateEvaluator, llama_family: dict[str, Path], template: Recipe
) -> None:
    first = _recipe(llama_family, "task_arithmetic", {"weight": [0.2, 0.9]}, {"weight": 0.4})
    evaluator.evaluate(first)
    evaluator.evaluate(first)
    report = evaluator.last_merge
    assert report is not None and report.computed == 0 and report.reused > 0
    total = report.reused

    # only b's last layers change: the embeddings (t = 0) and early layers are kept
    second = _recipe(
        llama_family, "task_arithmetic", {"weight": [0.2, 0.9]}, {"weight": [0.4, 0.8]}
    )
    evaluator.evaluate(second)
    report = evaluator.last_merge
    assert report is not None
    assert 0 < report.computed < total and report.computed + report.reused == total

    # and the result is that of merging `second` from scratch
    fresh = ResidentMerge(template, device="cpu", seed=7)
    try:
        fresh.apply(second)
        expected = fresh.model.state_dict()
        for name, value in evaluator.model.state_dict().items():
            assert torch.equal(value, expected[name]), name
    finally:
        fresh.close()


def test_a_candidate_that_reads_other_models_is_refused(
    evaluator: CandidateEvaluator, llama_family: dict[str, Path]
) -> None:
    stranger = _recipe(llama_family, "task_arithmetic", {"weight": 0.5}, {"weight": 0.5})
    stranger.models["b"] = dataclasses.replace(stranger.models["b"], source=str(llama_family["c"]))
    with pytest.raises(UserError, match="did not load"):
        evaluator.evaluate(stranger)


def test_a_bad_objective_fails_before_any_model_is_read(tmp_path: Path) -> None:
    nowhere = _recipe(
        {"base": tmp_path / "x", "a": tmp_path / "y", "b": tmp_path / "z"},
        "task_arithmetic",
        {"weight": 1.0},
        {"weight": 1.0},
    )
    text = Objective("perplexity", "perplexity:missing.txt", 1.0, path=tmp_path / "missing.txt")
    with pytest.raises(UserError, match="no such text file"):
        CandidateEvaluator(_spec(nowhere, (text,)), device="cpu")
    (tmp_path / "ok.txt").write_text("Some text to score.", encoding="utf-8")
    fine = Objective("perplexity", "perplexity:ok.txt", 1.0, path=tmp_path / "ok.txt")
    with pytest.raises(UserError, match="not on this machine"):
        CandidateEvaluator(_spec(nowhere, (fine,)), device="cpu")


def test_a_closed_evaluator_says_so(template: Recipe, calib: Path) -> None:
    spec = _spec(template, (Objective("perplexity", LABEL, 1.0, path=calib),))
    evaluator = CandidateEvaluator(spec, device="cpu")
    assert evaluator.device == "cpu" and evaluator.labels == (LABEL,)
    evaluator.close()
    with pytest.raises(UserError, match="closed"):
        evaluator.evaluate(template)


def test_the_local_backend_scores_in_order_and_stops_on_cancel(
    template: Recipe, calib: Path, llama_family: dict[str, Path]
) -> None:
    spec = _spec(template, (Objective("perplexity", LABEL, 1.0, path=calib),))
    backend = make_backend("local", spec, device="cpu", workers=None, address=None)
    try:
        assert isinstance(backend, LocalBackend)
        assert backend.describe() == "local (cpu)"
        batch = [
            (5, _recipe(llama_family, "task_arithmetic", {"weight": w}, {"weight": 0.5}))
            for w in (0.1, 0.5, 0.9)
        ]
        batch = [(index + i, recipe) for i, (index, recipe) in enumerate(batch)]
        results = list(backend.evaluate(batch, threading.Event()))
        assert [index for index, _, _ in results] == [5, 6, 7]
        assert all(set(scores) == {LABEL} and seconds > 0 for _, scores, seconds in results)
        assert results[1][1] == backend.evaluator.evaluate(template)  # weight 0.5: the template

        cancel = threading.Event()
        done = []
        for index, _, _ in backend.evaluate(batch, cancel):
            done.append(index)
            cancel.set()  # after the first: the rest are not started
        assert done == [5]
    finally:
        backend.close()


def test_abandon_drops_the_candidate_in_progress_mid_forward(
    template: Recipe, calib: Path, llama_family: dict[str, Path]
) -> None:
    """Leaving the app sets `abandon`: the next decoder block the forward reaches raises, so the
    candidate in progress is dropped (a resume scores it again); unset, the hooks change nothing."""
    from mergetui.errors import CancelledError

    spec = _spec(template, (Objective("perplexity", LABEL, 1.0, path=calib),))
    abandon = threading.Event()
    backend = make_backend("local", spec, device="cpu", abandon=abandon)
    blocks_run: list[int] = []
    try:
        model = backend.evaluator.model
        for number, layer in enumerate(model.model.layers):
            layer.register_forward_hook(lambda *_, n=number: blocks_run.append(n))
        plain = backend.evaluator.evaluate(template)
        with CandidateEvaluator(spec, device="cpu") as unhooked:
            assert plain == unhooked.evaluate(template)
        blocks_run.clear()
        abandon.set()
        batch = [(0, _recipe(llama_family, "task_arithmetic", {"weight": 0.3}, {"weight": 0.5}))]
        with pytest.raises(CancelledError):
            list(backend.evaluate(batch, threading.Event()))
        assert blocks_run == []  # stopped at the first block, not after the whole forward
        abandon.clear()
        assert backend.evaluator.evaluate(template) == plain
    finally:
        backend.close()


def test_make_backend_refuses_what_it_does_not_know(template: Recipe, calib: Path) -> None:
    spec = _spec(template, (Objective("perplexity", LABEL, 1.0, path=calib),))
    with pytest.raises(UserError, match="unknown backend 'slurm'"):
        make_backend("slurm", spec)
    with pytest.raises(UserError, match="--ray-address is for the ray backend"):
        make_backend("local", spec, address="ray://head:10001")


def _resident_equals_loaded_merge(recipe: Recipe, text: Path, out: Path) -> None:
    """The resident model after `recipe` equals the merge on disk as the chat loader loads it,
    every tensor of its state (tied ones included)."""
    spec = _spec(recipe, (Objective("perplexity", LABEL, 1.0, path=text),))
    with CandidateEvaluator(spec, device="cpu") as evaluator:
        evaluator.evaluate(recipe)
        resident = evaluator.model.state_dict()
        run_merge(make_plan(recipe, out=out, seed=7))
        loaded = load_for_chat(out, device="cpu", dtype="float32").model.state_dict()
        assert set(resident) == set(loaded)
        for name, value in loaded.items():
            assert torch.equal(resident[name], value), name


def test_a_model_carrying_a_lora_adapter_is_searched_with_it(
    llama_family: dict[str, Path], calib: Path, tmp_path: Path
) -> None:
    """`lora =` on a parent: the resident merge applies the adapter as `mergetui merge` does, and
    the base with and without an adapter are two different parents."""
    pytest.importorskip("peft")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from lora_helpers import make_adapter

    adapter = make_adapter(
        llama_family["base"], tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"]
    )
    recipe = _recipe(llama_family, "task_arithmetic", {"weight": 0.4}, {"weight": 0.7})
    recipe.models["b"] = ModelEntry(
        "b", str(llama_family["base"]), parameters={"weight": 0.7}, lora=str(adapter)
    )
    _resident_equals_loaded_merge(recipe, calib, tmp_path / "merged")
    # The adapter made a difference: without it, b is the base and adds nothing.
    plain = _recipe(llama_family, "task_arithmetic", {"weight": 0.4}, {"weight": 0.7})
    plain.models["b"] = ModelEntry("b", str(llama_family["base"]), parameters={"weight": 0.7})
    run_merge(make_plan(plain, out=tmp_path / "plain", seed=7))
    with_adapter = load_file(str(tmp_path / "merged" / "model.safetensors"))
    without = load_file(str(tmp_path / "plain" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(with_adapter[name], without[name])


@pytest.mark.parametrize("arch", ["gemma", "gpt2", "phi3"])
def test_other_architectures_are_merged_as_on_disk(
    arch: str, tiny_model_factory: Callable[..., Path], calib: Path, tmp_path: Path
) -> None:
    """gemma and gpt2 tie the head to the embeddings (no head stored); gpt2 names its layers
    transformer.h.N; phi3 fuses qkv_proj and gate_up_proj."""
    base = tiny_model_factory(arch, seed=0)
    family = {
        "base": base,
        "a": tiny_model_factory(arch, seed=1, base=base),
        "b": tiny_model_factory(arch, seed=2, base=base),
    }
    recipe = _recipe(family, "task_arithmetic", {"weight": [0.2, 0.9]}, {"weight": 0.6})
    _resident_equals_loaded_merge(recipe, calib, tmp_path / "merged")


def test_a_head_tied_in_the_config_but_stored_is_untied_as_transformers_does(
    llama_family: dict[str, Path], calib: Path, tmp_path: Path
) -> None:
    """A config that ties the head while the files store both: transformers unties them on
    load when they differ, and so does the resident model."""
    family = {}
    for name in ("base", "a", "b"):
        folder = tmp_path / name
        shutil.copytree(llama_family[name], folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config["tie_word_embeddings"] = True
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        family[name] = folder
    recipe = _recipe(family, "task_arithmetic", {"weight": 0.7}, {"weight": [0.1, 0.4]})
    _resident_equals_loaded_merge(recipe, calib, tmp_path / "merged")


def test_a_candidate_shaped_like_the_search_recipe_is_not_planned_again(
    evaluator: CandidateEvaluator,
    llama_family: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only its parameters are resolved again: no model is reopened, no header read."""
    from mergetui.merge import plan as plan_module

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("planned from scratch")

    monkeypatch.setattr(plan_module, "make_plan", refuse)
    candidate = _recipe(llama_family, "task_arithmetic", {"weight": [0.3, 0.6]}, {"weight": 0.2})
    candidate.description = "another description, the same shape"
    assert set(evaluator.evaluate(candidate)) == {LABEL}
    with pytest.raises(AssertionError, match="planned from scratch"):  # another shape: planned
        evaluator.evaluate(_recipe(llama_family, "ties", {"weight": 0.3}, {"weight": 0.2}))


def test_values_the_merge_refuses_score_inf_and_the_search_goes_on(
    llama_family: dict[str, Path], calib: Path
) -> None:
    def linear(weights: tuple[float, float, float]) -> Recipe:
        models = {
            name: ModelEntry(name, str(llama_family[name]), parameters={"weight": weight})
            for name, weight in zip(("base", "a", "b"), weights, strict=True)
        }
        return Recipe(method="linear", models=models)

    spec = _spec(linear((1.0, 1.0, 1.0)), (Objective("perplexity", LABEL, 1.0, path=calib),))
    with CandidateEvaluator(spec, device="cpu") as evaluator:
        before = evaluator.evaluate(linear((0.2, 0.5, 0.3)))
        # weights that sum to zero: normalising divides by zero, the merge refuses them
        assert evaluator.evaluate(linear((0.0, 0.0, 0.0))) == {LABEL: math.inf}
        assert evaluator.last_error is not None and "sum to 0" in evaluator.last_error
        assert evaluator.evaluate(linear((0.2, 0.5, 0.3))) == before
        assert evaluator.last_error is None
        # a candidate of another shape the merge refuses is an error, not a score
        with pytest.raises(UserError, match="needs a base model"):
            evaluator.evaluate(
                dataclasses.replace(linear((0.2, 0.5, 0.3)), method="task_arithmetic")
            )


def test_a_candidate_with_another_layer_stack_is_refused(
    evaluator: CandidateEvaluator, llama_family: dict[str, Path]
) -> None:
    """Fewer output layers would leave the resident model's last layers from the candidate
    before: refused, not scored."""
    stack = Recipe(
        method="passthrough",
        models={name: ModelEntry(name, str(llama_family[name])) for name in ("base", "a")},
        slices=[
            Slice([SliceSource("base", (0, 2))]),
            Slice([SliceSource("a", (3, 4))]),
        ],
    )
    with pytest.raises(UserError, match="another configuration"):
        evaluator.evaluate(stack)

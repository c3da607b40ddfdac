"""Streaming execution: exact results, valid safetensors, events, and nothing left behind on failure."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mergetui.errors import CancelledError, UserError
from mergetui.merge import budgets as budgets_module
from mergetui.merge import pipeline as pipeline_module
from mergetui.merge import plan as plan_module
from mergetui.merge import runner as runner_module
from mergetui.merge import work as work_module
from mergetui.merge import writer as writer_module
from mergetui.merge.events import (
    Cancelled,
    Failed,
    Finished,
    PlanReady,
    ShardWritten,
    TensorDone,
)
from mergetui.merge.plan import make_plan
from mergetui.merge.runner import run_merge
from mergetui.recipe.model import ModelEntry, Recipe, Slice, SliceSource


def _linear(models: dict[str, tuple[Path, float]], **kwargs: object) -> Recipe:
    return Recipe(
        method="linear",
        models={
            name: ModelEntry(name, str(path), parameters={"weight": weight})
            for name, (path, weight) in models.items()
        },
        **kwargs,
    )


def _load_output(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(folder / file), "pt") as handle:  # validates the file format
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    return tensors


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".mergetui-" in p.name)


def test_linear_merge_is_exact_and_loads(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _linear(
        {
            "base": (llama_family["base"], 0.5),
            "a": (llama_family["a"], 0.3),
            "b": (llama_family["b"], 0.2),
        },
        dtype="float32",
    )
    out = tmp_path / "merged"
    events: list[object] = []
    result = run_merge(make_plan(recipe, out=out), on_event=events.append)
    assert result.output_dir == out
    merged = _load_output(out)
    inputs = [load_file(str(llama_family[n] / "model.safetensors")) for n in ("base", "a", "b")]
    assert set(merged) == set(inputs[0])
    for name, value in merged.items():
        expected = 0.5 * inputs[0][name] + 0.3 * inputs[1][name] + 0.2 * inputs[2][name]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)

    kinds = [type(e) for e in events]
    assert kinds[0] is PlanReady and kinds[-1] is Finished
    done = [e for e in events if isinstance(e, TensorDone)]
    assert len(done) == result.tensor_count == len(merged)
    assert done[-1].bytes_written == done[-1].total_bytes == result.total_bytes
    assert sorted(e.index for e in done) == list(range(len(done)))
    assert [e for e in events if isinstance(e, ShardWritten)][0].filename == "model.safetensors"
    assert _leftovers(tmp_path) == []

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = tokenizer("The merged model", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4


def test_sharded_output_with_index(
    sharded_llama: Path, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _linear({"s": (sharded_llama, 1.0), "a": (llama_family["a"], 1.0)})
    out = tmp_path / "merged"
    run_merge(make_plan(recipe, out=out, shard_size=150_000))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2
    assert files == [
        f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)
    ]
    merged = _load_output(out)
    a = load_file(str(llama_family["a"] / "model.safetensors"))
    base = load_file(str(llama_family["base"] / "model.safetensors"))
    for name, value in merged.items():
        torch.testing.assert_close(value, (base[name] + a[name]) / 2)
    assert index["metadata"]["total_size"] == sum(
        v.numel() * v.element_size() for v in merged.values()
    )


def test_big_tensors_stream_in_pieces(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Element-wise methods split big tensors into pieces; the result must not change."""
    monkeypatch.setattr(work_module, "PIECE_ELEMENTS", 1000)
    recipe = _linear(
        {"base": (llama_family["base"], 0.25), "a": (llama_family["a"], 0.75)}, out_dtype="bfloat16"
    )
    plan = make_plan(recipe, out=tmp_path / "merged")
    assert len(work_module.split_pieces(plan.tensors, plan.method)) > 2 * len(plan.tensors)
    run_merge(plan)
    merged = _load_output(tmp_path / "merged")
    base = load_file(str(llama_family["base"] / "model.safetensors"))
    a = load_file(str(llama_family["a"] / "model.safetensors"))
    for name, value in merged.items():
        assert value.dtype == torch.bfloat16
        assert torch.equal(value, (0.25 * base[name] + 0.75 * a[name]).to(torch.bfloat16)), name


def test_passthrough_stack_copies_layers_byte_for_byte(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = Recipe(
        method="passthrough",
        models={
            "x": ModelEntry("x", str(llama_family["base"])),
            "y": ModelEntry("y", str(llama_family["a"])),
        },
        slices=[Slice([SliceSource("x", (0, 3))]), Slice([SliceSource("y", (1, 4))])],
    )
    out = tmp_path / "stack"
    run_merge(make_plan(recipe, out=out))
    merged = _load_output(out)
    x = load_file(str(llama_family["base"] / "model.safetensors"))
    y = load_file(str(llama_family["a"] / "model.safetensors"))
    for out_layer, (source, layer) in enumerate([(x, 0), (x, 1), (x, 2), (y, 1), (y, 2), (y, 3)]):
        for suffix in ("self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(
                merged[f"model.layers.{out_layer}.{suffix}"],
                source[f"model.layers.{layer}.{suffix}"],
            )
    assert torch.equal(merged["model.embed_tokens.weight"], x["model.embed_tokens.weight"])
    assert torch.equal(merged["model.norm.weight"], y["model.norm.weight"])
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert len(model.model.layers) == 6


def test_cancel_half_way_leaves_nothing(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _linear({"base": (llama_family["base"], 1.0), "a": (llama_family["a"], 1.0)})
    out = tmp_path / "merged"
    cancel = threading.Event()
    events: list[object] = []

    def listener(event: object) -> None:
        events.append(event)
        if isinstance(event, TensorDone) and event.index == 5:
            cancel.set()

    with pytest.raises(CancelledError):
        run_merge(make_plan(recipe, out=out), on_event=listener, cancel=cancel)
    assert isinstance(events[-1], Cancelled)
    assert not out.exists()
    assert _leftovers(tmp_path) == []
    assert sum(isinstance(e, TensorDone) for e in events) < 39


def test_full_disk_part_way_leaves_nothing(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = writer_module.write_at

    def failing(fd: int, data: memoryview, offset: int) -> None:
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(writer_module, "write_at", failing)
    recipe = _linear({"base": (llama_family["base"], 1.0), "a": (llama_family["a"], 1.0)})
    out = tmp_path / "merged"
    events: list[object] = []
    with pytest.raises(UserError) as info:
        run_merge(make_plan(recipe, out=out), on_event=events.append)
    assert "disk is full" in info.value.message
    assert isinstance(events[-1], Failed) and "disk is full" in events[-1].message
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_input_truncated_after_planning(llama_family: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(llama_family["a"], copy)
    recipe = _linear({"base": (llama_family["base"], 1.0), "c": (copy, 1.0)})
    plan = make_plan(recipe, out=tmp_path / "merged")
    file = copy / "model.safetensors"
    with open(file, "r+b") as handle:
        handle.truncate(file.stat().st_size // 2)
    with pytest.raises(UserError) as info:
        run_merge(plan)
    assert "truncated" in info.value.message
    assert info.value.where == str(file)
    assert not (tmp_path / "merged").exists()
    assert _leftovers(tmp_path) == []


def test_existing_output_needs_force_and_survives_a_failed_replace(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "merged"
    recipe = _linear({"base": (llama_family["base"], 1.0), "a": (llama_family["a"], 1.0)})
    run_merge(make_plan(recipe, out=out))  # a previous merge's output: all --force replaces
    (out / "README.md").write_text("old result")
    with pytest.raises(UserError) as info:
        run_merge(make_plan(recipe, out=out))
    assert "already exists" in info.value.message and "--force" in (info.value.fix or "")
    assert (out / "README.md").read_text() == "old result"

    def broken_compute(*args: object, **kwargs: object) -> object:
        raise UserError("simulated failure")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline_module, "compute_piece", broken_compute)
        with pytest.raises(UserError):
            run_merge(make_plan(recipe, out=out), force=True)
    assert (out / "README.md").read_text() == "old result"  # replaced only once complete
    assert _leftovers(tmp_path) == []

    run_merge(make_plan(recipe, out=out), force=True)
    assert (out / "README.md").read_text() != "old result"
    assert (out / "model.safetensors").exists()
    assert _leftovers(tmp_path) == []


def test_differing_integer_buffers_are_refused(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    folders = {}
    for name, value in (("p", 1), ("q", 2)):
        folder = tmp_path / name
        shutil.copytree(llama_family["base"], folder)
        tensors = load_file(str(folder / "model.safetensors"))
        tensors["model.position_ids"] = torch.full((4,), value, dtype=torch.int64)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        folders[name] = folder
    same = _linear({"p": (folders["p"], 1.0), "p2": (folders["p"], 1.0)})
    run_merge(make_plan(same, out=tmp_path / "same"))
    assert torch.equal(
        _load_output(tmp_path / "same")["model.position_ids"],
        torch.full((4,), 1, dtype=torch.int64),
    )
    differ = _linear({"p": (folders["p"], 1.0), "q": (folders["q"], 1.0)})
    with pytest.raises(UserError) as info:
        run_merge(make_plan(differ, out=tmp_path / "differ"))
    assert "model.position_ids" in info.value.message
    assert not (tmp_path / "differ").exists()


def test_prefetch_budget_bounds_inputs_held() -> None:
    budget = budgets_module.ByteBudget(100)
    assert budget.acquire(80)
    holder: list[bool] = []
    thread = threading.Thread(target=lambda: holder.append(budget.acquire(50)), daemon=True)
    thread.start()
    thread.join(0.2)
    assert thread.is_alive()  # 80 + 50 > 100: waits
    budget.release(80)
    thread.join(5)
    assert holder == [True]
    budget.release(50)
    assert budget.acquire(500)  # bigger than the limit, but nothing else is held: admitted
    closer = threading.Thread(target=lambda: holder.append(budget.acquire(1)), daemon=True)
    closer.start()
    budget.close()  # a closed budget wakes the waiter, which gives up
    closer.join(5)
    assert holder == [True, False]


def test_estimate_covers_the_largest_working_set(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    plan = make_plan(
        _linear({"base": (llama_family["base"], 1.0), "a": (llama_family["a"], 1.0)}),
        out=tmp_path / "x",
    )
    biggest = max(t.numel for t in plan.tensors)
    assert plan.estimated_peak_bytes >= plan_module.PROCESS_BASELINE_BYTES + 2 * 4 * biggest


@pytest.mark.parametrize("method", ["slerp", "ties", "dare_ties", "linear"])
def test_chunk_reading_methods_give_the_same_tensors_from_every_source(
    method: str, tiny_model_factory: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A method that `reads_chunks` gets its inputs held as stored (bf16) or left in the files,
    and writes its output in the output dtype; every form gives the float32 path's tensors.
    Element-wise pieces (linear) are always small and held as stored."""
    from mergetui.merge import chunked, methods
    from mergetui.recipe.methods import METHODS

    base = tiny_model_factory("llama", seed=0, dtype="bfloat16")  # type: ignore[operator]
    one = tiny_model_factory("llama", seed=1, base=base, dtype="bfloat16")  # type: ignore[operator]
    two = tiny_model_factory("llama", seed=2, base=base, dtype="bfloat16")  # type: ignore[operator]
    others = {"one": one} if method == "slerp" else {"one": one, "two": two}
    recipe = Recipe(
        method=method,
        base="base",
        models={
            "base": ModelEntry("base", str(base)),
            **{name: ModelEntry(name, str(path)) for name, path in others.items()},
        },
        parameters={"t": 0.4} if method == "slerp" else {"density": 0.6, "weight": 0.5},
        seed=7,
    )
    real = methods.get_method_function(method)
    spec = METHODS[method]
    assert spec.reads_chunks
    streams = spec.streams_output
    assert streams == (method != "linear")  # linear's pieces are small: it returns them whole
    seen: list[set[type]] = []
    sinks: list[bool] = []

    def spy(tensors: list, ctx: object) -> torch.Tensor:
        seen.append({type(t) for t in tensors})
        sinks.append(ctx.sink is not None)  # type: ignore[attr-defined]
        return real(tensors, ctx)

    monkeypatch.setattr(methods, "get_method_function", lambda name: spy)
    outputs = {}
    for label, threshold in (("stored", 1 << 40), ("file", 0)):
        seen.clear()
        sinks.clear()
        monkeypatch.setattr(work_module, "CHUNKS_FROM_FILE_BYTES", threshold)
        run_merge(make_plan(recipe, out=tmp_path / label))
        wanted = chunked.FileSource if label == "file" else chunked.StoredSource
        if method == "linear":
            wanted = chunked.StoredSource
        assert seen and all(kinds == {wanted} for kinds in seen)
        # Streaming methods hand every output chunk to the writer (no whole output is held).
        assert sinks and all(sink == streams for sink in sinks)
        outputs[label] = _load_output(tmp_path / label)
    monkeypatch.setitem(METHODS, method, dataclasses.replace(spec, reads_chunks=False))
    seen.clear()
    sinks.clear()
    run_merge(make_plan(recipe, out=tmp_path / "whole"))
    assert seen and all(kinds == {torch.Tensor} for kinds in seen)
    assert not any(sinks)
    whole = _load_output(tmp_path / "whole")
    for label, got in outputs.items():
        assert got.keys() == whole.keys()
        for name in whole:
            assert got[name].dtype == whole[name].dtype == torch.bfloat16
            assert torch.equal(got[name], whole[name]), (label, name)


def test_pickle_checkpoints_only_with_allow_bin(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for item in llama_family["a"].iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, pickled / item.name)
    state = load_file(str(llama_family["a"] / "model.safetensors"))
    torch.save(state, pickled / "pytorch_model.bin")
    recipe = _linear({"base": (llama_family["base"], 0.5), "p": (pickled, 0.5)})
    with pytest.raises(UserError) as info:
        make_plan(recipe, out=tmp_path / "out")
    assert "--allow-bin" in (info.value.fix or "")
    monkeypatch.setattr(work_module, "PIECE_ELEMENTS", 1000)  # .bin tensors sliced into pieces
    run_merge(make_plan(recipe, out=tmp_path / "out", allow_bin=True))
    merged = _load_output(tmp_path / "out")
    base = load_file(str(llama_family["base"] / "model.safetensors"))
    for name, value in merged.items():
        torch.testing.assert_close(value, 0.5 * base[name] + 0.5 * state[name])


def test_compute_gate_runs_small_pieces_side_by_side_and_big_ones_alone() -> None:
    """Up to `workers` shared pieces at once, each on cores // workers threads; a piece over
    budget / workers waits for the others, runs alone on every core, and blocks later ones."""
    gate = budgets_module.ComputeGate(budget=100, workers=2, cores=4)
    assert not gate.is_exclusive(50) and gate.is_exclusive(51)
    assert gate.enter(0, 40) == 2
    assert gate.enter(1, 50) == 2  # shared: starts beside piece 0
    entered: list[tuple[int, int | None]] = []

    def enter(number: int, footprint: int) -> None:
        entered.append((number, gate.enter(number, footprint)))

    big = threading.Thread(target=enter, args=(2, 90), daemon=True)
    big.start()
    big.join(0.2)
    assert big.is_alive()  # exclusive: waits until nothing computes
    after = threading.Thread(target=enter, args=(3, 10), daemon=True)
    after.start()
    gate.leave()
    big.join(0.2)
    assert big.is_alive() and entered == []
    gate.leave()
    big.join(5)
    assert entered == [(2, 4)]  # alone, on every core
    after.join(0.2)
    assert after.is_alive()  # nothing starts beside an exclusive piece
    gate.leave()
    after.join(5)
    assert entered == [(2, 4), (3, 2)]
    gate.leave()
    late = threading.Thread(target=enter, args=(5, 10), daemon=True)
    late.start()
    late.join(0.2)
    assert late.is_alive()  # piece 4 has not entered yet: pieces start in plan order
    gate.close()
    late.join(5)
    assert entered[-1] == (5, None)


def test_pieces_compute_side_by_side_on_two_cores(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On two cores two workers merge at once, and the result is what one worker gives."""
    import time

    recipe = Recipe(
        method="ties",
        base="base",
        models={
            "base": ModelEntry("base", str(llama_family["base"])),
            "a": ModelEntry("a", str(llama_family["a"]), parameters={"density": 0.5}),
            "b": ModelEntry("b", str(llama_family["b"]), parameters={"density": 0.5}),
        },
        parameters={"weight": 0.5},
    )
    real = pipeline_module.compute_piece
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def counting(*args: object, **kwargs: object) -> object:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            time.sleep(0.01)  # long enough for the other worker to start its piece
            return real(*args, **kwargs)
        finally:
            with lock:
                running["now"] -= 1

    monkeypatch.setattr(pipeline_module, "compute_piece", counting)
    outputs = {}
    for cores in (1, 2):
        running["most"] = 0
        monkeypatch.setattr(runner_module, "_core_count", lambda cores=cores: cores)
        run_merge(make_plan(recipe, out=tmp_path / f"cores{cores}"))
        assert running["most"] == cores
        outputs[cores] = _load_output(tmp_path / f"cores{cores}")
    assert outputs[1].keys() == outputs[2].keys()
    for name, value in outputs[1].items():
        assert torch.equal(value, outputs[2][name]), name


def test_output_chunks_stream_to_a_sink_or_fill_one_tensor() -> None:
    from mergetui.merge.methods import MethodContext
    from mergetui.merge.methods._common import STREAMED, OutputChunks

    like = torch.zeros(2, 5)
    got: list[tuple[int, torch.Tensor]] = []
    ctx = MethodContext("x", "t", None, {}, [{}], out_dtype=torch.bfloat16)
    ctx.sink = lambda start, chunk: got.append((start, chunk.clone()))
    out = OutputChunks(ctx, like)
    out.chunk(0, 4).fill_(1.5)
    assert got == []  # handed over once the method moves on
    out.chunk(4, 10).fill_(2.5)
    assert [start for start, _ in got] == [0]
    assert out.result() is STREAMED
    assert [(s, c.dtype, c.tolist()) for s, c in got] == [
        (0, torch.bfloat16, [1.5] * 4),
        (4, torch.bfloat16, [2.5] * 6),
    ]
    ctx.sink = None
    whole = OutputChunks(ctx, like)
    whole.chunk(0, 4).fill_(1.0)
    whole.chunk(4, 10).fill_(3.0)
    result = whole.result()
    assert result.shape == (2, 5) and result.dtype == torch.bfloat16
    assert result.reshape(-1).tolist() == [1.0] * 4 + [3.0] * 6

"""MoE assembly: the same tensors as mergekit-moe (cheap_embed and hidden gates, Mixtral and
Qwen2-MoE with a shared expert), the result loads with transformers and generates, the TOML form
builds what the YAML form builds, random gates follow the seed, and a cancel leaves nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergetui.cli import main
from mergetui.errors import CancelledError
from mergetui.merge.events import TensorDone
from mergetui.merge.moe_plan import make_moe_plan
from mergetui.merge.moe_run import run_moe
from mergetui.recipe.moe import dumps_moe, load_moe, loads_moe


@pytest.fixture(scope="module")
def qwen_family(tiny_model_factory) -> dict[str, Path]:
    base = tiny_model_factory("qwen2", seed=0)
    family = {"base": base}
    for seed, name in enumerate(("a", "b"), start=1):
        family[name] = tiny_model_factory("qwen2", seed=seed, base=base)
    return family


def mixtral_yaml(family: dict[str, Path], gate_mode: str) -> str:
    """Three experts, one with negative prompts: every branch of the gate computation."""
    return f"""\
base_model: {family["base"]}
gate_mode: {gate_mode}
dtype: float32
experts_per_token: 2
experts:
  - source_model: {family["a"]}
    positive_prompts: ["def parse(line):", "import os"]
  - source_model: {family["b"]}
    positive_prompts: ["Once upon a time there was"]
    negative_prompts: ["def main():"]
  - source_model: {family["c"]}
    positive_prompts: ["The weather today"]
"""


def qwen_yaml(family: dict[str, Path]) -> str:
    # The shared expert is the base: mergekit-moe 0.1.5 opens only the base's and the experts'
    # files, so a shared expert that is neither fails there (AttributeError on its loader).
    return f"""\
base_model: {family["base"]}
gate_mode: hidden
experts:
  - source_model: {family["a"]}
    positive_prompts: ["def parse(line):"]
  - source_model: {family["b"]}
    positive_prompts: ["Once upon a time"]
shared_experts:
  - source_model: {family["base"]}
    positive_prompts: ["hello"]
"""


def run_mergekit_moe(config: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moe = pytest.importorskip(
        "mergekit.scripts.moe", reason="mergekit (the test extra) is the reference"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    moe.main.main([str(config), str(out), "--device", "cpu"], standalone_mode=False)


def assert_same_tensors(ours: Path, theirs: Path) -> None:
    a = load_file(ours / "model.safetensors")
    b = load_file(theirs / "model.safetensors")
    assert sorted(a) == sorted(b)
    for name, expected in b.items():
        assert a[name].dtype == expected.dtype, name
        assert a[name].shape == expected.shape, name
        assert torch.equal(a[name], expected), name


@pytest.mark.parametrize("gate_mode", ["cheap_embed", "hidden"])
def test_mixtral_matches_mergekit_moe(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate_mode: str
) -> None:
    config = tmp_path / "moe.yml"
    config.write_text(mixtral_yaml(llama_family, gate_mode))
    run_mergekit_moe(config, tmp_path / "theirs", monkeypatch)
    assert main(["merge", str(config), "--out", str(tmp_path / "ours"), "--device", "cpu"]) == 0
    assert_same_tensors(tmp_path / "ours", tmp_path / "theirs")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "config.json").read_text())
    assert ours == theirs
    assert ours["architectures"] == ["MixtralForCausalLM"] and ours["num_local_experts"] == 3
    # the gates really differ per expert (a router of equal rows would route nowhere)
    gate = load_file(tmp_path / "ours" / "model.safetensors")["model.layers.1.mlp.gate.weight"]
    assert gate.shape == (3, 64) and not torch.allclose(gate[0], gate[1])


def test_qwen2_moe_with_shared_expert_matches_mergekit_and_generates(
    qwen_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    config = tmp_path / "qwen.yml"
    config.write_text(qwen_yaml(qwen_family))
    run_mergekit_moe(config, tmp_path / "theirs", monkeypatch)
    assert main(["merge", str(config), "--out", str(tmp_path / "ours"), "--device", "cpu"]) == 0
    assert_same_tensors(tmp_path / "ours", tmp_path / "theirs")
    tensors = load_file(tmp_path / "ours" / "model.safetensors")
    assert tensors["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 64)
    assert "model.layers.3.mlp.shared_expert.down_proj.weight" in tensors
    _generates(tmp_path / "ours", transformers.Qwen2MoeForCausalLM)


def _generates(folder: Path, cls: type) -> None:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
    assert isinstance(model, cls)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer("def parse", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4


def test_mixtral_loads_with_transformers_and_generates(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    import transformers

    config = tmp_path / "moe.yml"
    config.write_text(mixtral_yaml(llama_family, "cheap_embed"))
    assert main(["merge", str(config), "--out", str(tmp_path / "out")]) == 0
    _generates(tmp_path / "out", transformers.MixtralForCausalLM)
    # experts' MLPs are the experts' own: expert 1's gate rows of layer 2 are model b's gate_proj
    stacked = load_file(tmp_path / "out" / "model.safetensors")
    b = load_file(llama_family["b"] / "model.safetensors")
    gate_up = stacked["model.layers.2.mlp.experts.gate_up_proj"]
    assert torch.equal(gate_up[1, :128], b["model.layers.2.mlp.gate_proj.weight"])
    assert torch.equal(gate_up[1, 128:], b["model.layers.2.mlp.up_proj.weight"])


def toml_form(family: dict[str, Path]) -> str:
    """`mixtral_yaml(family, "random")` in the [moe] form, with a seed."""
    return f"""\
[moe]
base = "{family["base"]}"
gate_mode = "random"
dtype = "float32"
experts_per_token = 2
seed = 7

[[moe.experts]]
source = "{family["a"]}"
positive_prompts = ["def parse(line):", "import os"]

[[moe.experts]]
source = "{family["b"]}"
positive_prompts = ["Once upon a time there was"]
negative_prompts = ["def main():"]

[[moe.experts]]
source = "{family["c"]}"
positive_prompts = ["The weather today"]
"""


def test_toml_form_equals_yaml_form(llama_family: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "moe.yml").write_text(mixtral_yaml(llama_family, "random"))
    (tmp_path / "moe.toml").write_text(toml_form(llama_family))
    from_yaml, from_toml = load_moe(tmp_path / "moe.yml"), load_moe(tmp_path / "moe.toml")
    assert from_yaml is not None and from_toml is not None
    assert from_toml.seed == 7
    from_yaml.seed = 7
    assert dumps_moe(from_yaml, "toml") == dumps_moe(from_toml, "toml")
    for name in ("moe.yml", "moe.toml"):
        args = ["merge", str(tmp_path / name), "--out", str(tmp_path / f"out-{name}")]
        assert main([*args, "--seed", "7"]) == 0
    assert_same_tensors(tmp_path / "out-moe.yml", tmp_path / "out-moe.toml")
    # the seed decides the random gates: another seed, other gates
    assert (
        main(["merge", str(tmp_path / "moe.toml"), "--out", str(tmp_path / "s8"), "--seed", "8"])
        == 0
    )
    seven = load_file(tmp_path / "out-moe.toml" / "model.safetensors")
    eight = load_file(tmp_path / "s8" / "model.safetensors")
    name = "model.layers.0.mlp.gate.weight"
    assert not torch.equal(seven[name], eight[name])
    # each form converts into the other and back to the same text (a YAML drops the seed:
    # mergekit-moe takes it on its command line)
    for fmt in ("yaml", "toml"):
        again = loads_moe(dumps_moe(from_toml, fmt), fmt, f"x.{fmt}")
        assert again is not None and again.seed == (None if fmt == "yaml" else 7)
        again.seed = 7
        assert dumps_moe(again, "toml") == dumps_moe(from_toml, "toml")


def test_convert_both_ways(llama_family: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "moe.yml").write_text(mixtral_yaml(llama_family, "hidden"))
    assert main(["convert", str(tmp_path / "moe.yml"), str(tmp_path / "moe.toml")]) == 0
    assert (tmp_path / "moe.toml").read_text().startswith("[moe]\n")
    assert main(["convert", str(tmp_path / "moe.toml"), str(tmp_path / "back.yml")]) == 0
    back, first = load_moe(tmp_path / "back.yml"), load_moe(tmp_path / "moe.yml")
    assert back is not None and first is not None
    assert dumps_moe(back, "yaml") == dumps_moe(first, "yaml")


def test_cancel_leaves_nothing_and_dry_run_writes_nothing(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "moe.yml"
    config.write_text(mixtral_yaml(llama_family, "cheap_embed"))
    out = tmp_path / "out"
    assert main(["merge", str(config), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "Mixtral" in text and "cheap_embed" in text and "dtype: float32" in text
    assert not out.exists()
    out.mkdir()  # a folder in the way: the dry run says a run needs --force
    assert main(["merge", str(config), "--out", str(out), "--dry-run"]) == 0
    assert "the output folder exists (a run needs --force)" in capsys.readouterr().out
    out.rmdir()

    recipe = load_moe(config)
    assert recipe is not None
    plan = make_moe_plan(recipe, recipe_dir=tmp_path, out=out)
    cancel = threading.Event()
    seen: list[str] = []

    def on_event(event: object) -> None:
        if isinstance(event, TensorDone):
            seen.append(event.name)
            if len(seen) == 3:
                cancel.set()

    with pytest.raises(CancelledError):
        run_moe(plan, on_event=on_event, cancel=cancel)
    assert len(seen) == 3
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [config]  # no temporary folder either


def test_streams_one_input_tensor_at_a_time_across_shards(
    llama_family: dict[str, Path],
    sharded_llama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sharded base and a sharded output give the tensors of the plain run, and no write is
    larger than one input tensor: a layer's stacked experts are never built whole (a tensor of
    the output's dtype goes file to file, through `copy_range`; the others through `write`)."""
    from mergetui.merge.writer import ShardSetWriter

    config = tmp_path / "moe.yml"
    config.write_text(mixtral_yaml(llama_family, "cheap_embed"))
    assert main(["merge", str(config), "--out", str(tmp_path / "plain")]) == 0
    sharded = tmp_path / "sharded.yml"
    sharded.write_text(mixtral_yaml({**llama_family, "base": sharded_llama}, "cheap_embed"))
    writes: list[tuple[str, int]] = []
    original = ShardSetWriter.write

    def write(self: ShardSetWriter, name: str, tensor: torch.Tensor, start: int = 0) -> object:
        writes.append((name, tensor.numel() * tensor.element_size()))
        return original(self, name, tensor, start)

    copy_range = ShardSetWriter.copy_range

    def copy(self: ShardSetWriter, name: str, source: int, offset: int, nbytes: int, *a, **k):
        writes.append((name, nbytes))
        return copy_range(self, name, source, offset, nbytes, *a, **k)

    monkeypatch.setattr(ShardSetWriter, "write", write)
    monkeypatch.setattr(ShardSetWriter, "copy_range", copy)
    out = tmp_path / "out"
    assert main(["merge", str(sharded), "--out", str(out), "--shard-size", "300KB"]) == 0
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    ours = {}
    for shard in shards:
        ours.update(load_file(out / shard))
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    assert sorted(ours) == sorted(plain)
    assert all(torch.equal(ours[name], plain[name]) for name in plain)
    stacked = [n for n, _ in writes if n.endswith(("gate_up_proj", "down_proj"))]
    assert stacked.count("model.layers.0.mlp.experts.gate_up_proj") == 6  # 3 experts x gate, up
    largest_input = 128 * 64 * 4  # an MLP matrix of the tiny llama, float32
    assert max(size for name, size in writes if "experts" in name) == largest_input


@pytest.mark.parametrize("case", ["mistral, hidden_avg, residual_scale", "llama as qwen, bfloat16"])
def test_more_shapes_match_mergekit_moe(
    case: str,
    llama_family: dict[str, Path],
    tiny_model_factory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mistral experts into a Mixtral with averaged hidden states and a residual scale; Llama
    experts forced into a Qwen MoE (zero attention biases, the base as shared expert), bfloat16."""
    if case.startswith("mistral"):
        base = tiny_model_factory("mistral", seed=0)
        a, b = (tiny_model_factory("mistral", seed=s, base=base) for s in (1, 2))
        text = f"""\
base_model: {base}
gate_mode: hidden_avg
experts:
  - source_model: {a}
    positive_prompts: ["def parse(line):"]
    residual_scale: 0.5
  - source_model: {b}
    positive_prompts: ["Once upon a time"]
"""
    else:
        base, a, b = llama_family["base"], llama_family["a"], llama_family["b"]
        text = f"""\
base_model: {base}
architecture: qwen
gate_mode: cheap_embed
dtype: bfloat16
experts:
  - source_model: {a}
    positive_prompts: ["def parse(line):"]
  - source_model: {b}
    positive_prompts: ["Once upon a time"]
shared_experts:
  - source_model: {base}
    positive_prompts: ["hello"]
"""
    config = tmp_path / "moe.yml"
    config.write_text(text)
    run_mergekit_moe(config, tmp_path / "theirs", monkeypatch)
    assert main(["merge", str(config), "--out", str(tmp_path / "ours")]) == 0
    assert_same_tensors(tmp_path / "ours", tmp_path / "theirs")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours == json.loads((tmp_path / "theirs" / "config.json").read_text())


def test_recipe_copy_reruns_and_names_hub_parents(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    """The output's mergetui.toml holds the models as absolute folders (its relative paths were the
    recipe's), so it assembles the same model from anywhere; a push reads an MoE's Hub parents."""
    import os

    from mergetui.merge.publish import recipe_parents

    relative = {k: Path(os.path.relpath(v, tmp_path)) for k, v in llama_family.items()}
    config = tmp_path / "moe.yml"
    config.write_text(mixtral_yaml(relative, "cheap_embed"))
    assert main(["merge", str(config), "--out", str(tmp_path / "first")]) == 0
    copy = tmp_path / "first" / "mergetui.toml"
    recipe = load_moe(copy)
    assert recipe is not None and Path(recipe.base) == llama_family["base"].resolve()
    assert main(["merge", str(copy), "--out", str(tmp_path / "again")]) == 0
    assert_same_tensors(tmp_path / "again", tmp_path / "first")
    assert recipe_parents(tmp_path / "first") == []  # local folders are no Hub parents
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "mergetui.toml").write_text(
        '[moe]\nbase = "org/base"\ngate_mode = "random"\n\n'
        '[[moe.experts]]\nsource = "org/code"\n\n[[moe.experts]]\nsource = "org/base"\n'
    )
    assert recipe_parents(hub) == ["org/base", "org/code"]


@pytest.mark.parametrize("kernel", ["refuses (another file system)", "absent (not Linux)"])
def test_copy_without_copy_file_range_writes_the_same_bytes(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    """Tensors copied unchanged go file to file; where the kernel cannot (EXDEV across file
    systems, or no copy_file_range at all) they go through a buffer, to the same bytes."""
    import errno
    import os

    config = tmp_path / "moe.yml"
    config.write_text(mixtral_yaml(llama_family, "cheap_embed"))
    assert main(["merge", str(config), "--out", str(tmp_path / "kernel")]) == 0
    calls = []

    def refuse(*args: object) -> int:
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    if kernel.startswith("refuses"):
        monkeypatch.setattr(os, "copy_file_range", refuse)
    else:
        monkeypatch.delattr(os, "copy_file_range")
    assert main(["merge", str(config), "--out", str(tmp_path / "buffered")]) == 0
    assert bool(calls) == kernel.startswith("refuses")
    kernel_bytes = (tmp_path / "kernel" / "model.safetensors").read_bytes()
    assert (tmp_path / "buffered" / "model.safetensors").read_bytes() == kernel_bytes


def test_an_input_truncated_after_planning_is_named(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    """A file that shrinks between the plan and the copy fails on the tensor it cuts, naming the
    file, and leaves no output behind."""
    import shutil

    from mergetui.errors import UserError

    expert = tmp_path / "expert"
    shutil.copytree(llama_family["a"], expert)
    config = tmp_path / "moe.yml"
    config.write_text(mixtral_yaml({**llama_family, "a": expert}, "cheap_embed"))
    plan = make_moe_plan(load_moe(config), recipe_dir=tmp_path, out=tmp_path / "out")
    weights = expert / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)  # cuts MLP tensors: all of them are copied
    with pytest.raises(UserError) as caught:
        run_moe(plan)
    assert "truncated" in str(caught.value) and str(weights) in str(caught.value.where)
    assert not (tmp_path / "out").exists()

"""The tiny-model factory and the tokenizer: real checkpoints that transformers loads and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mergetui.demo import (
    BOS_ID,
    CHAT_TEMPLATE,
    EOS_ID,
    PAD_ID,
    make_tiny_model,
    train_tokenizer,
)
from mergetui.resources import sample_sections, sample_text


def _all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def test_tokenizer_round_trips_text_and_has_chat_template(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = "The keeper wound the clockwork and lit the lamp."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    # BPE merges learned from the sample: far fewer tokens than bytes.
    assert len(ids) <= len(text.encode()) / 2
    assert len(tokenizer) == 384
    assert tokenizer.bos_token_id == BOS_ID
    assert tokenizer.eos_token_id == EOS_ID
    assert tokenizer.pad_token_id == PAD_ID
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_tokenizer_rejects_vocab_smaller_than_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(tmp_path, vocab_size=100)


def test_sample_text_has_sections_for_the_demo_domains() -> None:
    sections = sample_sections()
    assert "def greet(name):" in sections["A Small Program"]
    assert "Two plus two is four." in sections["Simple Arithmetic"]
    assert "Question: Why is the sky blue?" in sections["Questions and Answers"]
    assert sum(len(body) for body in sections.values()) > 0.9 * len(sample_text())


def test_every_architecture_loads_in_transformers_and_generates(
    arch_models: dict[str, Path],
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for arch, folder in arch_models.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == arch
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        inputs = tokenizer("The storm came", return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert out.shape == (1, inputs["input_ids"].shape[1] + 3), arch
        # Saved tensors are exactly the model's parameters (tied ones once).
        saved = _all_tensors(folder)
        assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters())
        assert (folder / "model.safetensors").stat().st_size < 1_000_000


def test_architecture_specific_layouts(arch_models: dict[str, Path]) -> None:
    gemma = _all_tensors(arch_models["gemma"])
    assert "lm_head.weight" not in gemma and "model.embed_tokens.weight" in gemma
    assert json.loads((arch_models["gemma"] / "config.json").read_text())["tie_word_embeddings"]
    assert "lm_head.weight" in _all_tensors(arch_models["llama"])
    gpt2 = _all_tensors(arch_models["gpt2"])
    assert "transformer.h.3.attn.c_attn.weight" in gpt2 and "transformer.wpe.weight" in gpt2
    phi3 = _all_tensors(arch_models["phi3"])
    assert "model.layers.0.self_attn.qkv_proj.weight" in phi3
    assert "model.layers.0.mlp.gate_up_proj.weight" in phi3
    assert "model.layers.0.self_attn.q_proj.bias" in _all_tensors(arch_models["qwen2"])


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    first = _all_tensors(make_tiny_model(tmp_path / "one", seed=7, tokenizer=False))
    again = _all_tensors(make_tiny_model(tmp_path / "two", seed=7, tokenizer=False))
    other = _all_tensors(make_tiny_model(tmp_path / "three", seed=8, tokenizer=False))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first[name], other[name])
    assert not (tmp_path / "one" / "tokenizer.json").exists()


def test_fine_tunes_are_base_plus_seeded_noise(llama_family: dict[str, Path]) -> None:
    base = _all_tensors(llama_family["base"])
    a = _all_tensors(llama_family["a"])
    b = _all_tensors(llama_family["b"])
    assert set(base) == set(a) == set(b)
    for name in base:
        delta = a[name] - base[name]
        assert 0.012 < delta.std().item() < 0.03, name
        assert not torch.equal(a[name], b[name]), name
    assert (llama_family["a"] / "tokenizer.json").read_bytes() == (
        llama_family["base"] / "tokenizer.json"
    ).read_bytes()


def test_fine_tune_of_tied_model_stays_tied(tiny_model_factory, arch_models) -> None:
    tuned = tiny_model_factory("gemma", seed=5, base=arch_models["gemma"], dtype="bfloat16")
    tensors = _all_tensors(tuned)
    assert "lm_head.weight" not in tensors
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    config = json.loads((tuned / "config.json").read_text())
    assert config["model_type"] == "gemma" and config["dtype"] == "bfloat16"


def test_sharded_model_has_index_and_same_weights(
    sharded_llama: Path, llama_family: dict[str, Path]
) -> None:
    shards = sorted(sharded_llama.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    index = json.loads((sharded_llama / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    for name, shard in index["weight_map"].items():
        with safe_open(str(sharded_llama / shard), "pt") as handle:
            assert name in handle.keys()
    single = _all_tensors(llama_family["base"])
    sharded = _all_tensors(sharded_llama)
    assert set(single) == set(sharded)
    assert all(torch.equal(single[k], sharded[k]) for k in single)


def test_shapes_and_dtype_follow_arguments(tmp_path: Path) -> None:
    folder = make_tiny_model(
        tmp_path / "m",
        "qwen2",
        num_layers=2,
        hidden_size=32,
        intermediate_size=48,
        vocab_size=400,
        dtype="float16",
    )
    tensors = _all_tensors(folder)
    assert tensors["model.embed_tokens.weight"].shape == (400, 32)
    assert tensors["model.layers.1.mlp.up_proj.weight"].shape == (48, 32)
    assert "model.layers.2.mlp.up_proj.weight" not in tensors
    assert all(t.dtype == torch.float16 for t in tensors.values())
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        make_tiny_model(tmp_path / "bad", "falcon")


# ---- make_demo and `mergetui demo` -------------------------------------------------------------


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch):
    """The real `mergetui` entry point, with only this part's commands registered (so these tests
    do not depend on the other commands' modules)."""
    import mergetui.cli

    monkeypatch.setattr(mergetui.cli, "COMMAND_MODULES", ("inspect", "demo"))
    return mergetui.cli.main


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from mergetui.demo import make_demo

    messages: list[str] = []
    info = make_demo(tmp_path_factory.mktemp("demo") / "mergetui-demo", on_progress=messages.append)
    assert messages and any("base" in m for m in messages)
    return info


def test_demo_models_are_a_family(demo) -> None:
    from mergetui.checkpoints.inspect import open_checkpoint

    assert demo.created and list(demo.models) == ["base", "prose", "code"]
    checkpoints = {name: open_checkpoint(folder) for name, folder in demo.models.items()}
    base = checkpoints["base"]
    assert base.num_layers == 6 and base.hidden_size == 128 and base.vocab_size == 1024
    assert base.dtypes == {"BF16": len(base.tensors)}
    base_tensors = _all_tensors(demo.models["base"])
    for name, checkpoint in checkpoints.items():
        assert checkpoint.has_tokenizer and checkpoint.has_chat_template, name
        assert {n: i.shape for n, i in checkpoint.tensors.items()} == {
            n: i.shape for n, i in base.tensors.items()
        }
        if name != "base":
            tuned = _all_tensors(demo.models[name])
            delta = (
                tuned["model.layers.5.mlp.up_proj.weight"].float()
                - base_tensors["model.layers.5.mlp.up_proj.weight"].float()
            )
            assert 0.001 < delta.std().item() < 0.1, name
    # The texts to search and to judge on, one per domain (tests/test_demo_family.py: the rest).
    assert {folder: sorted(texts) for folder, texts in demo.texts.items()} == {
        "calib": ["code", "prose"],
        "heldout": ["code", "prose"],
    }
    assert all(path.is_file() for texts in demo.texts.values() for path in texts.values())


def test_demo_recipes_load_and_point_at_the_models(demo) -> None:
    from mergetui.recipe.io import load_recipe
    from mergetui.recipe.methods import METHODS
    from mergetui.recipe.validate import validate_recipe

    methods = {}
    for name, path in demo.recipes.items():
        assert path.parent == demo.recipes_dir
        recipe = load_recipe(path)
        methods[name] = recipe.method
        assert recipe.method in METHODS
        assert recipe.output == f"../merges/{name}"  # relative to the recipe file
        assert (path.parent / recipe.output).resolve() == demo.merges_dir / name
        for entry in recipe.models.values():
            folder = (path.parent / entry.source).resolve()
            assert folder in demo.models.values() and (folder / "config.json").is_file()
        if recipe.base is not None:
            assert recipe.base in recipe.models
    assert methods == {
        "task-arithmetic": "task_arithmetic",
        "linear-soup": "linear",
        "slerp-gradient": "slerp",
        "ties": "ties",
        "dare-ties": "dare_ties",
        "passthrough-stack": "passthrough",
        "evolve": "task_arithmetic",
    }
    assert load_recipe(demo.recipes["dare-ties"]).seed == 42
    assert set(load_recipe(demo.recipes["ties"]).models) == {"base", "prose", "code"}
    for path in demo.recipes.values():
        # Checked against the checkpoints themselves: tensor names, shapes, layer ranges.
        problems = validate_recipe(load_recipe(path))
        assert problems == [], (path.name, problems)
    stack = load_recipe(demo.recipes["passthrough-stack"])
    assert [s.sources[0].layer_range for s in stack.slices] == [(0, 4), (2, 6)]
    slerp = load_recipe(demo.recipes["slerp-gradient"])
    assert [c.filter for c in slerp.parameters["t"]] == ["self_attn", "mlp", None]
    assert set(slerp.models) == {"prose", "code"}


def test_demo_search_recipe_reads_as_a_search_over_the_calibration_texts(demo) -> None:
    from mergetui.recipe.io import load_recipe
    from mergetui.search.spec import load_search_spec

    path = demo.recipes["evolve"]
    search = load_recipe(path).search
    assert search is not None
    assert {k: search[k] for k in ("parameters", "layer_groups", "smooth", "budget", "seed")} == {
        "parameters": ["weight"],
        "layer_groups": 4,
        "smooth": True,
        "budget": 48,
        "seed": 0,
    }
    spec = load_search_spec(path)
    assert spec.parameters == ("weight",) and spec.recipe.base == "base"
    assert [o.kind for o in spec.objectives] == ["perplexity", "perplexity"]
    assert [o.path for o in spec.objectives] == [
        demo.texts["calib"]["prose"],
        demo.texts["calib"]["code"],
    ]
    # The search starts from the plain equal-weight merge (recipes/task-arithmetic.toml).
    plain = load_recipe(demo.recipes["task-arithmetic"])
    assert {n: m.parameters for n, m in spec.recipe.models.items()} == {
        n: m.parameters for n, m in plain.models.items()
    }


def test_existing_demo_is_reused(demo) -> None:
    from mergetui.demo import make_demo

    weights = demo.models["prose"] / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = make_demo(demo.directory)
    assert not again.created
    assert again.models == demo.models and again.recipes == demo.recipes
    assert weights.stat().st_mtime_ns == before


def test_interrupted_demo_is_rebuilt_and_force_keeps_other_files(tmp_path: Path) -> None:
    from mergetui.demo import DEMO_MARKER, make_demo
    from mergetui.errors import UserError

    target = tmp_path / "demo"
    first = make_demo(target)
    weights = first.models["code"] / "model.safetensors"
    # No marker: a run that stopped half-way. It is rebuilt without --force.
    (target / DEMO_MARKER).unlink()
    weights.write_bytes(b"half-written")
    rebuilt = make_demo(target)
    assert rebuilt.created and weights.stat().st_size > 1000

    (target / "notes.txt").write_text("mine")
    forced = make_demo(target, force=True)
    assert forced.created and (target / "notes.txt").read_text() == "mine"
    assert not list(target.glob(".demo-build-*"))

    stranger = tmp_path / "someone-else"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not empty") as caught:
        make_demo(stranger)
    assert "--force" in caught.value.fix
    assert sorted(p.name for p in stranger.iterdir()) == ["thesis.tex"]


def test_demo_command_writes_and_prints_next_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cli_main
) -> None:
    main = cli_main
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--no-tui"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "mergetui-demo" / "base" / "model.safetensors").is_file()
    assert "Wrote the demo" in out and "Next, try" in out
    assert "cd mergetui-demo\n" in out and "mergetui merge recipes/task-arithmetic.toml\n" in out
    assert "heldout/prose.txt" in out and "recipes/evolve.toml" in out

    assert main(["demo", "--no-tui"]) == 0
    assert "Reusing the demo" in capsys.readouterr().out


def test_demo_command_opens_the_app_when_there_is_one(
    demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cli_main
) -> None:
    import sys
    import types

    main = cli_main

    opened: list[tuple[Path, Path, list[Path]]] = []
    fake_app = types.ModuleType("mergetui.tui.app")
    fake_app.run_app = lambda recipe_path, models_dirs=(): (
        opened.append((recipe_path, Path.cwd(), models_dirs)) or 0
    )
    monkeypatch.setitem(sys.modules, "mergetui.tui.app", fake_app)
    monkeypatch.chdir(demo.directory.parent)  # restored after the test; the command changes it

    assert main(["demo", "--dir", str(demo.directory)]) == 0
    # Opened on the gradient recipe, from the demo folder so that merges land in its merges/.
    # The demo folder is listed on the Checkpoints screen from the start.
    assert opened == [(demo.recipes["slerp-gradient"], demo.directory, [demo.directory])]
    assert "Next, try" not in capsys.readouterr().out
    assert main(["demo", "--dir", str(demo.directory), "--no-tui"]) == 0
    assert len(opened) == 1 and "Next, try" in capsys.readouterr().out

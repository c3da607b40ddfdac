"""What comes with the weights: config, generation config, tokenizer and chat template, model card,
and the recipe itself; and the merged folder loads and generates with transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mergetui.errors import UserError
from mergetui.merge.chat_templates import NAMED_TEMPLATES
from mergetui.merge.output import build_output_config, dtype_config_key
from mergetui.merge.plan import make_plan
from mergetui.merge.runner import run_merge
from mergetui.recipe.io import load_recipe
from mergetui.recipe.methods import METHODS
from mergetui.recipe.model import ModelEntry, Recipe, Slice, SliceSource
from mergetui.recipe.yaml_import import loads_yaml


def _ties(family: dict[str, Path], **kwargs: object) -> Recipe:
    return Recipe(
        method="ties",
        base="base",
        models={
            "base": ModelEntry("base", str(family["base"])),
            "a": ModelEntry("a", str(family["a"]), parameters={"weight": 0.6, "density": 0.5}),
            "b": ModelEntry("b", str(family["b"]), parameters={"weight": 0.4, "density": 0.5}),
        },
        **kwargs,
    )


@pytest.fixture(scope="module")
def ties_output(llama_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ties") / "merged-ties"
    run_merge(make_plan(_ties(llama_family, dtype="bfloat16", seed=7), out=out))
    return out


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    block = card.split("---\n")[1]
    return yaml.safe_load(block)


def test_folder_contents(ties_output: Path, llama_family: dict[str, Path]) -> None:
    names = {p.name for p in ties_output.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "mergetui.toml",
        "mergekit_config.yml",
    } <= names
    assert (ties_output / "generation_config.json").read_text() == (
        llama_family["base"] / "generation_config.json"
    ).read_text()
    assert (ties_output / "tokenizer.json").read_bytes() == (
        llama_family["base"] / "tokenizer.json"
    ).read_bytes()


def test_config_dtype_key_matches_installed_transformers(ties_output: Path) -> None:
    config = json.loads((ties_output / "config.json").read_text())
    key = dtype_config_key()
    assert key == "dtype"  # transformers 5 in this environment
    assert config[key] == "bfloat16"
    assert "torch_dtype" not in config
    assert config["num_hidden_layers"] == 4
    assert config["vocab_size"] == 384


def test_model_card(ties_output: Path) -> None:
    card = (ties_output / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "transformers"
    assert front["tags"] == ["mergetui", "merge"]
    assert "base_model" not in front  # local folders are not Hub ids
    assert f"[TIES]({METHODS['ties'].paper})" in card
    assert "**base**" in card and "**a**" in card and "**b**" in card
    assert "```toml" in card and 'method = "ties"' in card
    assert "```yaml" in card and "merge_method: ties" in card
    assert "* random seed 7" in card


def test_recipe_copies_reload(ties_output: Path, llama_family: dict[str, Path]) -> None:
    saved = load_recipe(ties_output / "mergetui.toml")
    assert saved.method == "ties" and saved.base == "base" and saved.seed == 7
    assert saved.models["a"].parameters == {"weight": 0.6, "density": 0.5}
    assert Path(saved.models["a"].source) == llama_family["a"].resolve()
    from_yaml = loads_yaml((ties_output / "mergekit_config.yml").read_text())
    assert from_yaml.method == "ties"
    assert {Path(m.source) for m in from_yaml.models.values()} == {
        llama_family[n].resolve() for n in ("base", "a", "b")
    }
    from mergekit.config import MergeConfiguration

    parsed = MergeConfiguration.model_validate(
        yaml.safe_load((ties_output / "mergekit_config.yml").read_text())
    )
    assert parsed.merge_method == "ties"


def test_output_loads_and_generates(ties_output: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(ties_output))
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(str(ties_output))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>assistant" in prompt
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


def test_hub_models_are_listed_as_base_model(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo, folder in (
        ("acme/base-7b", llama_family["base"]),
        ("acme/chat-7b", llama_family["a"]),
    ):
        repo_dir = cache / ("models--" + repo.replace("/", "--"))
        shutil.copytree(folder, repo_dir / "snapshots" / commit)
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    recipe = Recipe(
        method="slerp",
        base="base",
        models={
            "base": ModelEntry("base", "acme/base-7b"),
            "chat": ModelEntry("chat", "acme/chat-7b"),
        },
        parameters={"t": 0.5},
    )
    out = tmp_path / "out"
    run_merge(make_plan(recipe, out=out))
    card = (out / "README.md").read_text()
    front = _front_matter(card)
    assert front["base_model"] == ["acme/base-7b", "acme/chat-7b"]
    assert front["base_model_relation"] == "merge"
    assert "https://huggingface.co/acme/chat-7b" in card
    saved = load_recipe(out / "mergetui.toml")
    assert saved.models["chat"].source == "acme/chat-7b"  # Hub ids are kept as they are


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_named_chat_template(name: str, llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = _ties(llama_family, chat_template=name)
    out = tmp_path / name
    run_merge(make_plan(recipe, out=out))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template == NAMED_TEMPLATES[name]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    marker = "<|im_start|>user\nhi<|im_end|>" if name == "chatml" else "<|start_header_id|>user"
    assert marker in text


def test_literal_and_bad_chat_templates(llama_family: dict[str, Path], tmp_path: Path) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    out = tmp_path / "literal"
    run_merge(make_plan(_ties(llama_family, chat_template=template), out=out))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert (
        tokenizer.apply_chat_template([{"role": "user", "content": "yo"}], tokenize=False)
        == "[user] yo\n"
    )
    with pytest.raises(UserError) as info:
        make_plan(_ties(llama_family, chat_template="no-such-template"), out=tmp_path / "bad")
    assert "chatml" in (info.value.fix or "")


def test_auto_chat_template_takes_the_inputs_one(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "auto"
    run_merge(make_plan(_ties(llama_family, chat_template="auto"), out=out))
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(str(llama_family["base"]))
    merged = AutoTokenizer.from_pretrained(str(out))
    assert merged.chat_template.strip() == source.chat_template.strip()


def test_qwen2_stack_rebuilds_layer_types_and_loads(
    tiny_model_factory: object, tmp_path: Path
) -> None:
    qwen = tiny_model_factory("qwen2")  # type: ignore[operator]
    recipe = Recipe(
        method="passthrough",
        models={"q": ModelEntry("q", str(qwen))},
        slices=[Slice([SliceSource("q", (0, 3))]), Slice([SliceSource("q", (1, 4))])],
    )
    out = tmp_path / "dus"
    run_merge(make_plan(recipe, out=out))
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    assert len(config["layer_types"]) == 6
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert len(model.model.layers) == 6
    import torch

    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_build_output_config_per_layer_lists() -> None:
    donor = {"num_hidden_layers": 3, "layer_types": ["a", "b", "c"], "vocab_size": 10}
    other = {"num_hidden_layers": 3, "layer_types": ["x", "y", "z"]}
    config = build_output_config(
        donor,
        dtype_name="float16",
        layer_sources=[(donor, 0), (other, 2), (other, 1), (donor, 2)],
    )
    assert config["num_hidden_layers"] == 4
    assert config["layer_types"] == ["a", "z", "y", "c"]
    assert config[dtype_config_key()] == "float16"
    assert donor["num_hidden_layers"] == 3  # the donor's dict is not modified
    nested = build_output_config(
        {"text_config": {"num_hidden_layers": 2}, "model_type": "x"},
        dtype_name=None,
        layer_sources=[(donor, 0)] * 5,
    )
    assert nested["text_config"]["num_hidden_layers"] == 5


def test_unusable_tokenizer_fails_before_any_tensor(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    from mergetui.merge.events import Failed, TensorDone

    broken = tmp_path / "broken-tokenizer"
    shutil.copytree(llama_family["base"], broken)
    (broken / "tokenizer.json").write_text("{ not a tokenizer")
    recipe = _ties(dict(llama_family, base=broken), chat_template="chatml")
    events: list[object] = []
    with pytest.raises(UserError) as info:
        run_merge(make_plan(recipe, out=tmp_path / "out"), on_event=events.append)
    assert "tokenizer" in info.value.message
    assert not any(isinstance(e, TensorDone) for e in events)
    assert isinstance(events[-1], Failed)
    assert not (tmp_path / "out").exists()

"""The MoE's plain-Python paths equal transformers' own: the Mixtral config.json (as mergekit-moe
generates it through transformers' config classes) and the prompts' token ids (AutoTokenizer),
each where it applies, and a cheap_embed assembly of such models never imports transformers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mergetui.merge.moe_config import output_config, plain_mixtral_config
from mergetui.merge.moe_plan import make_moe_plan
from mergetui.merge.moe_tokenizer import HfGateTokenizer, PlainTokenizer
from mergetui.recipe.moe import loads_moe


def recipe_text(family: dict[str, Path], dtype: str | None = None) -> str:
    line = f'dtype = "{dtype}"\n' if dtype else ""
    return f"""[moe]
base = "{family["base"]}"
gate_mode = "cheap_embed"
experts_per_token = 2
{line}
[[moe.experts]]
source = "{family["a"]}"
positive_prompts = ["def parse(line):", "import os"]

[[moe.experts]]
source = "{family["b"]}"
positive_prompts = ["Once upon a time there was"]
negative_prompts = ["hello"]

[[moe.experts]]
source = "{family["c"]}"
positive_prompts = ["The weather today"]
"""


def plan_for(family: dict[str, Path], tmp_path: Path, dtype: str | None = None) -> Any:
    recipe = loads_moe(recipe_text(family, dtype), "toml")
    return make_moe_plan(recipe, recipe_dir=tmp_path, out=tmp_path / "out")


def with_base_config(plan: Any, config: dict[str, Any], folder: Path) -> Any:
    """The plan with the base's config replaced (on disk too: transformers reads it there)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    base = dataclasses.replace(plan.models["base"], path=folder, config=config)
    return dataclasses.replace(plan, models={**plan.models, "base": base})


def transformers_config(plan: Any) -> dict[str, Any]:
    return json.loads(output_config(plan).to_json_string())


def llama_variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    return {
        "as saved": config,
        "eos list, no bos, a pad": {**config, "eos_token_id": [2, 3], "bos_token_id": None},
        "tied, theta 5e5, own head_dim": {
            **config,
            "tie_word_embeddings": True,
            "rope_parameters": rope,
            "head_dim": 2 * config["head_dim"],
        },
        "no dtype, a name": {
            **{k: v for k, v in config.items() if k != "dtype"},
            "_name_or_path": "org/x",
        },
        "bias, tp 2": {**config, "attention_bias": True, "mlp_bias": True, "pretraining_tp": 2},
    }


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_plain_mixtral_config_equals_transformers(
    llama_family: dict[str, Path], tiny_model_factory, tmp_path: Path, dtype: str | None
) -> None:
    plan = plan_for(llama_family, tmp_path, dtype)
    base = json.loads((llama_family["base"] / "config.json").read_text())
    variants = llama_variants(base)
    mistral = tiny_model_factory("mistral", seed=0)
    mistral_config = json.loads((mistral / "config.json").read_text())
    variants["mistral"] = mistral_config
    variants["mistral, window 32"] = {**mistral_config, "sliding_window": 32}
    for name, config in variants.items():
        varied = with_base_config(plan, config, tmp_path / name.replace(" ", "_"))
        plain = plain_mixtral_config(varied)
        assert plain is not None, name
        assert plain == transformers_config(varied), name


def test_other_configs_go_through_transformers(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    """Legacy keys (rope_theta, torch_dtype), a missing field, an unknown key, another rope type:
    transformers rewrites those, so the plain path declines and transformers writes them."""
    plan = plan_for(llama_family, tmp_path)
    base = json.loads((llama_family["base"] / "config.json").read_text())
    legacy = {k: v for k, v in base.items() if k not in ("rope_parameters", "dtype")}
    variants = {
        "rope_theta": {**legacy, "rope_theta": 10000.0, "dtype": base["dtype"]},
        "torch_dtype": {
            **legacy,
            "rope_parameters": base["rope_parameters"],
            "torch_dtype": "float32",
        },
        "no head_dim": {k: v for k, v in base.items() if k != "head_dim"},
        "unknown key": {**base, "output_attentions": True},
        "linear rope": {
            **base,
            "rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
        },
    }
    for name, config in variants.items():
        varied = with_base_config(plan, config, tmp_path / name.replace(" ", "_"))
        assert plain_mixtral_config(varied) is None, name
        transformers_config(varied)  # and transformers takes it


def test_plain_tokenizer_gives_transformers_ids(llama_family: dict[str, Path]) -> None:
    import torch

    folder = llama_family["base"]
    plain = PlainTokenizer.open(folder)
    assert plain is not None
    hf = HfGateTokenizer(folder)
    for prompts in (["def parse(line):", "import os"], ["a", "Once upon a time there was"]):
        ours, theirs = plain.encode(prompts), hf.encode(prompts)
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(ours[key], theirs[key]), (prompts, key)
        assert ours["input_ids"][1, 0] == hf.tokenizer.bos_token_id  # padded on the left


def test_plain_tokenizer_declines_what_transformers_would_change(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    source = llama_family["base"]
    config = json.loads((source / "tokenizer_config.json").read_text())
    cases = {
        "slow class": {**config, "tokenizer_class": "LlamaTokenizer"},
        "unknown key": {**config, "add_prefix_space": True},
        "token not in vocabulary": {**config, "bos_token": "<s-new>"},
    }
    for name, changed in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
        (folder / "tokenizer_config.json").write_text(json.dumps(changed))
        assert PlainTokenizer.open(folder) is None, name


def test_cheap_embed_assembly_never_imports_transformers(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = tmp_path / "moe.toml"
    recipe.write_text(recipe_text(llama_family, "bfloat16"))
    code = (
        "import sys\n"
        "from mergetui.cli import main\n"
        f"code = main(['merge', {str(recipe)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "print(code, 'transformers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr[-2000:]
    import transformers

    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert loaded.pad_token_id == loaded.bos_token_id
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
    assert config.num_local_experts == 3 and config.model_type == "mixtral"


def test_which_tokenizer_each_base_gets(
    llama_family: dict[str, Path], tiny_model_factory, tmp_path: Path
) -> None:
    """A llama base's plain tokenizer for cheap_embed; transformers' for hidden gates (they load
    the model through it anyway) and for a qwen2 base (AutoTokenizer substitutes its own class)."""
    from mergetui.merge.moe_tokenizer import load_gate_tokenizer

    plan = plan_for(llama_family, tmp_path)
    assert isinstance(load_gate_tokenizer(plan), PlainTokenizer)
    hidden = dataclasses.replace(plan.recipe, gate_mode="hidden")
    assert isinstance(
        load_gate_tokenizer(dataclasses.replace(plan, recipe=hidden)), HfGateTokenizer
    )
    qwen = tiny_model_factory("qwen2", seed=0)
    family = {"base": qwen, "a": tiny_model_factory("qwen2", seed=1, base=qwen)}
    text = recipe_text({**family, "b": qwen, "c": family["a"]}).replace(
        "[[moe.experts]]",
        '[[moe.shared_experts]]\nsource = "' + str(qwen) + '"\n'
        'positive_prompts = ["hello"]\n\n[[moe.experts]]',
        1,
    )
    recipe = loads_moe(text, "toml")
    qwen_plan = make_moe_plan(recipe, recipe_dir=tmp_path, out=tmp_path / "qwen")
    assert PlainTokenizer.open(qwen) is not None  # its files alone would qualify
    assert isinstance(load_gate_tokenizer(qwen_plan), HfGateTokenizer)

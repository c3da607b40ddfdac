"""The demo family is trained, and merging it matters (issue 15, section 1).

On the shipped family, measured as `mergetui eval` and `mergetui chat` do (mergetui.chat): each
fine-tune is clearly better than the other on its own domain's held-out text; the equal-weight task
arithmetic merge, made by the real engine from the demo's own recipe, has a lower mean perplexity
over both held-out texts than either parent; greedy replies read like prose or code. The training
code itself runs (a short, seeded run of a smaller family) and reproduces the shipped tokenizer.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergetui.demo.corpus import DOMAINS, TRAIN_SPLITS, corpus_text
from mergetui.demo.family import FAMILY_MODELS, FAMILY_SHAPE, tokenizer_json_path

PROMPTS = {
    "prose": "Describe how the interpreter looks up a name.",
    "code": "def read_config(path):",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from mergetui.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("family") / "demo")


@pytest.fixture(scope="module")
def merged(demo) -> Path:
    """The demo's task-arithmetic recipe (equal weights, base as base), merged by the engine."""
    from mergetui.merge.plan import make_plan
    from mergetui.merge.runner import run_merge
    from mergetui.recipe.io import load_recipe

    recipe = load_recipe(demo.recipes["task-arithmetic"])
    assert recipe.method == "task_arithmetic" and recipe.base == "base"
    weights = {name: entry.parameters.get("weight") for name, entry in recipe.models.items()}
    assert weights.pop("base") is None and len(set(map(str, weights.values()))) == 1
    out = demo.merges_dir / "task-arithmetic"
    run_merge(make_plan(recipe, out=out))
    return out


def _load(folder: Path):
    from mergetui.chat.loader import load_for_chat

    return load_for_chat(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def scores(demo, merged) -> dict[str, dict[str, float]]:
    """Perplexity of every model on each domain's held-out text (as `mergetui eval --text`)."""
    from mergetui.chat.perplexity import perplexity, read_text

    folders = {**demo.models, "merged": merged}
    texts = {domain: read_text(demo.texts["heldout"][domain])[0] for domain in DOMAINS}
    table: dict[str, dict[str, float]] = {}
    for name, folder in folders.items():
        loaded = _load(folder)
        table[name] = {d: perplexity(loaded, text).perplexity for d, text in texts.items()}
        loaded.unload()
    return table


SEEDS = (0, 1, 2)


def _replies(folder: Path, prompt: str) -> list[str]:
    """Replies with the Chat screen's default sampling, one per seed (tiny models loop when greedy)."""
    from mergetui.chat.generate import GenerationSettings, generate_reply
    from mergetui.chat.prompt import Message

    loaded = _load(folder)
    replies = [
        generate_reply(
            loaded, [Message("user", prompt)], GenerationSettings(seed=seed, max_new_tokens=80)
        ).text
        for seed in SEEDS
    ]
    loaded.unload()
    return replies


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text.lower())


@cache
def _prose_vocabulary() -> frozenset[str]:
    return frozenset(w for split in TRAIN_SPLITS for w in _words(corpus_text("prose", split)))


def _reads_like_prose(text: str) -> bool:
    """Sentences of words: at least six, most of them words of the prose corpus, no code."""
    words = _words(text)
    known = sum(word in _prose_vocabulary() for word in words)
    return len(words) >= 6 and known >= 0.75 * len(words) and not _reads_like_code(text)


def _reads_like_code(text: str) -> bool:
    """Python-shaped: a line opening a block (ending in ':') followed by an indented line."""
    lines = text.splitlines()
    return any(
        line.rstrip().endswith(":") and following.startswith("    ")
        for line, following in zip(lines, lines[1:], strict=False)
    )


def _mostly(check, replies: list[str]) -> bool:
    return sum(map(check, replies)) >= 2


def test_the_family_is_one_llama_shape_in_bfloat16(demo) -> None:
    from mergetui.checkpoints.inspect import open_checkpoint

    assert tuple(demo.models) == FAMILY_MODELS == ("base", "prose", "code")
    checkpoints = {name: open_checkpoint(folder) for name, folder in demo.models.items()}
    base = checkpoints["base"]
    assert base.num_layers == FAMILY_SHAPE.num_layers
    assert base.hidden_size == FAMILY_SHAPE.hidden_size
    assert base.vocab_size == FAMILY_SHAPE.vocab_size
    assert base.dtypes == {"BF16": len(base.tensors)}
    config = json.loads((demo.models["base"] / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"]
    base_weights = load_file(str(demo.models["base"] / "model.safetensors"))
    for name in ("prose", "code"):
        assert checkpoints[name].has_chat_template and checkpoints[name].has_tokenizer
        weights = load_file(str(demo.models[name] / "model.safetensors"))
        assert set(weights) == set(base_weights)
        changed = [k for k in weights if not torch.equal(weights[k], base_weights[k])]
        assert len(changed) == len(weights), name  # fine-tuned everywhere, not noise on a few


def test_texts_are_held_out_of_training(demo) -> None:
    for folder in ("calib", "heldout"):
        for domain in DOMAINS:
            path = demo.texts[folder][domain]
            assert path == demo.directory / folder / f"{domain}.txt"
            assert path.read_text(encoding="utf-8") == corpus_text(domain, folder)
            assert 4_000 < path.stat().st_size < 20_000
    for domain in DOMAINS:
        train = "".join(corpus_text(domain, split) for split in TRAIN_SPLITS)
        calib = corpus_text(domain, "calib")
        for block in corpus_text(domain, "heldout").split("\n\n"):
            if len(block.strip()) > 80:  # a paragraph or a definition
                assert block.strip() not in train and block.strip() not in calib, block[:60]


def test_each_fine_tune_is_clearly_better_on_its_own_domain(scores) -> None:
    assert scores["prose"]["prose"] < 0.85 * scores["code"]["prose"]
    assert scores["code"]["code"] < 0.85 * scores["prose"]["code"]
    # Each fine-tune forgot some of the other domain: what a merge can give back.
    assert scores["prose"]["code"] > 1.1 * scores["base"]["code"]
    assert scores["code"]["prose"] > 1.1 * scores["base"]["prose"]


def test_the_equal_weight_merge_beats_both_parents_on_the_mean(scores) -> None:
    def mean(name: str) -> float:
        return sum(scores[name].values()) / len(DOMAINS)

    assert mean("merged") < min(mean("prose"), mean("code"))
    # It keeps most of each specialist: far closer to it than the other parent is.
    assert scores["merged"]["prose"] < scores["code"]["prose"]
    assert scores["merged"]["code"] < scores["prose"]["code"]


def test_chat_replies_read_like_prose_or_code(demo, merged) -> None:
    prose = _replies(demo.models["prose"], PROMPTS["prose"])
    assert _mostly(_reads_like_prose, prose), prose
    code = _replies(demo.models["code"], PROMPTS["code"])
    assert _mostly(_reads_like_code, code), code
    # The merge answers each domain in kind.
    merged_code = _replies(merged, PROMPTS["code"])
    assert _mostly(_reads_like_code, merged_code), merged_code
    merged_prose = _replies(merged, PROMPTS["prose"])
    assert _mostly(_reads_like_prose, merged_prose), merged_prose


def test_the_shipped_tokenizer_is_what_the_training_code_trains() -> None:
    from mergetui.demo.train import train_family_tokenizer

    shipped = json.loads(tokenizer_json_path().read_text(encoding="utf-8"))
    trained = json.loads(train_family_tokenizer(FAMILY_SHAPE.vocab_size))
    assert trained["model"]["vocab"] == shipped["model"]["vocab"]
    assert trained["model"]["merges"] == shipped["model"]["merges"]


def test_a_short_seeded_training_run_makes_a_family(tmp_path: Path) -> None:
    from mergetui.chat.perplexity import perplexity
    from mergetui.demo.train import QUICK, QUICK_SHAPE, train_family

    messages: list[str] = []
    folders = train_family(tmp_path / "quick", QUICK, QUICK_SHAPE, on_progress=messages.append)
    assert list(folders) == list(FAMILY_MODELS)
    assert any(m.startswith("code: step") for m in messages)
    heldout = {d: corpus_text(d, "heldout")[:3000] for d in DOMAINS}
    ppl = {}
    for name, folder in folders.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["num_hidden_layers"] == QUICK_SHAPE.num_layers
        loaded = _load(folder)
        ppl[name] = {d: perplexity(loaded, text).perplexity for d, text in heldout.items()}
        loaded.unload()
    # Even this short run specialises each fine-tune.
    assert ppl["prose"]["prose"] < ppl["code"]["prose"]
    assert ppl["code"]["code"] < ppl["prose"]["code"]
    # Seeded: the same settings give the same weights.
    again = train_family(tmp_path / "again", QUICK, QUICK_SHAPE)
    first = load_file(str(folders["code"] / "model.safetensors"))
    second = load_file(str(again["code"] / "model.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)

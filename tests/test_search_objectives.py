"""The objectives a search minimises, on a tiny real Llama: perplexity as `chat.perplexity` scores
it, completions by hand, a custom lm-eval task from a folder, and every bad input located."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from mergetui.chat.loader import LoadedModel, load_for_chat
from mergetui.chat.perplexity import perplexity
from mergetui.errors import UserError
from mergetui.resources import sample_text
from mergetui.search.objectives import (
    CompletionsScorer,
    LmEvalScorer,
    PerplexityScorer,
    load_scorer,
    oriented_metric,
)
from mergetui.search.spec import Objective


@pytest.fixture(scope="module")
def loaded(llama_family: dict[str, Path]) -> LoadedModel:
    return load_for_chat(llama_family["a"], device="cpu", dtype="float32")


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def _completions(path: Path) -> Objective:
    return Objective("completions", f"completions:{path.name}", 1.0, path=path)


# -- perplexity ----------------------------------------------------------------------------------


def test_perplexity_is_the_log_of_chat_perplexity(loaded: LoadedModel, tmp_path: Path) -> None:
    text = sample_text()[:600]
    path = tmp_path / "prose.txt"
    path.write_text(text, encoding="utf-8")
    scorer = load_scorer(Objective("perplexity", "perplexity:prose.txt", 1.0, path=path))
    assert isinstance(scorer, PerplexityScorer)
    scorer.prepare(loaded)
    expected = perplexity(loaded, text, overlap=False)
    assert scorer.score(loaded) == pytest.approx(math.log(expected.perplexity), rel=1e-12)
    assert 1.0 < scorer.score(loaded) < 20.0  # a mean NLL per token, not a perplexity


def test_perplexity_of_a_long_text_uses_back_to_back_windows(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    """Longer than the window: scored as lm-eval's rolling windows (overlap=False), every
    token once, not with `mergetui eval`'s overlapping windows."""
    from mergetui.chat.perplexity import MAX_WINDOW

    window = min(loaded.context_length, MAX_WINDOW)
    text = sample_text()
    while len(loaded.tokenizer(text)["input_ids"]) < 3 * window:
        text += "\n" + sample_text()
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    scorer = load_scorer(Objective("perplexity", "perplexity:long.txt", 1.0, path=path))
    scorer.prepare(loaded)
    back_to_back = perplexity(loaded, text, overlap=False)
    overlapping = perplexity(loaded, text)
    assert back_to_back.tokens == overlapping.tokens  # every token once, either way
    assert scorer.score(loaded) == pytest.approx(math.log(back_to_back.perplexity), rel=1e-12)
    assert scorer.score(loaded) != pytest.approx(math.log(overlapping.perplexity), rel=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such text file"), ("  \n", "the text file is empty")],
)
def test_a_bad_text_is_refused(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "text.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as caught:
        load_scorer(Objective("perplexity", "perplexity:text.txt", 1.0, path=path))
    assert caught.value.where == str(path)


# -- completions ---------------------------------------------------------------------------------


def _by_hand(loaded: LoadedModel, prompt: str, completion: str) -> float:
    """Mean NLL of the completion's tokens, one unpadded forward pass of prompt + completion."""
    tokenizer, model = loaded.tokenizer, loaded.model
    context = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + completion)["input_ids"]
    assert ids[: len(context)] == context  # these lines split cleanly at the seam
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    log_probs = torch.log_softmax(logits[:-1], dim=-1)
    nll = -log_probs.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    return float(nll[len(context) - 1 :].double().mean())


def test_completions_score_each_line_given_its_prompt(loaded: LoadedModel, tmp_path: Path) -> None:
    lines = [
        {"prompt": "The cat sat on the", "completion": " mat."},
        {"prompt": "def add(a, b):", "completion": "\n    return a + b\n"},
        {"prompt": "Once upon a time there was a", "completion": " little house by the river."},
    ]
    path = _write(
        tmp_path / "c.jsonl", [lines[0], "", lines[1], lines[2]]
    )  # a blank line is skipped
    scorer = load_scorer(_completions(path))
    assert isinstance(scorer, CompletionsScorer)
    scorer.prepare(loaded)
    # lines of different lengths share a padded batch; each counts once, however long
    expected = sum(_by_hand(loaded, x["prompt"], x["completion"]) for x in lines) / len(lines)
    assert scorer.score(loaded) == pytest.approx(expected, rel=1e-5)


def test_a_prompt_longer_than_the_window_is_cut_on_the_left(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    prompt = "word " * 400  # far past the tiny model's 128 positions
    path = _write(tmp_path / "long.jsonl", [{"prompt": prompt, "completion": "end of it"}])
    scorer = load_scorer(_completions(path))
    scorer.prepare(loaded)
    assert math.isfinite(scorer.score(loaded))
    (encoded,) = scorer.encoded
    assert len(encoded.ids) == loaded.context_length


def test_a_trailing_space_moves_to_the_completion(loaded: LoadedModel, tmp_path: Path) -> None:
    spaced = _write(tmp_path / "a.jsonl", [{"prompt": "The cat sat on the ", "completion": "mat"}])
    plain = _write(tmp_path / "b.jsonl", [{"prompt": "The cat sat on the", "completion": " mat"}])
    scores = []
    for path in (spaced, plain):
        scorer = load_scorer(_completions(path))
        scorer.prepare(loaded)
        scores.append(scorer.score(loaded))
    assert scores[0] == scores[1]


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        ('{"prompt": "a", "completion": ', "not valid JSON"),
        ('["prompt", "completion"]', "a JSON list, not an object"),
        ('{"prompt": "a"}', 'the line has no "completion"'),
        ('{"completion": "a"}', 'the line has no "prompt"'),
        ('{"prompt": 3, "completion": "a"}', '"prompt" is not a string'),
        ('{"prompt": "a", "completion": ""}', '"completion" is empty'),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(
    tmp_path: Path, second_line: str, message: str
) -> None:
    path = _write(tmp_path / "c.jsonl", [{"prompt": "x", "completion": "y"}, "", second_line])
    with pytest.raises(UserError, match=message) as caught:
        load_scorer(_completions(path))
    assert caught.value.where == f"{path}:3"


def test_an_empty_completions_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", ["", "   "])
    with pytest.raises(UserError, match="has no lines"):
        load_scorer(_completions(path))


def test_a_completion_longer_than_the_window_is_refused(
    loaded: LoadedModel, tmp_path: Path
) -> None:
    path = _write(
        tmp_path / "c.jsonl",
        [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": " word" * 300}],
    )
    scorer = load_scorer(_completions(path))
    with pytest.raises(UserError, match="longer than the model's window") as caught:
        scorer.prepare(loaded)
    assert caught.value.where == f"{path}:2"


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(UserError, match="unknown objective kind 'bleu'"):
        load_scorer(Objective("bleu", "bleu:x", 1.0))


# -- lm-eval -------------------------------------------------------------------------------------

CHOICE_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
ROLLING_TASK = """task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{question}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
"""
DOCS = [
    {"question": "The cat sat on the", "choices": [" mat", " pizza"], "answer": 0},
    {"question": "def f(x):\n    return", "choices": [" x", " the"], "answer": 0},
    {"question": "One, two,", "choices": [" three", " blue"], "answer": 1},
]


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed")
    folder = tmp_path_factory.mktemp("tasks")
    data = _write(folder / "docs.jsonl", DOCS)  # a local file: nothing is downloaded
    (folder / "choice.yaml").write_text(CHOICE_TASK.format(data=data), encoding="utf-8")
    (folder / "rolling.yaml").write_text(ROLLING_TASK.format(data=data), encoding="utf-8")
    return folder


def _reference(loaded: LoadedModel, folder: Path, task: str) -> dict[str, Any]:
    """lm-eval run as its own docs show it, on the same model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=8)
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    results = simple_evaluate(model=lm, tasks=[task], task_manager=manager, bootstrap_iters=0)
    assert results is not None
    return results["results"][task]


def test_lm_eval_scores_a_custom_task_lower_is_better(
    loaded: LoadedModel, task_folder: Path
) -> None:
    choice = load_scorer(
        Objective("lm_eval", "lm_eval:tiny_choice", 1.0, task="tiny_choice", task_path=task_folder)
    )
    rolling = load_scorer(
        Objective(
            "lm_eval",
            "lm_eval:tiny_rolling",
            1.0,
            task="tiny_rolling",
            task_path=task_folder,
            metric="word_perplexity",
        )
    )
    assert isinstance(choice, LmEvalScorer) and isinstance(rolling, LmEvalScorer)
    choice.prepare(loaded)
    rolling.prepare(loaded)
    accuracy = choice.score(loaded)
    word_perplexity = rolling.score(loaded)
    # accuracy: higher is better, so the score is its negative; a perplexity is kept as it is
    assert accuracy == -_reference(loaded, task_folder, "tiny_choice")["acc,none"]
    assert -1.0 <= accuracy <= 0.0
    assert word_perplexity == pytest.approx(
        _reference(loaded, task_folder, "tiny_rolling")["word_perplexity,none"], rel=1e-6
    )
    assert word_perplexity > 1.0
    assert choice.score(loaded) == accuracy  # the same model scores the same again


def test_lm_eval_refuses_an_unknown_task(loaded: LoadedModel, task_folder: Path) -> None:
    scorer = load_scorer(
        Objective("lm_eval", "lm_eval:nope", 1.0, task="no_such_task_here", task_path=task_folder)
    )
    with pytest.raises(UserError, match="lm-eval knows no task 'no_such_task_here'"):
        scorer.prepare(loaded)


def test_lm_eval_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "lm_eval" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError) as caught:
        load_scorer(Objective("lm_eval", "lm_eval:x", 1.0, task="x"))
    assert "not installed" in caught.value.message
    assert caught.value.fix == "pip install 'mergetui[lm-eval]'"


def test_lm_eval_needs_a_task_and_an_existing_folder(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed")
    with pytest.raises(UserError, match="names no task"):
        load_scorer(Objective("lm_eval", "lm_eval:x", 1.0))
    with pytest.raises(UserError, match="no such folder of lm-eval tasks"):
        load_scorer(Objective("lm_eval", "lm_eval:x", 1.0, task="x", task_path=tmp_path / "no"))


def test_the_metric_is_read_and_oriented_from_lm_evals_results() -> None:
    results = {
        "results": {
            "t": {
                "alias": "t",
                "name": "t",
                "acc,none": 0.75,
                "acc_stderr,none": "N/A",
                "perplexity,none": 12.5,
            }
        },
        "higher_is_better": {"t": {"acc": True, "perplexity": False}},
    }
    assert oriented_metric(results, "t", None, "w") == -0.75  # the task's first metric
    assert oriented_metric(results, "t", "acc,none", "w") == -0.75
    assert oriented_metric(results, "t", "perplexity", "w") == 12.5
    with pytest.raises(UserError, match="reports no metric 'f1' \\(it has acc, perplexity\\)"):
        oriented_metric(results, "t", "f1", "w")
    results["results"]["t"]["acc,none"] = float("nan")
    assert oriented_metric(results, "t", "acc", "w") == math.inf  # never NaN

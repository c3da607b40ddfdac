"""The chat core on tiny real checkpoints: prompt formatting (template and plain), loading with
progress and its failures, device choice against memory, streamed generation (incremental, stoppable,
greedy equal to transformers' own), and perplexity equal to a reference computed with transformers."""

from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path

import pytest

from mergetui.chat.generate import GenerationSettings, generate_reply
from mergetui.chat.loader import load_for_chat, resolve_checkpoint
from mergetui.chat.memory import choose_device, needed_bytes, weights_bytes
from mergetui.chat.perplexity import perplexity, read_text, sample_text, windows
from mergetui.chat.prompt import (
    PLAIN_STOPS,
    Message,
    conversation,
    format_prompt,
    plain_prompt,
    trim_at_stop,
)
from mergetui.errors import UserError

GB = 1000**3


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", seed=0)


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    return load_for_chat(model_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """The same checkpoint loaded directly with transformers."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    return model, tokenizer


# -- prompts ---------------------------------------------------------------------------------------


def test_chat_template_is_used_when_there_is_one(loaded) -> None:
    messages = conversation(
        [Message("user", "hi"), Message("assistant", "hello")], "how?", "Be brief."
    )
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    prompt = format_prompt(loaded.tokenizer, messages)
    assert prompt.templated and prompt.stop_strings == ()
    assert prompt.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nhow?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_plain_format_without_a_template(model_dir: Path, tmp_path: Path) -> None:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.chat_template = None
    prompt = format_prompt(tokenizer, conversation([], "Name a colour.", "You are terse."))
    assert not prompt.templated
    assert prompt.text == "System: You are terse.\n\nUser: Name a colour.\n\nAssistant:"
    assert prompt.stop_strings == PLAIN_STOPS
    assert plain_prompt([Message("user", " x ")]) == "User: x\n\nAssistant:"
    assert trim_at_stop("Blue.\nUser: and?", PLAIN_STOPS) == ("Blue.", True)
    assert trim_at_stop("Blue.", PLAIN_STOPS) == ("Blue.", False)


# -- loading ---------------------------------------------------------------------------------------


def test_load_reports_progress_and_describes_the_model(model_dir: Path) -> None:
    stages: list[tuple[str, float]] = []
    model = load_for_chat(model_dir, device="auto", on_progress=lambda s, f: stages.append((s, f)))
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert any(s == "loading the weights" and 0.1 < f < 0.95 for s, f in stages)
    assert model.device == "cpu" and model.dtype == "float32"
    assert model.context_length == 128 and model.has_chat_template
    assert model.weights_bytes == weights_bytes(model_dir) > 0
    assert "chat template" in model.describe() and model.name == model_dir.name


def test_load_failures_say_why(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(UserError, match="no such checkpoint folder"):
        load_for_chat(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_for_chat(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UserError):
        load_for_chat(broken)


def test_remote_code_is_off_unless_asked(tmp_path: Path, model_dir: Path) -> None:
    custom = tmp_path / "custom"
    shutil.copytree(model_dir, custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="my-own-arch", auto_map={"AutoModelForCausalLM": "modeling.MyModel"})
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="trust_remote_code") as caught:
        load_for_chat(custom)
    assert "trust" in (caught.value.fix or "")


def test_relative_sources_resolve_against_a_folder(model_dir: Path) -> None:
    assert resolve_checkpoint(model_dir.name, base_dir=model_dir.parent) == model_dir.resolve()


# -- memory ----------------------------------------------------------------------------------------


def test_auto_falls_back_to_the_cpu_and_says_why() -> None:
    choice = choose_device("auto", 3 * GB, free={"cuda": 2 * GB, "cpu": 16 * GB})
    assert choice.device == "cpu"
    assert "cuda has 2.0 GB free" in choice.message and "3.0 GB" in choice.message
    assert choose_device("auto", 1 * GB, free={"cuda": 2 * GB, "cpu": 16 * GB}).device == "cuda"


def test_a_model_that_fits_nowhere_is_refused_with_the_numbers() -> None:
    with pytest.raises(UserError, match="will not fit") as caught:
        choose_device("auto", 40 * GB, free={"cuda": 8 * GB, "cpu": 16 * GB})
    assert "40.0 GB" in str(caught.value) and "16.0 GB" in str(caught.value)
    with pytest.raises(UserError, match="cpu has 1.0 GB free"):
        choose_device("cpu", 2 * GB, free={"cpu": 1 * GB})
    assert needed_bytes(GB) > GB


# -- generation ------------------------------------------------------------------------------------


def test_replies_stream_token_by_token(loaded) -> None:
    updates: list[str] = []
    settings = GenerationSettings(temperature=0, max_new_tokens=40)
    reply = generate_reply(loaded, conversation([], "Hello"), settings, on_text=updates.append)
    assert len(updates) >= 5  # several updates before the end, each growing
    assert all(len(b) >= len(a) for a, b in zip(updates, updates[1:], strict=False))
    assert updates[-1].strip() == reply.text
    assert reply.tokens == 40 and reply.finish == "length" and reply.prompt_tokens > 0


def test_greedy_reply_equals_transformers_generate(loaded, reference) -> None:
    import torch

    model, tokenizer = reference
    messages = conversation([], "Tell me about the lighthouse.")
    reply = generate_reply(loaded, messages, GenerationSettings(temperature=0, max_new_tokens=24))
    text = tokenizer.apply_chat_template(
        [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert reply.text == expected.rstrip("\ufffd").strip()


def test_seeded_sampling_is_reproducible(loaded) -> None:
    settings = GenerationSettings(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=7)
    first = generate_reply(loaded, conversation([], "Hi"), settings)
    second = generate_reply(loaded, conversation([], "Hi"), settings)
    assert first.text == second.text


def test_the_stop_event_ends_a_reply_early(loaded) -> None:
    stop = threading.Event()
    updates: list[str] = []

    def on_text(text: str) -> None:
        updates.append(text)
        if len(updates) == 3:
            stop.set()

    settings = GenerationSettings(temperature=0, max_new_tokens=100)
    reply = generate_reply(loaded, conversation([], "Hello"), settings, on_text=on_text, stop=stop)
    assert reply.finish == "stopped"
    assert reply.tokens < 10


def test_settings_are_checked() -> None:
    with pytest.raises(UserError, match="top_p"):
        GenerationSettings(top_p=0).check()
    with pytest.raises(UserError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0).check()


# -- perplexity ------------------------------------------------------------------------------------


def test_perplexity_equals_transformers_on_a_short_text(loaded, reference) -> None:
    import torch

    model, tokenizer = reference
    text = "The keeper climbed the stairs and wound the clockwork before the fog came in."
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = math.exp(model(ids, labels=ids).loss.item())
    result = perplexity(loaded, text, text_name="line")
    assert result.tokens == ids.shape[1] - 1
    assert result.perplexity == pytest.approx(expected, rel=1e-5)


def test_perplexity_on_the_bundled_sample_uses_overlapping_windows(loaded, reference) -> None:
    """A text longer than the context: the reference is transformers' loss on each window with
    the already-scored tokens masked (-100), as in the transformers perplexity guide."""
    import torch

    model, tokenizer = reference
    text, name = sample_text()
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
    total, window, stride = ids.shape[1], 128, 64
    assert total > 4 * window
    nll, count, previous = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, total, stride):
            end = min(begin + window, total)
            chunk = ids[:, begin:end]
            labels = chunk.clone()
            labels[:, : -(end - previous)] = -100
            valid = int((labels[:, 1:] != -100).sum())
            nll += model(chunk, labels=labels).loss.item() * valid
            count += valid
            previous = end
            if end == total:
                break
    result = perplexity(loaded, text, text_name=name)
    assert result.tokens == count == total - 1
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert name == "bundled sample"


def test_perplexity_without_overlap_scores_back_to_back_windows(loaded, reference) -> None:
    """overlap=False (a search's objective): windows of 128 tokens, each starting on the last
    token of the one before, so every token but the first is scored once, with only its own
    window's tokens before it; the reference is transformers' loss on each window."""
    import torch

    model, tokenizer = reference
    text, _ = sample_text()
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
    total, window = ids.shape[1], 128
    nll, count, forwards = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, total - 1, window - 1):
            chunk = ids[:, begin : begin + window]
            nll += model(chunk, labels=chunk).loss.item() * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
            forwards += 1
    result = perplexity(loaded, text, window=window, overlap=False)
    overlapping = perplexity(loaded, text, window=window)
    assert result.tokens == count == total - 1
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert forwards < len(windows(total, window))  # less work than the overlapping windows
    assert result.perplexity != pytest.approx(overlapping.perplexity, rel=1e-6)


def test_perplexity_can_be_cancelled_and_texts_are_checked(loaded, tmp_path: Path) -> None:
    from mergetui.errors import CancelledError

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        perplexity(loaded, sample_text()[0], cancel=cancel)
    with pytest.raises(UserError, match="no such text file"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        read_text(tmp_path / "blank.txt")
    (tmp_path / "t.txt").write_text("hello world")
    assert read_text(tmp_path / "t.txt") == ("hello world", "t.txt")


def test_unseeded_sampling_varies_and_a_full_context_is_reported(loaded) -> None:
    settings = GenerationSettings(temperature=1.0, top_p=1.0, max_new_tokens=16)
    first = generate_reply(loaded, conversation([], "Hi"), settings)
    second = generate_reply(loaded, conversation([], "Hi"), settings)
    assert first.text != second.text  # each reply draws afresh (no frozen random state)
    long = generate_reply(
        loaded, conversation([], "Hi"), GenerationSettings(temperature=0, max_new_tokens=500)
    )
    assert long.finish == "context"
    assert long.prompt_tokens + long.tokens == loaded.context_length

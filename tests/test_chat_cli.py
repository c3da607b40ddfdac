"""`mergetui chat` and `mergetui eval` on tiny real checkpoints: a reply printed to stdout equal to
transformers' greedy generation, the perplexity table equal to a direct computation, errors as one
line with exit 1, and `chat` without --prompt opening the app on the Chat screen."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mergetui.cli import main
from mergetui.paths import CONFIG_ENV, DATA_ENV


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


def test_chat_prompt_prints_the_reply(llama_family: dict[str, Path], capsys) -> None:
    import torch
    import transformers

    model_dir = llama_family["a"]
    code = main(
        [
            "chat",
            str(model_dir),
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "16",
            "--temperature",
            "0",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert captured.out.strip() == expected.rstrip("\ufffd").strip()
    assert "16 tokens" in captured.err and "cpu" in captured.err


def test_chat_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["chat", str(tmp_path / "missing"), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert "no such checkpoint folder" in err and "Traceback" not in err
    assert main(["chat", str(tmp_path), "--prompt", "hi", "--device", "tpu"]) == 1
    assert "unknown device" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [
        ["--temperature", "nan"],
        ["--temperature", "inf"],
        ["--top-p", "nan"],
        ["--max-new-tokens", "100000000"],
    ],
)
def test_chat_refuses_non_finite_and_absurd_settings(
    llama_family: dict[str, Path], capsys, flags: list[str]
) -> None:
    assert main(["chat", str(llama_family["a"]), "--prompt", "hi", *flags]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and flags[0].lstrip("-").replace("-", "_") in err


def test_chat_without_prompt_opens_the_app_on_the_chat_screen(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.tui import app as app_module

    calls = []
    monkeypatch.setattr(app_module, "run_app", lambda *a, **k: calls.append((a, k)) or 0)
    assert main(["chat", str(llama_family["a"])]) == 0
    options = {"device": "auto", "dtype": "auto", "allow_bin": False, "trust_remote_code": False}
    assert calls == [
        ((None,), {"chat_model": str(llama_family["a"].resolve()), "chat_options": options})
    ]


async def test_the_app_started_for_a_chat_loads_the_model(llama_family: dict[str, Path]) -> None:
    from mergetui.tui.app import MergeTuiApp
    from mergetui.tui.chat.screen import ChatScreen

    app = MergeTuiApp(initial_screen="chat")
    app.pending_chat_model = str(llama_family["a"])
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(400):
            await pilot.pause(0.05)
            if isinstance(app.screen, ChatScreen) and app.screen.loaded is not None:
                break
        assert app.current_mode == "chat"
        assert app.screen.loaded.path == llama_family["a"].resolve()
        assert app.pending_chat_model is None


def test_eval_prints_a_perplexity_table(
    llama_family: dict[str, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import transformers

    text = "A gull sat on the railing and watched the keeper with one yellow eye.\n"
    (tmp_path / "t.txt").write_text(text)
    models = [llama_family["base"], llama_family["a"]]
    monkeypatch.chdir(models[0].parent)  # short paths: the table shows them as typed
    code = main(
        ["eval", *(m.name for m in models), "--text", str(tmp_path / "t.txt"), "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "perplexity on the t.txt" in out
    for model_dir in models:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
        model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = math.exp(model(ids, labels=ids).loss.item())
        row = next(line for line in out.splitlines() if model_dir.name in line)
        assert f"{expected:.2f}" in row and str(ids.shape[1] - 1) in row


def test_eval_goes_on_past_a_broken_model_and_exits_1(
    llama_family: dict[str, Path], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(llama_family["a"].parent)
    code = main(["eval", "missing", llama_family["a"].name, "--window", "64"])
    captured = capsys.readouterr()
    assert code == 1
    assert "not scored" in captured.out
    assert "bundled sample" in captured.out
    row = next(line for line in captured.out.splitlines() if llama_family["a"].name in line)
    assert any(ch.isdigit() for ch in row)
    assert "no such checkpoint folder" in captured.err

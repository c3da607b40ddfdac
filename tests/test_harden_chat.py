"""Issue 13 on `chat`, `eval` and the Chat screen: pytorch_model.bin only with --allow-bin (item 7),
the dtype models load in (item 13), quitting during a streamed reply stops it (item 14), and eval's
error line for a missing model (item 18). Tiny real checkpoints; nothing is downloaded."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest
from textual.widgets import Select

from mergetui.chat import dtype as dtype_module
from mergetui.chat.dtype import check_dtype_name, choose_dtype, cpu_flags, stored_dtype
from mergetui.chat.loader import load_for_chat
from mergetui.chat.memory import needed_bytes, weights_bytes
from mergetui.cli import main
from mergetui.errors import UserError
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.chat.load_dialog import LoadModelDialog
from mergetui.tui.chat.screen import ChatScreen, open_chat

GB = 1000**3
NO_BF16 = frozenset({"fpu", "sse2", "avx", "avx2", "fma", "avx512f"})


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def bf16_model(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", seed=0, dtype="bfloat16")


@pytest.fixture
def bin_model(tmp_path: Path, llama_family: dict[str, Path]) -> Path:
    """llama_family["base"] with its weights as pytorch_model.bin (a pickle) instead."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bin-model"
    shutil.copytree(llama_family["base"], folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def no_bf16_cpu(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str] = NO_BF16) -> None:
    """This machine's CPU flags, as /proc/cpuinfo would say them."""
    monkeypatch.setattr(dtype_module, "cpu_flags", lambda *_: flags)


def first_param_dtype(loaded) -> str:
    return str(next(loaded.model.parameters()).dtype).removeprefix("torch.")


async def wait_for(pilot, condition, tries: int = 400) -> None:
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition never became true")


# ----------------------------------------------------------------------------------------------
# Item 13: which dtype


def test_auto_on_a_cpu_without_bf16_flags_loads_float32() -> None:
    choice = choose_dtype("auto", "cpu", "bfloat16", float32_need=GB, free=16 * GB, flags=NO_BF16)
    assert choice.name == "float32" and "no fast bfloat16" in choice.reason
    # float16 checkpoints too: bf16 flags do not make float16 fast.
    amx = frozenset({"avx2", "amx_bf16", "avx512_bf16"})
    assert choose_dtype("auto", "cpu", "float16", float32_need=GB, free=None, flags=amx).name == (
        "float32"
    )


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16", "bf16"])
def test_auto_on_a_cpu_with_fast_bf16_keeps_bf16(flag: str) -> None:
    choice = choose_dtype(
        "auto", "cpu", "bfloat16", float32_need=GB, free=16 * GB, flags=NO_BF16 | {flag}
    )
    assert choice.name == "bfloat16" and flag in choice.reason


def test_auto_keeps_16_bit_when_float32_would_not_fit() -> None:
    choice = choose_dtype(
        "auto", "cpu", "bfloat16", float32_need=9 * GB, free=8 * GB, flags=NO_BF16
    )
    assert choice.name == "bfloat16" and "would need" in choice.reason


def test_auto_on_a_gpu_and_float32_checkpoints_keep_their_dtype() -> None:
    for device in ("cuda", "cuda:1", "mps"):
        choice = choose_dtype("auto", device, "bfloat16", float32_need=GB, free=None, flags=NO_BF16)
        assert choice.name is None  # transformers' dtype="auto", as before
    assert choose_dtype("auto", "cpu", "float32", float32_need=GB, free=None).name is None


def test_an_asked_for_dtype_is_used_everywhere() -> None:
    for asked in ("float32", "bfloat16", "float16"):
        for device in ("cpu", "cuda"):
            choice = choose_dtype(asked, device, "bfloat16", float32_need=9 * GB, free=GB)
            assert choice.name == asked and choice.reason == "asked for"


def test_dtype_names_are_checked() -> None:
    assert check_dtype_name(" BF16 ") == "bfloat16"
    assert check_dtype_name("fp32") == "float32" and check_dtype_name("") == "auto"
    for bad in ("float64", "int8", "f32x", "auto;rm"):
        with pytest.raises(UserError) as caught:
            check_dtype_name(bad)
        assert caught.value.where == "--dtype" and "float32" in (caught.value.fix or "")


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n")
    assert {"avx2", "amx_bf16"} <= cpu_flags(str(x86))
    assert "bf16" in cpu_flags(str(arm))
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_stored_dtype_is_the_floating_dtype_of_most_entries() -> None:
    assert stored_dtype([("BF16", 1000), ("F32", 10), ("I64", 5000)]) == "bfloat16"
    assert stored_dtype([("I64", 4)]) is None


def test_load_for_chat_loads_in_the_dtype_asked(bf16_model: Path) -> None:
    for asked in ("float32", "bfloat16", "float16"):
        loaded = load_for_chat(bf16_model, device="cpu", dtype=asked)
        assert loaded.dtype == asked == first_param_dtype(loaded)
        assert loaded.dtype_reason == "asked for"
        code = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[asked]
        assert loaded.weights_bytes == weights_bytes(bf16_model, code)


def test_auto_loads_a_bf16_checkpoint_in_float32_on_a_cpu_without_bf16(
    bf16_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_bf16_cpu(monkeypatch)
    loaded = load_for_chat(bf16_model, device="cpu")
    assert first_param_dtype(loaded) == loaded.dtype == "float32"
    assert "float32" in loaded.describe()
    no_bf16_cpu(monkeypatch, NO_BF16 | {"amx_bf16"})
    assert first_param_dtype(load_for_chat(bf16_model, device="cpu")) == "bfloat16"
    # Room for the bf16 weights but not for float32: it stays bf16.
    no_bf16_cpu(monkeypatch)
    room = needed_bytes(weights_bytes(bf16_model)) + 1
    loaded = load_for_chat(bf16_model, device="cpu", free_memory={"cpu": room})
    assert loaded.dtype == "bfloat16" and "would need" in loaded.dtype_reason


def test_eval_dtype_flag_and_column(
    bf16_model: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bf16_model.parent)  # a short name: the row is one line
    code = main(["eval", bf16_model.name, "--device", "cpu", "--dtype", "bfloat16"])
    out = capsys.readouterr().out
    assert code == 0
    row = next(line for line in out.splitlines() if bf16_model.name in line)
    assert "dtype" in out and "bfloat16" in row


def test_chat_dtype_flag_is_used_and_shown(bf16_model: Path, capsys) -> None:
    args = ["chat", str(bf16_model), "--prompt", "Hi", "--max-new-tokens", "4", "--device", "cpu"]
    assert main([*args, "--temperature", "0", "--dtype", "float16"]) == 0
    err = capsys.readouterr().err
    assert "float16 · " in err and "asked for" in err and "tokens/s, float16" in err


def test_bad_dtype_values_are_refused_in_one_line(bf16_model: Path, capsys) -> None:
    assert main(["eval", str(bf16_model), "--dtype", "float64"]) == 1
    err = capsys.readouterr().err
    assert "--dtype: unknown dtype 'float64'" in err and "fix:" in err and "Traceback" not in err
    assert main(["chat", str(bf16_model), "--prompt", "x", "--dtype", "int4"]) == 1
    assert "unknown dtype 'int4'" in capsys.readouterr().err


def test_chat_without_prompt_takes_its_flags_into_the_app(
    bf16_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.tui import app as app_module

    calls = []
    monkeypatch.setattr(app_module, "run_app", lambda *a, **k: calls.append(k) or 0)
    assert main(["chat", str(bf16_model), "--dtype", "bf16", "--device", "cpu"]) == 0
    assert calls[0]["chat_options"]["dtype"] == "bfloat16"
    assert calls[0]["chat_options"]["device"] == "cpu"


async def test_the_app_opened_by_chat_loads_in_the_dtype_given(bf16_model: Path) -> None:
    app = MergeTuiApp(initial_screen="chat")
    app.pending_chat_model = str(bf16_model)
    app.pending_chat_options = {"device": "cpu", "dtype": "float16"}
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "loaded", None) is not None)
        screen = app.screen
        assert first_param_dtype(screen.loaded) == "float16"
        assert screen.query_one("#setting-dtype", Select).value == "float16"
        assert screen.dtype == "float16" and screen.device == "cpu"


async def test_chat_status_line_shows_the_dtype_and_the_setting_changes_it(
    bf16_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_bf16_cpu(monkeypatch)
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        open_chat(app, str(bf16_model))
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_for(pilot, lambda: screen.loaded is not None and not screen.model_loading)
        status = str(screen.query_one("#chat-status").render())
        assert "float32 (auto: this CPU has no fast bfloat16 kernels)" in status
        assert "float32" in str(screen.query_one("#chat-model").render())
        # The Settings tab's dtype is used by the next load.
        await pilot.press("f9")
        screen.query_one("#setting-dtype", Select).value = "bfloat16"
        await pilot.pause()
        assert screen.dtype == "bfloat16"
        screen.load_model(str(bf16_model))
        await wait_for(
            pilot, lambda: screen.loaded is not None and screen.loaded.dtype == "bfloat16"
        )
        assert first_param_dtype(screen.loaded) == "bfloat16"
        assert "bfloat16 (asked for)" in str(screen.query_one("#chat-status").render())
        # A reply's line names it too.
        screen.settings.max_new_tokens = 3
        await pilot.press("f6")
        for key in ("H", "i", "enter"):
            await pilot.press(key)
        await wait_for(pilot, lambda: screen.busy is None and screen.last_reply is not None)
        assert "tokens/s, bfloat16)" in str(screen.query_one("#chat-status").render())


# ----------------------------------------------------------------------------------------------
# Item 7: pytorch_model.bin only with --allow-bin


def test_chat_and_eval_refuse_a_bin_checkpoint_without_allow_bin(bin_model: Path, capsys) -> None:
    assert main(["chat", str(bin_model), "--prompt", "Hi", "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "--allow-bin" in err and "Traceback" not in err
    assert main(["eval", str(bin_model), "--window", "32"]) == 1
    captured = capsys.readouterr()
    assert "not scored" in captured.out and "--allow-bin" in captured.err
    with pytest.raises(UserError, match="pickle"):
        weights_bytes(bin_model)
    with pytest.raises(UserError, match="pickle"):
        load_for_chat(bin_model, device="cpu")


def test_chat_and_eval_load_a_bin_checkpoint_with_allow_bin(
    bin_model: Path, llama_family: dict[str, Path], tmp_path: Path, capsys
) -> None:
    args = ["--max-new-tokens", "4", "--temperature", "0", "--device", "cpu", "--allow-bin"]
    assert main(["chat", str(bin_model), "--prompt", "Hi", *args]) == 0
    assert "4 tokens" in capsys.readouterr().err
    shutil.copytree(llama_family["base"], tmp_path / "base")
    assert main(["eval", "bin-model", "base", "--allow-bin", "--window", "64"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "float32" in line]
    # The same weights: the same perplexity either way.
    assert len(rows) == 2 and rows[0].split("│")[2] == rows[1].split("│")[2]
    assert weights_bytes(bin_model, allow_bin=True) == weights_bytes(llama_family["base"])


async def test_the_chat_screen_refuses_a_bin_checkpoint_unless_ticked(bin_model: Path) -> None:
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        screen.load_model(str(bin_model))
        await wait_for(pilot, lambda: not screen.model_loading)
        assert screen.loaded is None
        # The whole reason (the line shows what fits its width; the notification all of it).
        status = screen.query_one("#chat-status").full_text
        assert "pytorch_model.bin" in status and "tick 'allow pytorch_model.bin'" in status
        assert "--allow-bin" not in status
        # The load dialog's tick allows it, for that model only.
        await pilot.press("ctrl+l")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, LoadModelDialog)
        dialog.query_one("#source").value = str(bin_model)
        dialog.query_one("#allow-bin").value = True
        await pilot.pause()
        dialog.query_one("#source").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.loaded is not None)
        assert screen.loaded.path == bin_model.resolve()
        assert str(bin_model.resolve()) in screen.bin_allowed


# ----------------------------------------------------------------------------------------------
# Item 14: quitting during a streamed reply


async def test_quit_during_a_streamed_reply_stops_it_at_once(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real generation is held at its first token until its stop event is set (or 60 s pass):
    a reply that would otherwise outlive the app by a minute. Quitting must set that event."""
    import mergetui.chat.generate as generate

    streaming, finished = threading.Event(), threading.Event()
    replies: list = []
    real = generate.generate_reply

    def held(loaded, messages, settings, *, on_text=None, stop=None):
        def first_token(text: str) -> None:
            if not streaming.is_set():
                streaming.set()
                stop.wait(60)
            on_text(text)

        try:
            replies.append(real(loaded, messages, settings, on_text=first_token, stop=stop))
        finally:
            finished.set()
        return replies[-1]

    monkeypatch.setattr(generate, "generate_reply", held)
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        open_chat(app, str(llama_family["a"]))
        await pilot.pause()
        screen = app.screen
        await wait_for(pilot, lambda: screen.loaded is not None)
        screen.settings.max_new_tokens = 100
        for key in ("H", "i", "enter"):
            await pilot.press(key)
        await wait_for(pilot, streaming.is_set)
        assert screen.busy == "reply"
        # The stop is set before the app starts closing (not when the screen is torn down: the
        # generation thread slows the shutdown itself).
        stopped_at_exit = []
        real_exit = app.exit

        def exit_(*args, **kwargs):
            stopped_at_exit.append(screen.stop_event.is_set())
            return real_exit(*args, **kwargs)

        monkeypatch.setattr(app, "exit", exit_)
        await pilot.press("ctrl+q")
        for _ in range(100):
            if not app.is_running:
                break
            await asyncio.sleep(0.05)
        assert not app.is_running  # quit, without a question
    assert stopped_at_exit == [True]
    # The worker ends within seconds of the quit, not when the minute is up.
    assert finished.wait(10), "the reply kept running after the app quit"
    assert replies[0].finish == "stopped" and replies[0].tokens < 5


# ----------------------------------------------------------------------------------------------
# Item 18: eval's line for a missing model


def test_eval_missing_model_says_what_and_fix_without_doubled_parentheses(
    llama_family: dict[str, Path], capsys
) -> None:
    assert main(["eval", "nope/missing-model", "--window", "32"]) == 1
    err = capsys.readouterr().err
    assert "nope/missing-model: no such checkpoint folder" in err
    assert "((" not in err and "))" not in err
    assert "fix: check the path" in err

"""The Chat screen driven by keys (Pilot) on tiny real checkpoints: loading with progress, streamed
replies (incremental, stoppable with esc), clearing, compare against the recipe's models, the
perplexity table against a direct transformers computation, settings, and failures that leave the app
running. Also `mergetui chat MODEL` opening the app on this screen."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path

import pytest
from textual import events
from textual.widgets import Markdown

from mergetui.chat.generate import GenerationSettings, generate_reply
from mergetui.chat.loader import load_for_chat
from mergetui.chat.prompt import conversation
from mergetui.editing.document import RecipeDocument
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.chat import stream
from mergetui.tui.chat.load_dialog import LoadModelDialog
from mergetui.tui.chat.screen import ChatScreen, open_chat


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def family_recipe(tmp_path: Path, llama_family: dict[str, Path]) -> Path:
    path = tmp_path / "pair.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "linear"
            output = "out"

            [models.a]
            source = "{llama_family["a"]}"
            [models.a.parameters]
            weight = 0.5

            [models.b]
            source = "{llama_family["b"]}"
            [models.b.parameters]
            weight = 0.5
            """
        ),
        encoding="utf-8",
    )
    return path


async def wait_for(pilot, condition, tries: int = 400) -> None:
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition never became true")


async def loaded_chat(app: MergeTuiApp, pilot, model: Path) -> ChatScreen:
    await pilot.pause()
    open_chat(app, str(model))
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, ChatScreen)
    await wait_for(pilot, lambda: screen.loaded is not None and not screen.model_loading)
    return screen


async def type_text(pilot, text: str) -> None:
    names = {" ": "space", ".": "full_stop", ",": "comma", "?": "question_mark", "/": "slash"}
    for character in text:
        await pilot.press(names.get(character, character))


async def test_load_shows_progress_then_the_model(llama_family: dict[str, Path]) -> None:
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded_chat(app, pilot, llama_family["a"])
        stages = [fraction for _, fraction in screen.load_stages]
        assert len(stages) >= 5 and stages == sorted(stages) and stages[-1] == 1.0
        assert "loading the weights" in {stage for stage, _ in screen.load_stages}
        line = str(screen.query_one("#chat-model").render())
        assert llama_family["a"].name in line and "cpu" in line and "chat template" in line
        assert not screen.query_one("#chat-loading").display
        assert screen.query_one("#chat-input").has_focus


async def test_a_reply_streams_and_matches_the_core(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "STREAM_INTERVAL", 0.0)
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded_chat(app, pilot, llama_family["a"])
        screen.query_one("#setting-temperature").value = "0"
        screen.query_one("#setting-max_new_tokens").value = "30"
        await pilot.pause()
        assert screen.settings.temperature == 0 and screen.settings.max_new_tokens == 30
        screen.query_one("#chat-input").focus()
        await type_text(pilot, "Hello there")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.busy is None and screen.last_reply is not None)
        reply = screen.last_reply
        assert screen.reply_updates >= 5  # tokens arrived as they came, not all at the end
        view = screen.query_one("#reply-1", Markdown)
        assert view.source == reply.text
        assert [m.role for m in screen.messages] == ["user", "assistant"]
        assert "30 tokens" in str(screen.query_one("#chat-status").render())
        expected = generate_reply(
            screen.loaded,
            conversation([], "Hello there"),
            GenerationSettings(temperature=0, max_new_tokens=30),
        )
        assert reply.text == expected.text
        # A second turn carries the conversation; ctrl+n clears it.
        await type_text(pilot, "And then?")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.busy is None and len(screen.messages) == 4)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.messages == []
        assert not screen.query("Markdown.reply")


async def test_esc_stops_a_reply(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real generation is held at its first token until esc has been pressed."""
    import threading

    import mergetui.chat.generate as generate

    reached, release = threading.Event(), threading.Event()
    real = generate.generate_reply

    def held(loaded, messages, settings, *, on_text=None, stop=None):
        def first_token(text: str) -> None:
            if not reached.is_set():
                reached.set()
                assert release.wait(30)
            on_text(text)

        return real(loaded, messages, settings, on_text=first_token, stop=stop)

    monkeypatch.setattr(generate, "generate_reply", held)
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded_chat(app, pilot, llama_family["a"])
        screen.settings.max_new_tokens = 100
        screen.settings.temperature = 0
        await type_text(pilot, "Hi")
        await pilot.press("enter")
        await wait_for(pilot, reached.is_set)
        assert screen.busy == "reply"
        await pilot.press("escape")
        await pilot.pause()
        assert screen.stop_event.is_set()
        release.set()
        await wait_for(pilot, lambda: screen.busy is None and screen.last_reply is not None)
        assert screen.last_reply.finish == "stopped"
        assert screen.last_reply.tokens < 5
        assert "stopped" in str(screen.query_one("#chat-status").render())


async def test_compare_sends_one_prompt_to_the_model_and_its_parents(
    family_recipe: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "STREAM_INTERVAL", 0.0)
    app = MergeTuiApp(RecipeDocument.open(family_recipe))
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await loaded_chat(app, pilot, llama_family["base"])
        screen.settings.temperature = 0
        screen.settings.max_new_tokens = 12
        await pilot.press("f7")
        await pilot.pause()
        assert [name for name, _ in screen.compare_sources] == [
            llama_family["base"].name,
            "a",
            "b",
        ]
        await type_text(pilot, "Hello")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.busy is None)
        columns = list(screen.query(".compare-column"))
        assert len(columns) == 3
        for index, (_, path) in enumerate(screen.compare_sources):
            model = load_for_chat(path, device="cpu")
            expected = generate_reply(
                model,
                conversation([], "Hello"),
                GenerationSettings(temperature=0, max_new_tokens=12),
            )
            shown = screen.query_one(f"#compare-{index}", Markdown).source
            assert shown == (expected.text or "*(no visible text)*")
            status = str(screen.query_one(f"#compare-status-{index}").render())
            assert "12 tokens" in status
            assert status.endswith(stream.COMPARE_NOTES[expected.finish])  # words, not codes
        # The parents stay loaded (they fit) and are reused by the quick check.
        assert set(screen.extra) == {
            str(llama_family["a"].resolve()),
            str(llama_family["b"].resolve()),
        }


async def test_quick_check_table_equals_transformers_perplexity(
    family_recipe: Path, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    import transformers

    text = "The fog lifted at noon and the keeper wrote down the names of three ships.\n"
    (tmp_path / "sample.txt").write_text(text)
    app = MergeTuiApp(RecipeDocument.open(family_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded_chat(app, pilot, llama_family["base"])
        await pilot.press("f8")
        await type_text(pilot, "sample.txt")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.busy is None)
        table = screen.query_one("#check-table")
        assert table.row_count == 3
        for row, (_, path) in enumerate(screen.compare_sources):
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            model = transformers.AutoModelForCausalLM.from_pretrained(path)
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                expected = math.exp(model(ids, labels=ids).loss.item())
            result = screen.check_results[row]
            assert result.perplexity == pytest.approx(expected, rel=1e-5)
            assert table.get_cell_at((row, 1)) == f"{expected:.2f}"
            assert table.get_cell_at((row, 4)) == "done"


async def test_quick_check_on_the_bundled_sample(llama_family: dict[str, Path]) -> None:
    from mergetui.chat.perplexity import perplexity, sample_text

    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded_chat(app, pilot, llama_family["a"])
        await pilot.press("f8")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.busy is None)
        assert len(screen.check_results) == 1
        direct = perplexity(screen.loaded, sample_text()[0])
        assert screen.check_results[0].perplexity == pytest.approx(direct.perplexity, rel=1e-9)
        assert screen.check_results[0].text_name == "bundled sample"


async def test_a_model_that_fails_to_load_says_why_and_the_app_goes_on(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    custom = tmp_path / "custom"
    shutil.copytree(llama_family["a"], custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="my-own-arch", auto_map={"AutoModelForCausalLM": "x.Y"})
    (custom / "config.json").write_text(json.dumps(config))
    (tmp_path / "not-a-model").mkdir()
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        screen = app.screen
        for source, words in ((tmp_path / "not-a-model", "no config.json"), (custom, "trust")):
            screen.load_model(str(source))
            await wait_for(pilot, lambda: not screen.model_loading)
            # The whole reason (the line shows what fits its width; the notification all of it).
            status = screen.query_one("#chat-status").full_text
            assert "not loaded" in status and words in status
            assert screen.loaded is None
        # Sending without a model only warns; loading a good one then works.
        await type_text(pilot, "hi")
        await pilot.press("enter")
        await pilot.pause()
        assert screen.messages == []
        screen.load_model(str(llama_family["a"]))
        await wait_for(pilot, lambda: screen.loaded is not None)


async def test_the_load_dialog_offers_the_merge_and_the_recipe_models(
    family_recipe: Path, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    merged = tmp_path / "out"
    shutil.copytree(llama_family["base"], merged)
    app = MergeTuiApp(RecipeDocument.open(family_recipe))
    app.last_merge_output = str(merged)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        screen = app.screen
        await pilot.press("ctrl+l")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, LoadModelDialog)
        labels = [label for label, _ in dialog.candidates]
        assert labels == ["the merge just made", "recipe model a", "recipe model b"]
        await pilot.press("down")  # recipe model a
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.loaded is not None)
        assert screen.loaded.path == llama_family["a"].resolve()


async def test_invalid_settings_keep_the_last_good_value(llama_family: dict[str, Path]) -> None:
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        await pilot.press("f9")
        await pilot.pause()
        screen = app.screen
        assert screen.query_one("#setting-system").has_focus
        await type_text(pilot, "Be brief.")
        field = screen.query_one("#setting-top_p")
        field.value = "1.5"
        await pilot.pause()
        assert screen.settings.top_p == 0.95
        assert "top_p" in str(screen.query_one("#settings-message").render())
        field.value = "0.5"
        await pilot.pause()
        assert screen.settings.top_p == 0.5 and screen.settings.system_prompt == "Be brief."
        # Every number is finite and in range: NaN and inf are refused like any bad value.
        temperature = screen.query_one("#setting-temperature")
        for bad in ("nan", "inf", "1e9"):
            temperature.value = bad
            await pilot.pause()
            assert screen.settings.temperature == 0.7, bad
            assert "temperature" in str(screen.query_one("#settings-message").render())


def test_first_chat_frame_imports_no_torch(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = textwrap.dedent(
        """
        import asyncio, json, sys
        from mergetui.tui.app import MergeTuiApp

        async def main():
            app = MergeTuiApp(initial_screen="chat")
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.pause()
                await pilot.press("f4")
                await pilot.pause()
                loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
            print(json.dumps(loaded))

        asyncio.run(main())
        """
    )
    env = {**os.environ, CONFIG_ENV: str(tmp_path / "c"), DATA_ENV: str(tmp_path / "d")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


async def test_every_reply_says_why_it_ended(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the walkthrough: a reply that ended at its end of turn gave no reason."""
    monkeypatch.setattr(stream, "STREAM_INTERVAL", 0.0)
    assert set(stream.FINISH_NOTES) == {"end", "length", "context", "stopped"}
    assert all(note.strip(" ·") for note in stream.FINISH_NOTES.values())
    assert stream.FINISH_NOTES["end"] == "end of turn"
    app = MergeTuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded_chat(app, pilot, llama_family["a"])
        screen.settings.temperature = 0
        screen.settings.max_new_tokens = 8
        await type_text(pilot, "Hi")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.busy is None and screen.last_reply is not None)
        status = str(screen.query_one("#chat-status").render())
        assert status.endswith(stream.FINISH_NOTES[screen.last_reply.finish].strip())


async def test_loading_shows_its_progress_bar_not_a_spinner_over_the_screen(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the walkthrough: `loading` is Textual's own reactive; setting it covered the whole
    screen with a spinner for as long as the model loaded, hiding the progress bar."""
    import threading

    import mergetui.chat.loader as loader

    reached, release = threading.Event(), threading.Event()
    real = loader.load_for_chat

    def held(source, **kwargs):
        report = kwargs["on_progress"]

        def first_stage(stage, fraction):
            report(stage, fraction)
            if not reached.is_set():
                reached.set()
                assert release.wait(30)

        kwargs["on_progress"] = first_stage
        return real(source, **kwargs)

    monkeypatch.setattr(loader, "load_for_chat", held)
    app = MergeTuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        screen = app.screen
        screen.load_model(str(llama_family["a"]))
        await wait_for(pilot, reached.is_set)
        await pilot.pause()
        assert screen.model_loading and not screen.loading  # no overlay
        assert not screen.query("LoadingIndicator")
        bar = screen.query_one("#chat-loading")
        assert bar.display and bar.region.height == 1  # drawn, on screen
        assert "loading" in str(screen.query_one("#chat-model").render())
        # A message sent while it loads is kept, with a word that it is loading (not "load one").
        screen.query_one("#chat-input").focus()
        await type_text(pilot, "Hi")
        await pilot.press("enter")
        await pilot.pause()
        assert screen.query_one("#chat-input").value == "Hi" and screen.messages == []
        said = [n.message for n in app._notifications]
        assert any("still loading" in m for m in said) and not any("first" in m for m in said)
        release.set()
        await wait_for(pilot, lambda: screen.loaded is not None)
        assert not screen.query_one("#chat-loading").display


async def test_typing_in_the_load_dialogs_list_types_a_folder(
    family_recipe: Path, llama_family: dict[str, Path]
) -> None:
    """Found in the walkthrough: a path typed while the list had focus was lost, and enter loaded
    the highlighted model instead."""
    app = MergeTuiApp(RecipeDocument.open(family_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        screen = app.screen
        await pilot.press("ctrl+l")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, LoadModelDialog)
        assert [label for label, _ in dialog.candidates][0] == "recipe model a"
        names = {"/": "slash", ".": "full_stop", "-": "minus", "_": "underscore", " ": "space"}
        for character in str(llama_family["b"]):
            await pilot.press(names.get(character, character))
        field = dialog.query_one("#source")
        assert field.has_focus and field.value == str(llama_family["b"])
        # Typed quickly (one terminal read): every key reaches the list before the field has
        # focus, and the folder is still what was typed.
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("ctrl+l")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, LoadModelDialog)
        for character in str(llama_family["b"]):
            app.post_message(events.Key(names.get(character, character), character))
        await pilot.pause()
        field = dialog.query_one("#source")
        assert field.has_focus and field.value == str(llama_family["b"])
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.loaded is not None)
        assert screen.loaded.path == llama_family["b"].resolve()


async def test_tab_completes_a_path_in_the_load_dialog(
    family_recipe: Path, llama_family: dict[str, Path]
) -> None:
    """Every path prompt completes with tab, as the Add-model dialog does (only the right arrow did
    here)."""
    shutil.copytree(llama_family["b"], family_recipe.parent / "finetune-xyz")
    app = MergeTuiApp(RecipeDocument.open(family_recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        await pilot.press("ctrl+l")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, LoadModelDialog)
        field = dialog.query_one("#source")
        field.value = ""
        field.focus()
        await pilot.press(*str(family_recipe.parent / "finet"))
        await pilot.pause(0.3)  # the completion is found in a worker
        await pilot.press("tab")
        assert field.value == str(family_recipe.parent / "finetune-xyz") + "/"
        assert field.has_focus


async def test_the_chat_status_line_fits_80_columns(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 80 columns the reply's figures and why it ended did not fit and were cut mid-word: the
    status line drops or shortens its last part instead, and keeps every part for a wider one."""
    monkeypatch.setattr(stream, "STREAM_INTERVAL", 0.0)
    app = MergeTuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await loaded_chat(app, pilot, llama_family["a"])
        screen.settings.temperature = 0
        screen.settings.max_new_tokens = 8
        await type_text(pilot, "Hi")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.busy is None and screen.last_reply is not None)
        status = screen.query_one("#chat-status")
        shown = str(status.render())
        assert len(shown) <= status.content_size.width
        assert shown.startswith(f"{screen.last_reply.tokens} tokens in")
        note = stream.FINISH_NOTES[screen.last_reply.finish]
        assert status.full_text.endswith(note)

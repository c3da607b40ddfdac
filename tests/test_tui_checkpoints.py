"""The Checkpoints screen driven by keys (Pilot), with local folders, a real HF cache and the Hub
stand-in: the list and its filter, sorting, Hub search (a worker), details from remote headers,
adding to the recipe (undo, the Recipe screen sees it), download with a progress bar and cancel,
the compatibility check, offline mode, and the push dialog."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from hub_server import TEST_TOKEN, HubServer, serve_for_test
from textual.widgets import DataTable, Input, ProgressBar, Static

from mergetui.checkpoints.locate import find_local
from mergetui.paths import CONFIG_ENV
from mergetui.settings import AppConfig
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.checkpoints.screen import CheckpointsScreen
from mergetui.tui.checkpoints.text import details_text
from mergetui.tui.push_dialog import PushDialog
from mergetui.tui.recipe.screen import RecipeScreen


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    yield from serve_for_test(tmp_path, monkeypatch)


@pytest.fixture
def models_dir(tmp_path: Path, llama_family: dict[str, Path], arch_models: dict[str, Path]) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(llama_family["base"], folder / "llama-base")
    shutil.copytree(llama_family["a"], folder / "nested" / "llama-a")
    shutil.copytree(arch_models["qwen2"], folder / "qwen-small")
    (folder / "not-a-model").mkdir()
    (folder / "not-a-model" / "notes.txt").write_text("hello")
    return folder


def make_app(models_dir: Path | None = None) -> MergeTuiApp:
    config = AppConfig()
    if models_dir is not None:
        config.models_dirs = [str(models_dir)]
    return MergeTuiApp(initial_screen="checkpoints", config=config)


async def settle(pilot, pause: float = 0.5) -> None:
    """Workers done, and the ones a timer starts (details after the cursor rests) done too."""
    for _ in range(2):
        await pilot.pause(pause)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def details_of(pilot, screen: CheckpointsScreen) -> str:
    """The highlighted row's details, once read (a loaded machine may take a while)."""
    for _ in range(100):
        key = screen.current_row().key
        if key in screen.details:
            return plain(screen.details[key])
        await pilot.pause(0.1)
    raise AssertionError("the details were never read")


def plain(markup: str) -> str:
    from rich.text import Text

    return Text.from_markup(markup).plain


def searches(hub: HubServer) -> list:
    return [r for r in hub.log("GET") if r.path == "/api/models"]


def names(screen: CheckpointsScreen) -> list[str]:
    return [row.name for row in screen.rows]


def table_cells(screen: CheckpointsScreen) -> list[list[str]]:
    table = screen.query_one("#ck-table", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_local_folders_and_cache_listed_filtered_and_sorted(
    hub: HubServer, models_dir: Path, llama_family: dict[str, Path]
) -> None:
    from mergetui.checkpoints.hub import download_repo

    hub.add_repo("org/cached-llama", llama_family["b"])
    download_repo("org/cached-llama")
    app = make_app(models_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CheckpointsScreen)
        assert names(screen) == ["llama-a", "llama-base", "org/cached-llama", "qwen-small"]
        cells = {row[0]: row for row in table_cells(screen)}
        assert cells["qwen-small"][1] == "Qwen2" and cells["qwen-small"][5] == "4"
        assert cells["org/cached-llama"][6:] == ["cache", "local"]
        assert cells["llama-base"][6:] == ["folder", "local"]
        assert cells["llama-base"][3] == "f32"
        # Filter as you type: every word must match.
        await pilot.press("slash", *"llama")
        assert names(screen) == ["llama-a", "llama-base", "org/cached-llama"]
        await pilot.press("space", *"cache")
        assert names(screen) == ["org/cached-llama"]
        await pilot.press("escape")
        assert screen.query_one("#ck-table", DataTable).has_focus
        screen.query_one("#ck-filter", Input).value = ""
        await pilot.pause()
        assert len(screen.rows) == 4
        # Sort: s goes to the next column (architecture), S reverses.
        await pilot.press("s")
        assert screen.sort_column == "architecture"
        assert names(screen)[-1] == "qwen-small"
        await pilot.press("S")
        assert names(screen)[0] == "qwen-small"
        for _ in range(2):
            await pilot.press("s")
        assert screen.sort_column == "dtype"


async def test_hub_search_details_and_sort_keys(
    hub: HubServer, llama_family: dict[str, Path]
) -> None:
    hub.add_repo(
        "acme/tiny-base",
        llama_family["base"],
        downloads=900,
        likes=1,
        tags=["text-generation"],
        license="mit",
    )
    hub.add_repo(
        "acme/tiny-merge",
        llama_family["a"],
        downloads=10,
        likes=99,
        tags=["merge", "text-generation"],
    )
    hub.add_repo(
        "acme/tiny-gated", llama_family["c"], downloads=5, likes=3, tags=["merge"], gated="auto"
    )
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert screen.rows == []
        assert "enter" in str(screen.query_one("#ck-status", Static).render())
        await pilot.press("slash", *"tiny", "enter")
        await settle(pilot)
        assert names(screen) == ["acme/tiny-base", "acme/tiny-gated", "acme/tiny-merge"]
        assert table_cells(screen)[0][2] == "197K"  # parameters came with the search
        assert screen.query_one("#ck-table", DataTable).has_focus
        assert "3 for 'tiny'" in str(screen.query_one("#ck-status", Static).render())
        # The order of the Hub's answer is by downloads; `h` asks again by likes.
        await pilot.press("h")
        await settle(pilot)
        assert screen.hub_sort == "likes"
        assert searches(hub)[-1].query["sort"] == ["likes"]
        # Tag filter: only merges.
        await pilot.press("m")
        await settle(pilot)
        assert names(screen) == ["acme/tiny-gated", "acme/tiny-merge"]
        assert searches(hub)[-1].query["filter"] == ["merge"]
        await pilot.press("down")
        # Details: Hub facts and the remote headers, nothing downloaded.
        await pilot.press("enter")
        await settle(pilot)
        text = await details_of(pilot, screen)
        assert "likes 99" in text and "licence not stated" in text
        assert "read from the remote safetensors headers" in text
        assert "layer 3:" in text and "q_proj [64, 64]" in text
        assert hub.downloaded("acme/tiny-merge") == ["config.json"]
        row = screen.current_row()
        assert row.layers == 4 and row.size is not None
        # A gated model: the Hub's facts, and what to do about the headers.
        await pilot.press("up", "enter")
        await settle(pilot)
        text = await details_of(pilot, screen)
        assert "gated yes (automatic)" in text and "headers not read" in text
        assert f"request access at {hub.url}/acme/tiny-gated," in text


async def test_add_to_recipe_as_model_and_base_with_undo(hub: HubServer, models_dir: Path) -> None:
    app = make_app(models_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        document = app.document
        await pilot.press("a")  # llama-a
        assert list(document.recipe.models) == ["llama-a"]
        assert document.recipe.models["llama-a"].source == str(
            (models_dir / "nested" / "llama-a").resolve()
        )
        await pilot.press("down", "b")  # llama-base as the base
        assert list(document.recipe.models) == ["llama-a", "llama-base"]
        assert document.recipe.base == "llama-base"
        await pilot.press("a")  # the same again: refused, not duplicated
        assert len(document.recipe.models) == 2
        assert "[modified]" in app.sub_title
        # The Recipe screen shows them.
        await pilot.press("f3")
        await settle(pilot)
        recipe_screen = app.screen
        assert isinstance(recipe_screen, RecipeScreen)
        table = recipe_screen.query_one("#models", DataTable)
        assert table.row_count == 2
        assert [str(c) for c in table.get_row_at(1)][:2] == ["★", "llama-base"]
        # Undo from the Checkpoints screen.
        await pilot.press("f2")
        await pilot.press("ctrl+z")
        assert document.recipe.base is None and list(document.recipe.models) == ["llama-a"]
        await pilot.press("ctrl+z")
        assert document.recipe.models == {}
        del screen


async def test_download_with_progress_then_local(
    hub: HubServer, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("acme/tiny", llama_family["base"])
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press("slash", *"acme", "enter")
        await settle(pilot)
        assert table_cells(screen)[0][7] == "remote"
        seen: list[object] = []
        original = screen._download_progress

        def spy(event: object) -> None:
            seen.append((event, screen.query_one("#ck-download").display))
            original(event)

        monkeypatch.setattr(screen, "_download_progress", spy)
        await pilot.press("d")
        await settle(pilot, 1.0)
        await settle(pilot)
        assert seen and all(shown for _, shown in seen)  # the progress strip was up
        last = seen[-1][0]
        assert last.done and last.bytes_done == last.bytes_total
        assert find_local("acme/tiny") is not None
        assert not screen.query_one("#ck-download").display
        cells = table_cells(screen)
        assert [c[0] for c in cells] == ["acme/tiny"] and cells[0][6:] == ["cache", "local"]
        # The downloaded row keeps what the Hub said about it.
        assert screen.rows[0].hub is not None


async def test_download_progress_bar_and_cancel(
    hub: HubServer, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants
    from test_hub_core import big_safetensors

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 65536)
    hub.add_repo("acme/big", llama_family["base"], files={"model.safetensors": big_safetensors(3)})
    hub.chunk_delay = 0.1  # 48 chunks: seconds of download, so the cancel lands mid-file
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press("slash", *"big", "enter")
        await settle(pilot)
        started = threading.Event()
        original = screen._download_progress

        bars: list[tuple[float, float | None]] = []

        def spy(event: object) -> None:
            original(event)
            bar = screen.query_one("#ck-progress", ProgressBar)
            bars.append((bar.progress, bar.total))
            if event.file == "model.safetensors" and event.files_done == event.file_count - 1:
                started.set()

        monkeypatch.setattr(screen, "_download_progress", spy)
        await pilot.press("d")
        for _ in range(100):
            await pilot.pause(0.05)
            if started.is_set():
                break
        assert started.is_set()
        assert any(total and 0 < progress < total for progress, total in bars)
        label = str(screen.query_one("#ck-download-label").render())
        assert "acme/big" in label and "files" in label and "KB" in label
        await pilot.press("x")
        await settle(pilot)
        assert screen.download is None
        assert find_local("acme/big") is None
        from mergetui.checkpoints.locate import cached_repo_dir

        assert not list(cached_repo_dir("acme/big").rglob("*.incomplete"))


async def test_compatibility_check_names_tensors_and_shapes(
    hub: HubServer, tiny_model_factory, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    other = tiny_model_factory("llama", seed=5, vocab_size=512)
    folder = tmp_path / "pair"
    folder.mkdir()
    shutil.copytree(llama_family["base"], folder / "a-base")
    shutil.copytree(other, folder / "b-wide")
    app = make_app(folder)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        await pilot.press("b", "down", "a", "k")
        await settle(pilot)
        report = screen.check_report
        assert report.reference == "a-base"
        messages = [p.message for p in report.problems]
        assert "model.embed_tokens.weight: a-base [384, 64] vs b-wide [512, 64]" in messages
        text = str(screen.query_one("#ck-details-text", Static).render())
        assert "embed_tokens" in text and "[384, 64]" in text


async def test_offline_says_so_and_local_parts_work(
    hub: HubServer, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = make_app(models_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert len(screen.rows) == 3
        assert "offline" in str(screen.query_one("#ck-status", Static).render())
        assert "offline" in str(screen.query_one("#ck-hub", Static).render())
        await pilot.press("slash", *"llama", "enter")
        await settle(pilot)
        assert hub.requests == []
        assert names(screen) == ["llama-a", "llama-base"]
        await pilot.press("a")
        assert list(app.document.recipe.models) == ["llama-a"]


async def test_push_dialog_uploads_with_progress(
    hub: HubServer, llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    folder = tmp_path / "merged"
    shutil.copytree(llama_family["base"], folder)
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        app.action_push_to_hub(str(folder))
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, PushDialog)
        assert dialog.query_one("#push-folder", Input).value == str(folder)
        assert dialog.query_one("#push-repo", Input).has_focus
        await pilot.press(*"tester/merged", "enter")
        await settle(pilot)
        assert dialog.url and dialog.url.endswith("/tester/merged")
        assert "pushed" in str(dialog.query_one("#push-message", Static).render())
        assert (
            hub.repos["tester/merged"].files["model.safetensors"]
            == (folder / "model.safetensors").read_bytes()
        )
        assert TEST_TOKEN not in str(dialog.query_one("#push-message", Static).render())
        await pilot.press("escape")
        assert isinstance(app.screen, CheckpointsScreen)
        # The palette entry opens the same dialog.
        commands = [c.title for c in app.palette_commands(app.screen)]
        assert "Push a folder to the Hub…" in commands


def test_details_text_for_a_local_folder(llama_family: dict[str, Path]) -> None:
    from mergetui.checkpoints.sources import scan_models_dirs

    row = scan_models_dirs([llama_family["base"]])[0]
    text = plain(details_text(row))
    assert "4 layers" in text and "chat template yes" in text
    assert "layer 0: attention" in text and "mlp" in text and "model.safetensors" in text

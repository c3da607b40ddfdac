"""Issue 13, the app as a new user meets it: the quit question after a merge ends (14), the demo's
Checkpoints screen and status lines that fit 80 columns (15), the Add-model dialog (17), and the
small ones of 18 (slices as the file says them, the S-curve presets, the first ETA, `diff --kind
--json`, the README's set-up and the demo folder in .gitignore). Pilot on tiny real checkpoints."""

from __future__ import annotations

import json
import math
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from tui_helpers import gate_the_engine, until_done, wait_reached

from mergetui.editing.document import RecipeDocument
from mergetui.paths import CONFIG_ENV, DATA_ENV
from mergetui.settings import AppConfig
from mergetui.tui.app import MergeTuiApp
from mergetui.tui.checkpoints.screen import CheckpointsScreen
from mergetui.tui.dialogs.confirm import ConfirmDialog
from mergetui.tui.dialogs.models import AddModelDialog, model_source
from mergetui.tui.dialogs.presets import PresetDialog
from mergetui.tui.eta import RateEstimate
from mergetui.tui.recipe.screen import RecipeScreen
from mergetui.tui.run import clocks
from mergetui.tui.run.messages import ProgressState, RunProgress
from mergetui.tui.run.screen import RunScreen
from mergetui.tui.status_line import StatusLine, fit_parts

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def soup(tmp_path: Path, family: dict[str, Path], name: str = "a") -> Path:
    path = tmp_path / "recipes" / "soup.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "linear"
            dtype = "float32"
            output = "{tmp_path / "out"}"

            [models.{name}]
            source = "{family["a"]}"
            [models.{name}.parameters]
            weight = 0.6

            [models.b]
            source = "{family["b"]}"
            [models.b.parameters]
            weight = 0.4
            """
        ),
        encoding="utf-8",
    )
    return path


async def settle(pilot, pause: float = 0.4) -> None:
    for _ in range(2):
        await pilot.pause(pause)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def shown(widget) -> str:
    return str(widget.render())


# -- 14: the quit question during a merge ---------------------------------------------------------


async def test_the_quit_question_closes_when_the_merge_ends_first(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(soup(tmp_path, llama_family)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f4")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await pilot.press("r")
        await wait_reached(pilot, reached)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert app.screen.title_text == "Quit and cancel the merge?"
        release.set()
        await until_done(app, pilot, screen)
        await pilot.pause()
        assert screen.last_outcome == "finished"
        assert app.screen is screen  # the question about a merge that is over is gone
        assert any("ctrl+q quits" in n.message for n in app._notifications)
        await pilot.press("ctrl+q")  # and quitting now asks nothing
        await pilot.pause()
    assert app.return_code == 0 and not app.is_running
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the merge was not cancelled


# -- 15: the demo's Checkpoints screen; status lines at 80 columns --------------------------------


@pytest.fixture(scope="module")
def demo_with_a_merge(tmp_path_factory: pytest.TempPathFactory):
    from mergetui.cli import main
    from mergetui.demo import make_demo

    info = make_demo(tmp_path_factory.mktemp("h7") / "mergetui-demo")
    out = info.merges_dir / "linear-soup"
    assert main(["merge", str(info.recipes["linear-soup"]), "--out", str(out)]) == 0
    return info


async def test_the_demo_folder_is_a_models_folder_from_the_start(demo_with_a_merge) -> None:
    demo = demo_with_a_merge
    app = MergeTuiApp(
        RecipeDocument.open(demo.recipes["slerp-gradient"]),
        initial_screen="checkpoints",
        models_dirs=[demo.directory],  # what `mergetui demo` passes (tests/test_demo.py)
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, CheckpointsScreen)
        assert sorted(row.name for row in screen.rows) == ["base", "code", "linear-soup", "prose"]
        status = screen.query_one("#ck-status", StatusLine)
        text = shown(status)
        assert text.startswith("4 local (1 folder + HF cache)")
        assert len(text) <= status.content_size.width  # fits: nothing cut at the edge
        app.theme = "mergetui-light"  # saving a setting does not remember the demo's folder
        await pilot.pause()
    saved = AppConfig.load()
    assert saved.theme == "mergetui-light" and saved.models_dirs == []


async def test_a_merge_made_in_the_app_joins_the_checkpoints_list(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = soup(tmp_path, llama_family)
    text = path.read_text(encoding="utf-8").replace(str(tmp_path / "out"), str(models / "soup"))
    path.write_text(text, encoding="utf-8")
    app = MergeTuiApp(RecipeDocument.open(path), models_dirs=[models])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f2")
        await settle(pilot)
        assert app.screen.rows == []
        await pilot.press("f4")
        await pilot.pause()
        screen = app.screen
        await pilot.press("r")
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "finished"
        await pilot.press("f2")  # the list is read again: the merge is on it without `r`
        await settle(pilot)
        assert [row.name for row in app.screen.rows] == ["soup"]


def test_fit_parts_drops_trailing_parts_then_cuts_with_an_ellipsis() -> None:
    parts = ["[b]✗ 2 error(s)[/]", "weight (a-long-model-name, mlp) @ 12 = 0.5", "step 0.05"]
    assert fit_parts(parts, 200).plain == " │ ".join(
        ["✗ 2 error(s)", "weight (a-long-model-name, mlp) @ 12 = 0.5", "step 0.05"]
    )
    assert fit_parts(parts, 60).plain == "✗ 2 error(s) │ weight (a-long-model-name, mlp) @ 12 = 0.5"
    cut = fit_parts(parts, 40).plain
    assert len(cut) == 40 and cut.startswith("✗ 2 error(s) │ weight") and cut.endswith("…")
    assert fit_parts(parts, 20).plain == "✗ 2 error(s)"  # too little room for a useful piece
    assert fit_parts(["a very long first part"], 10).plain == "a very lo…"


@pytest.mark.parametrize("size", [(80, 24), (100, 30)])
async def test_the_recipe_status_line_fits_its_width(
    tmp_path: Path, llama_family: dict[str, Path], size: tuple[int, int]
) -> None:
    long_name = "a-fine-tune-with-a-rather-long-name"
    app = MergeTuiApp(RecipeDocument.open(soup(tmp_path, llama_family, name=long_name)))
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, RecipeScreen)
        with app.document.edit("drop weight"):  # an error, so the status line has every part
            del app.document.recipe.models["b"].parameters["weight"]
        screen.recipe_changed()
        await pilot.press("f7")
        await pilot.press("shift+down", "shift+down")
        await pilot.pause()
        status = screen.query_one("#status", StatusLine)
        text, full = shown(status), status.full_text
        assert full.startswith("✗") and long_name in full and "3 selected" in full
        assert text.startswith("✗") and len(text) <= status.content_size.width
        assert (text == full) == (len(full) <= status.content_size.width)
        if size[0] == 80:
            assert text != full  # at 80 columns the tail gives way, visibly


# -- 17: the Add-model dialog ---------------------------------------------------------------------


async def open_add_dialog(app: MergeTuiApp, pilot) -> AddModelDialog:
    await settle(pilot)
    await pilot.press("f6")
    app.screen.query_one("#models").focus()
    await pilot.press("a")
    await pilot.pause()
    assert isinstance(app.screen, AddModelDialog)
    return app.screen


async def test_add_model_tab_completes_and_one_enter_adds_it_as_an_absolute_path(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    import shutil

    shutil.copytree(llama_family["base"], tmp_path / "finetune-xyz")
    path = soup(tmp_path, llama_family)
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await open_add_dialog(app, pilot)
        field = dialog.query_one("#source")
        await pilot.press(*"finet")
        await pilot.pause(0.3)  # the completion is found in a worker
        await pilot.press("tab")
        assert field.value == "finetune-xyz/" and field.has_focus
        await pilot.press("enter")  # one enter: added, named from the folder
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RecipeScreen)
        entry = screen.recipe.models["finetune-xyz"]
        assert entry.source == str(tmp_path / "finetune-xyz")  # absolute, whatever was typed


async def test_add_model_refuses_a_folder_that_is_not_there_at_once(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    app = MergeTuiApp(RecipeDocument.open(soup(tmp_path, llama_family)))
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await open_add_dialog(app, pilot)
        await pilot.press(*"./no-such-model", "enter")
        await pilot.pause()
        assert app.screen is dialog
        message = shown(dialog.query_one("#message"))
        assert "no folder ./no-such-model" in message and str(tmp_path) in message
        assert dialog.query_one("#source").has_focus
        dialog.query_one("#source").value = "some-org/some-model"  # a Hub id is taken as typed
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen.recipe.models["some-model"].source == "some-org/some-model"


def test_model_sources_are_stored_in_one_form(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(llama_family["a"], tmp_path / "models" / "a")
    absolute = str(tmp_path / "models" / "a")
    for typed in ("models/a", "./models/a/", "~/models/a", absolute, "models/../models/a"):
        assert model_source(typed) == (absolute, ""), typed
    assert model_source("org/name") == ("org/name", "")
    for refused in ("chat", "./chat", "models/b/c", "", str(tmp_path / "models" / "a" / "x")):
        source, why = model_source(refused)
        assert source is None and why, refused
    (tmp_path / "notes.txt").write_text("x")
    assert "is a file" in model_source("notes.txt")[1]


# -- 18: small ones -------------------------------------------------------------------------------


async def test_the_slices_tab_shows_layers_as_the_file_writes_them(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    from textual.widgets import DataTable

    path = tmp_path / "stack.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "passthrough"

            [models.x]
            source = "{llama_family["a"]}"

            [[slices]]
            sources = [{{ model = "x", layers = [0, 3] }}]

            [[slices]]
            sources = [{{ model = "x", layers = [1, 4] }}]
            """
        ),
        encoding="utf-8",
    )
    app = MergeTuiApp(RecipeDocument.open(path))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f8")
        await pilot.pause()
        table = app.screen.query_one("#slices-table", DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert rows == [["1", "x", "[0, 3]", "3"], ["2", "x", "[1, 4]", "3"]]


async def test_the_s_curve_presets_say_they_look_alike(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    from mergetui.editing.presets import preset_values

    # The two curves really are within 1% of each other: no picture can tell them apart...
    xs = 1001
    cosine = preset_values("cosine", xs, 0.0, 1.0)
    smooth = preset_values("smoothstep", xs, 0.0, 1.0)
    assert max(abs(c - s) for c, s in zip(cosine, smooth, strict=True)) <= 0.0101
    assert cosine[250] == pytest.approx((1 - math.cos(math.pi / 4)) / 2, abs=1e-6)
    assert smooth[250] == pytest.approx(3 / 16 - 2 / 64, abs=1e-6)
    # ...so the dialog says so beside the identical previews.
    app = MergeTuiApp(RecipeDocument.open(soup(tmp_path, llama_family)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f7")
        await pilot.press("p")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, PresetDialog)
        options = dialog.query_one("#presets")
        lines = {
            options.get_option_at_index(i).id: str(options.get_option_at_index(i).prompt)
            for i in range(options.option_count)
        }
        assert "≈ smoothstep (±1%)" in lines["cosine"]
        assert "≈ cosine (±1%)" in lines["smoothstep"]


def test_the_rate_is_measured_from_the_first_progress_report() -> None:
    estimate = RateEstimate(total=1000)
    estimate.observe(40.0, 0)  # nothing written yet: not a start
    assert estimate.eta(40.0) is None
    estimate.observe(50.0, 10)  # 50 s of start-up, then 10 bytes a second
    assert estimate.rate(51.0) is None  # too soon to say
    estimate.observe(51.0, 20)
    assert estimate.eta(51.0) is None  # still under MIN_SECONDS
    estimate.observe(53.0, 40)
    assert estimate.rate(53.0) == pytest.approx(10.0)
    assert estimate.eta(53.0) == pytest.approx(96.0)  # 960 bytes at 10/s; start-up not counted
    assert estimate.eta(63.0) == pytest.approx(960 / (30 / 13))  # a stall slows the rate


async def test_the_first_eta_on_the_run_screen_is_sane(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found as a new user: the first ETA was five times the real time, because the start-up
    (planning, opening the checkpoints, the first tensor) counted as merging time."""
    now = [1000.0]
    monkeypatch.setattr(clocks, "CLOCK", lambda: now[0])
    reached, release = gate_the_engine(monkeypatch)
    app = MergeTuiApp(RecipeDocument.open(soup(tmp_path, llama_family)))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("f4")
        await pilot.pause()
        screen = app.screen
        await pilot.press("r")
        await wait_reached(pilot, reached)  # held: only the reports below reach the screen
        await pilot.pause()
        total = screen.state.total_bytes
        assert total > 0

        async def report(seconds: float, share: float) -> str:
            now[0] = 1000.0 + seconds
            state = ProgressState(
                bytes_done=int(total * share), total_bytes=total, tensor_count=10, tensors_done=1
            )
            screen.post_message(RunProgress(state))
            await pilot.pause()
            return shown(screen.query_one("#run-stats"))

        # 40 s of start-up, then 1% of the bytes a second: 100 s of merging in all.
        assert "ETA —" in await report(40.0, 0.01)
        assert "ETA —" in await report(41.0, 0.02)  # one second says too little
        stats = await report(45.0, 0.06)
        eta = re.search(r"ETA (\d+):(\d\d)", stats)
        assert eta, stats
        seconds = int(eta.group(1)) * 60 + int(eta.group(2))
        assert 90 <= seconds <= 100, stats  # 94 s are left (it said 705 s before)
        release.set()
        await until_done(app, pilot, screen)
        assert screen.last_outcome == "finished"


def test_diff_json_with_kind_says_what_the_table_says(
    tmp_path: Path,
    llama_family: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mergetui.cli import main
    from mergetui.paths import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "analysis-cache"))
    fam = llama_family
    args = ["diff", str(fam["a"]), str(fam["b"]), "--base", str(fam["base"]), "--json"]
    assert main([*args, "--kind", "mlp"]) == 0
    mlp = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    whole = json.loads(capsys.readouterr().out)
    assert mlp["kind"] == "mlp" and whole["kind"] is None
    layer0 = mlp["rows"][1]
    assert layer0["row"] == 0
    assert layer0["agreement"] == layer0["kinds"]["mlp"]["agreement"]  # the README's jq
    assert layer0["agreement"] != whole["rows"][1]["agreement"]
    assert layer0["cosine"] == whole["rows"][1]["kinds"]["mlp"]["cosine"]
    assert mlp["overall"] == whole["kinds"]["mlp"]
    assert mlp["rows"][0]["row"] == "embed" and mlp["rows"][0]["agreement"] is None  # no MLPs


def test_the_readme_set_up_names_the_cpu_torch_build_and_keeps_two_commands() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert [c.count("\n") for c in commands] == [1, 1]  # exactly two one-line set-up commands
    cpu = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in setup and setup.index(cpu) < setup.index("```bash")  # said before them
    example = next(line for line in readme.splitlines() if "jq '.rows[1].agreement'" in line)
    assert "--kind mlp" in example


def test_ci_runs_the_readmes_test_command_exactly() -> None:
    """CI must run what a developer is told to run: the README's second set-up command."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    test_command = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)[1]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    flags = "--quiet --disable-pip-version-check "
    assert test_command.replace("pip install ", f"python -m pip install {flags}") in ci
    assert "lint-imports" in test_command


def test_the_default_demo_folder_is_ignored_by_git() -> None:
    from mergetui.cli.cmd_demo import DEFAULT_DIR

    checked = subprocess.run(
        ["git", "check-ignore", "-q", f"{DEFAULT_DIR}/base/model.safetensors"],
        cwd=REPO,
        check=False,
    )
    assert checked.returncode == 0, f"{DEFAULT_DIR}/ is not in .gitignore"

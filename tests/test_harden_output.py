"""Issue 13, items 2, 5 and three small ones of 18: what `--force` may replace, temporary folders
that signals and kill -9 leave, the dry run's device and peak estimate, `merge nope.toml`'s fix.

The signal tests run `mergetui merge` in a real subprocess on tiny checkpoints. The child holds the
real engine at its first finished tensor (as tests/tui_helpers.py `gate_the_engine` does in-process)
until the merge is cancelled, so every signal lands mid-merge whatever the machine's speed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mergetui.cli import main
from mergetui.errors import UserError
from mergetui.merge import plan as plan_module
from mergetui.merge import runner as runner_module
from mergetui.merge import work as work_module
from mergetui.merge.plan import make_plan
from mergetui.merge.runner import run_merge
from mergetui.merge.target import LOCK_FILE, TEMP_MARKER, remove_stale_temps
from mergetui.recipe.io import load_recipe


def _temps(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if TEMP_MARKER in p.name)


def _recipe(family: dict[str, Path], path: Path, method: str = "ties") -> Path:
    """A recipe over the family: a task-vector method onto `base` (weights and densities),
    linear over all three, or slerp between base and a."""
    lines = ["[merge]", f'method = "{method}"', 'dtype = "bfloat16"']
    lines += [] if method == "linear" else ['base = "base"']
    lines += ["", "[parameters]", "t = 0.3" if method == "slerp" else "weight = 0.5", ""]
    for name in ("base", "a") if method == "slerp" else ("base", "a", "b"):
        lines += [f"[models.{name}]", f'source = "{family[name]}"']
        if name != "base" and method not in ("slerp", "linear"):
            lines.append("parameters = { density = 0.6 }")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _merged(family: dict[str, Path], out: Path, recipe_dir: Path) -> Path:
    """A previous merge's output at `out` (the only kind of folder --force replaces)."""
    recipe = _recipe(family, recipe_dir / "previous.toml")
    assert main(["merge", str(recipe), "--out", str(out), "--device", "cpu"]) == 0
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------------------------
# Item 2: --force replaces only what a previous merge wrote


def test_force_replaces_a_previous_merge_and_an_empty_folder(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    out = _merged(llama_family, tmp_path / "out", tmp_path)
    (out / "README.md").write_text("the previous card")
    recipe = _recipe(llama_family, tmp_path / "r.toml", method="linear")
    assert main(["merge", str(recipe), "--out", str(out), "--force"]) == 0
    assert "linear" in (out / "mergetui.toml").read_text()
    assert (out / "README.md").read_text() != "the previous card"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["merge", str(recipe), "--out", str(empty), "--force"]) == 0
    assert (empty / "model.safetensors").is_file()
    assert _temps(tmp_path) == []


def test_force_never_replaces_the_working_folder_even_a_merge_output(
    llama_family: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--out . --force` wiped the working folder; here it is a merge's output, so only the
    working-folder rule stands in the way."""
    out = _merged(llama_family, tmp_path / "out", tmp_path / "recipes")
    before = _snapshot(out)
    recipe = _recipe(llama_family, tmp_path / "recipes" / "r.toml")
    monkeypatch.chdir(out)
    capsys.readouterr()
    assert main(["merge", str(recipe), "--out", ".", "--force"]) == 1
    err = capsys.readouterr().err
    assert "only replaces a folder that a previous merge wrote" in err
    assert "is the working folder" in err and "--out" in err
    assert _snapshot(out) == before


def test_force_never_replaces_a_folder_holding_the_working_folder(
    llama_family: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _merged(llama_family, tmp_path / "out", tmp_path)
    inside = out / "work"
    inside.mkdir()
    monkeypatch.chdir(inside)
    before = _snapshot(out)
    recipe = _recipe(llama_family, tmp_path / "r.toml")
    assert main(["merge", str(recipe), "--out", str(out), "--force"]) == 1
    assert "holds the working folder" in capsys.readouterr().err
    assert _snapshot(out) == before and inside.is_dir()


def test_force_never_replaces_the_recipes_folder(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out <recipes folder> --force` deleted the recipes."""
    recipes = tmp_path / "recipes"
    recipe = _recipe(llama_family, recipes / "r.toml")
    (recipes / "other.yaml").write_text("merge_method: linear\n")
    before = _snapshot(recipes)
    assert main(["merge", str(recipe), "--out", str(recipes), "--force"]) == 1
    assert "is the recipe's folder" in capsys.readouterr().err
    assert _snapshot(recipes) == before


def test_force_never_replaces_an_input(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(llama_family, tmp_path / "r.toml")
    before = _snapshot(llama_family["a"])
    assert main(["merge", str(recipe), "--out", str(llama_family["a"]), "--force"]) == 1
    assert "overlaps the input model" in capsys.readouterr().err
    assert _snapshot(llama_family["a"]) == before


@pytest.mark.parametrize("extra", ["notes.txt", "subfolder", "link"])
def test_force_never_replaces_a_merge_output_holding_anything_else(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str
) -> None:
    out = _merged(llama_family, tmp_path / "out", tmp_path)
    recipe = _recipe(llama_family, tmp_path / "r.toml")
    if extra == "notes.txt":
        (out / extra).write_text("my notes")
    elif extra == "subfolder":
        (out / extra).mkdir()
        (out / extra / "results.json").write_text("{}")
    else:
        (out / extra).symlink_to(recipe)
    before = _snapshot(out)
    assert main(["merge", str(recipe), "--out", str(out), "--force"]) == 1
    err = capsys.readouterr().err
    assert f"holds files a merge does not write ({extra})" in err
    assert "choose another --out" in err
    assert _snapshot(out) == before
    assert _temps(tmp_path) == []


def test_force_never_replaces_a_folder_without_a_merges_marks(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files named like a merge's, but no recipe copy: not provably a merge's output."""
    out = _merged(llama_family, tmp_path / "out", tmp_path)
    (out / "mergetui.toml").unlink()
    before = _snapshot(out)
    recipe = _recipe(llama_family, tmp_path / "r.toml")
    assert main(["merge", str(recipe), "--out", str(out), "--force"]) == 1
    assert "is not a merge's output" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_a_mergekit_comment_cannot_make_force_replace_an_unrelated_folder(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `# mergetui: {"output": ...}` comment chooses the output; with --force it replaced an
    unrelated folder."""
    victim = tmp_path / "photos"
    victim.mkdir()
    (victim / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    config = tmp_path / "configs" / "soup.yml"
    config.parent.mkdir()
    config.write_text(
        f'# mergetui: {{"output": "{victim}"}}\n'
        + textwrap.dedent(
            f"""\
            models:
              - model: {llama_family["a"]}
                parameters: {{weight: 0.5}}
              - model: {llama_family["b"]}
                parameters: {{weight: 0.5}}
            merge_method: linear
            dtype: float32
            """
        ),
        encoding="utf-8",
    )
    assert load_recipe(config).output == str(victim)  # the comment is read: it is the target
    assert main(["merge", str(config), "--force"]) == 1
    err = capsys.readouterr().err
    assert "holds files a merge does not write (holiday.jpg)" in err
    assert (victim / "holiday.jpg").read_bytes() == b"\xff\xd8 not really a jpeg"
    assert sorted(p.name for p in victim.iterdir()) == ["holiday.jpg"]
    assert _temps(tmp_path) == []


def test_the_engine_itself_refuses_what_force_may_not_replace(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    """The app calls run_merge directly: the rule lives in the engine, checked again at the swap."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    plan = make_plan(load_recipe(_recipe(llama_family, tmp_path / "r.toml")), out=out)
    with pytest.raises(UserError) as info:
        run_merge(plan, force=True)
    assert "holds files a merge does not write (keep.txt)" in info.value.message
    assert (out / "keep.txt").read_text() == "mine" and _temps(tmp_path) == []

    # A folder that appears while merging is checked at the swap, with --force too.
    target = tmp_path / "late"
    plan = make_plan(load_recipe(_recipe(llama_family, tmp_path / "r.toml")), out=target)

    def appear(event: object) -> None:
        if type(event).__name__ == "TensorDone" and not target.exists():
            target.mkdir()
            (target / "keep.txt").write_text("mine")

    with pytest.raises(UserError) as info:
        run_merge(plan, force=True, on_event=appear)
    assert "keep.txt" in info.value.message
    assert (target / "keep.txt").read_text() == "mine" and _temps(tmp_path) == []


def test_dry_run_says_when_force_cannot_replace_the_output(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    recipe = _recipe(llama_family, tmp_path / "r.toml")
    assert main(["merge", str(recipe), "--out", str(out), "--force", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "--force cannot replace it" in text and "keep.txt" in text
    previous = _merged(llama_family, tmp_path / "previous", tmp_path)
    capsys.readouterr()
    assert main(["merge", str(recipe), "--out", str(previous), "--force", "--dry-run"]) == 0
    assert "--force will replace it" in capsys.readouterr().out


async def test_the_run_screen_does_not_offer_to_replace_a_foreign_folder(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.editing.document import RecipeDocument
    from mergetui.paths import CONFIG_ENV, DATA_ENV
    from mergetui.tui.app import MergeTuiApp
    from mergetui.tui.dialogs.confirm import ConfirmDialog
    from mergetui.tui.run.screen import RunScreen

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "out"
    victim.mkdir()
    (victim / "thesis.tex").write_text("chapter 1")
    recipe = _recipe(llama_family, tmp_path / "r.toml")
    recipe.write_text(
        recipe.read_text().replace("[merge]\n", f'[merge]\noutput = "{victim}"\n'),
        encoding="utf-8",
    )
    app = MergeTuiApp(RecipeDocument.open(recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.4)
        await app.workers.wait_for_complete()
        await pilot.press("f4")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await pilot.press("r")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmDialog)
        assert not screen.running
        messages = [n.message for n in app._notifications]
        assert any("thesis.tex" in m and "previous merge" in m for m in messages), messages
    assert (victim / "thesis.tex").read_text() == "chapter 1"
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]


# ----------------------------------------------------------------------------------------------
# Item 5: signals and kill -9 leave no temporary folder behind

_CHILD = r"""
import shutil, sys, time
from pathlib import Path

from mergetui.merge import runner

held, cleaning, go = (Path(p) for p in sys.argv[1:4])
real_merge, real_rmtree = runner.run_merge, shutil.rmtree


def gated(plan, *, on_event=None, cancel=None, force=False):
    def listener(event):
        if type(event).__name__ == "TensorDone" and not held.exists():
            held.write_text(str(plan.output_dir))  # the merge is surely running
            while not cancel.is_set():  # held here until a signal cancels the merge
                time.sleep(0.01)
        if on_event is not None:
            on_event(event)

    return real_merge(plan, on_event=listener, cancel=cancel, force=force)


def slow_rmtree(path, *args, **kwargs):
    # Hold the clean-up of the temporary folder until the test says go (if it asks to).
    if ".mergetui-tmp-" in str(path) and go.name != "-":
        cleaning.write_text("removing")
        while not go.exists():
            time.sleep(0.01)
    return real_rmtree(path, *args, **kwargs)


runner.run_merge = gated
shutil.rmtree = slow_rmtree
from mergetui.cli import main

sys.exit(main(sys.argv[4:]))
"""


class _Child:
    """`mergetui merge` in a subprocess, held at its first finished tensor until cancelled."""

    def __init__(self, tmp_path: Path, recipe: Path, out: Path, hold_cleanup: bool = False):
        script = tmp_path / "child.py"
        script.write_text(_CHILD, encoding="utf-8")
        self.held = tmp_path / "held.flag"
        self.cleaning = tmp_path / "cleaning.flag"
        self.go = tmp_path / "go.flag" if hold_cleanup else Path("-")
        for flag in (self.held, self.cleaning):
            flag.unlink(missing_ok=True)
        args = [str(self.held), str(self.cleaning), str(self.go)]
        args += ["merge", str(recipe), "--out", str(out), "--device", "cpu"]
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for(self, flag: Path) -> None:
        deadline = time.monotonic() + 120
        while not flag.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the merge ended early: {self.proc.communicate()}")
            assert time.monotonic() < deadline, f"{flag.name} never appeared"
            time.sleep(0.02)

    def finish(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_cancel_like_ctrl_c(
    llama_family: dict[str, Path], tmp_path: Path, signum: int, code: int
) -> None:
    out = tmp_path / "out"
    child = _Child(tmp_path, _recipe(llama_family, tmp_path / "r.toml"), out)
    child.wait_for(child.held)
    assert len(_temps(tmp_path)) == 1  # mid-merge: the temporary folder exists
    child.proc.send_signal(signum)
    returncode, err = child.finish()
    assert returncode == code, err
    assert "Cancelled" in err and "Traceback" not in err
    assert _temps(tmp_path) == [] and not out.exists()


def test_a_second_ctrl_c_while_cleaning_up_leaves_nothing_either(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    child = _Child(tmp_path, _recipe(llama_family, tmp_path / "r.toml"), out, hold_cleanup=True)
    child.wait_for(child.held)
    child.proc.send_signal(signal.SIGINT)
    child.wait_for(child.cleaning)  # the engine is removing its temporary folder...
    child.proc.send_signal(signal.SIGINT)  # ...and the user presses Ctrl-C again
    time.sleep(0.3)  # let the signal be handled before the clean-up goes on
    child.go.write_text("go")
    returncode, err = child.finish()
    assert returncode == 130, err
    assert "Traceback" not in err
    assert _temps(tmp_path) == [] and not out.exists()


def test_after_kill_9_the_next_merge_removes_the_stale_temporary_folder(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(llama_family, tmp_path / "r.toml")
    out = tmp_path / "out"
    child = _Child(tmp_path, recipe, out)
    child.wait_for(child.held)
    child.proc.kill()
    child.finish()
    [stale] = _temps(tmp_path)
    assert stale.name.startswith(f".out{TEMP_MARKER}{child.proc.pid}-")  # names its process
    assert (stale / LOCK_FILE).is_file()
    # Another target's temporary folder and a folder without the lock are not ours to remove.
    other = tmp_path / f".other{TEMP_MARKER}{child.proc.pid}-x"
    unlocked = tmp_path / f".out{TEMP_MARKER}1-y"
    for folder in (other, unlocked):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    (other / LOCK_FILE).write_text("1\n")

    capsys.readouterr()
    assert main(["merge", str(recipe), "--out", str(out), "--device", "cpu"]) == 0
    assert f"removed {stale.name}" in capsys.readouterr().err
    assert not stale.exists() and (out / "model.safetensors").is_file()
    assert not (out / LOCK_FILE).exists()  # the lock never reaches the output
    assert other.is_dir() and unlocked.is_dir()


def test_a_running_merges_temporary_folder_is_left_alone(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _recipe(llama_family, tmp_path / "r.toml")
    out = tmp_path / "out"
    child = _Child(tmp_path, recipe, out)
    child.wait_for(child.held)
    [running] = _temps(tmp_path)
    assert remove_stale_temps(out) == [] and running.is_dir()
    # A second merge into the same target finishes beside it and leaves it alone...
    assert main(["merge", str(recipe), "--out", str(out), "--device", "cpu"]) == 0
    assert running.is_dir() and (out / "model.safetensors").is_file()
    # ...and the first, cancelled, removes its own.
    child.proc.send_signal(signal.SIGTERM)
    returncode, err = child.finish()
    assert returncode == 143, err
    assert _temps(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Item 18: the dry run's device and peak estimate, `merge nope.toml`


def test_dry_run_shows_the_device_a_run_would_use(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mergetui.device import resolve_device

    recipe = _recipe(llama_family, tmp_path / "r.toml")
    assert main(["merge", str(recipe), "--out", str(tmp_path / "x"), "--dry-run"]) == 0
    expected = str(resolve_device("auto"))  # cuda, then mps, then cpu
    assert expected != "auto"
    assert re.search(rf"device\s+{expected} \(auto\)", capsys.readouterr().out)
    assert (
        main(["merge", str(recipe), "--out", str(tmp_path / "x"), "--dry-run", "--device", "cpu"])
        == 0
    )
    assert re.search(r"device\s+cpu\s*$", capsys.readouterr().out, re.MULTILINE)


def test_merge_of_a_missing_recipe_says_how_to_fix_it_like_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "nope.toml"]) == 1
    validate_err = capsys.readouterr()
    assert "fix: check the path" in validate_err.out + validate_err.err
    assert main(["merge", "nope.toml"]) == 1
    err = capsys.readouterr().err
    assert "recipe file not found" in err and "check the path" in err


@pytest.fixture(scope="module")
def wide_family(tiny_model_factory) -> dict[str, Path]:  # noqa: ANN001 - the conftest factory
    """A base and two fine-tunes big enough for pooled buffers, pieces and shared workers:
    1M-entry embeddings and head, 256K-entry MLP projections, bfloat16."""
    shape = dict(num_layers=2, hidden_size=256, intermediate_size=1024, vocab_size=4096)
    base = tiny_model_factory("llama", seed=0, dtype="bfloat16", **shape)
    family = {"base": base}
    for seed, name in ((1, "a"), (2, "b")):
        family[name] = tiny_model_factory("llama", seed=seed, base=base, dtype="bfloat16")
    return family


@pytest.mark.parametrize("method", ["ties", "dare_ties", "linear", "slerp", "della"])
def test_the_peak_estimate_covers_what_the_engine_holds_on_any_core_count(
    wide_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """The estimate is the baseline plus a bound on the engine's own count of the memory it holds
    (runner's `_Ledger`), whatever the number of workers: it assumed two workers and left out the
    reader's whole budget, each worker's retained working set, the pool and the writer's queue,
    and was 10-16% under the real peak for ties on four or more cores."""
    monkeypatch.setattr(work_module, "PIECE_ELEMENTS", 1 << 18)  # linear streams pieces
    recipe = load_recipe(_recipe(wide_family, tmp_path / "r.toml", method=method))
    for cores in (1, 2, 4, 16):
        monkeypatch.setattr(runner_module, "_core_count", lambda cores=cores: cores)
        plan = make_plan(recipe, out=tmp_path / f"out-{cores}", device="cpu", seed=1)
        result = run_merge(plan)
        held = result.accounted_peak_bytes
        assert held > 4 * 1024 * 1024  # the inputs of the embeddings alone: a real count
        assert plan.estimated_peak_bytes >= plan_module.PROCESS_BASELINE_BYTES + held, cores

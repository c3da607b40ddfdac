"""Issue 13, items 1 and 8: a merge never runs a checkpoint's own Python (nor asks on stdin), and
leaves its `auto_map` and `.py` files out of the output unless `--trust-remote-code`; models of
different architectures are refused unless `--allow-mixed-architectures` (mergekit's
`--allow-crimes`).

The "hostile" checkpoint is a tiny real Llama whose config and tokenizer config name code shipped
beside them (model_type `evil_llama`, tokenizer class `EvilTokenizer`, so transformers cannot load
either without that code); importing any of its .py files writes a marker file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mergetui.cli import main
from mergetui.errors import UserError
from mergetui.merge.plan import make_plan
from mergetui.recipe.io import load_recipe
from mergetui.recipe.validate import validate_recipe

CODE_FILES = ["configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"]


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def _with_code(source: Path, target: Path, marker: Path, *, custom: bool = True) -> Path:
    """A copy of `source` that ships Python code; `custom` also makes transformers need it."""
    shutil.copytree(source, target)
    _edit_json(
        target / "config.json",
        auto_map={
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
        },
        **({"model_type": "evil_llama"} if custom else {}),
    )
    _edit_json(
        target / "tokenizer_config.json",
        auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]},
        **({"tokenizer_class": "EvilTokenizer"} if custom else {}),
    )
    body = f"from pathlib import Path\nPath({str(marker)!r}).write_text('the code ran')\n"
    for name, cls in zip(
        CODE_FILES, ("EvilConfig", "EvilForCausalLM", "EvilTokenizer"), strict=True
    ):
        (target / name).write_text(body + f"class {cls}:\n    pass\n", encoding="utf-8")
    return target


def _recipe(
    folder: Path, a: Path, b: Path, *, chat_template: bool = False, base: bool = False
) -> Path:
    path = folder / "r.toml"
    lines = ["[merge]", 'method = "linear"', f'output = "{folder / "out"}"']
    if chat_template:
        lines.append('chat_template = "chatml"')
    if base:
        lines.append('base = "a"')
    for name, source in (("a", a), ("b", b)):
        lines += [f"[models.{name}]", f'source = "{source}"', "parameters = { weight = 0.5 }"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def hostile(tmp_path: Path, llama_family: dict[str, Path]) -> dict[str, Path]:
    marker = tmp_path / "MARKER"
    return {
        "a": _with_code(llama_family["a"], tmp_path / "evil-a", marker),
        "b": _with_code(llama_family["b"], tmp_path / "evil-b", marker),
        "marker": marker,
    }


def _output_has_no_code(out: Path) -> None:
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    assert sorted(p.name for p in out.glob("*.py")) == []


# ----------------------------------------------------------------------------------------------
# Item 1: a merge never runs a checkpoint's code


def test_a_chat_template_merge_neither_runs_the_code_nor_reads_stdin(
    tmp_path: Path, hostile: dict[str, Path]
) -> None:
    """The bug: transformers asked "Do you wish to run the custom code? [y/N]" mid-merge and a
    "y" on stdin ran it. Now nothing is read from stdin (its offset stays 0) and nothing runs."""
    recipe = _recipe(tmp_path, hostile["a"], hostile["b"], chat_template=True)
    answers = tmp_path / "answers.txt"
    answers.write_text("y\n" * 20, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "200"}
    with answers.open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "mergetui", "merge", str(recipe), "--device", "cpu"],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert os.lseek(stdin.fileno(), 0, os.SEEK_CUR) == 0  # shared offset: never read
    text = done.stdout + done.stderr
    assert not hostile["marker"].exists(), text
    assert "Do you wish to run" not in text
    assert done.returncode == 1, text
    assert "needs its own Python code" in text and "--trust-remote-code" in text
    assert "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_an_untrusted_merge_leaves_the_code_out_and_says_so(
    tmp_path: Path, hostile: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tmp_path, hostile["a"], hostile["b"])
    assert main(["merge", str(recipe), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "auto_map" in dry and "--trust-remote-code" in dry

    assert main(["merge", str(recipe), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    out = tmp_path / "out"
    _output_has_no_code(out)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    flat = " ".join(err.split())
    assert "config.json" in flat and "tokenizer_config.json" in flat
    for name in CODE_FILES:
        assert name in flat
    assert "--trust-remote-code" in flat
    assert not hostile["marker"].exists()


def test_trust_remote_code_copies_the_auto_map_and_the_code(
    tmp_path: Path, hostile: dict[str, Path]
) -> None:
    recipe = _recipe(tmp_path, hostile["a"], hostile["b"])
    assert main(["merge", str(recipe), "--device", "cpu", "--trust-remote-code"]) == 0
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_evil.EvilForCausalLM"
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"]["AutoTokenizer"][1] == "tokenization_evil.EvilTokenizer"
    assert sorted(p.name for p in out.glob("*.py")) == CODE_FILES
    assert not hostile["marker"].exists()  # copied, not run


def test_a_chat_template_with_a_tokenizer_transformers_knows_keeps_no_auto_map(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    """A known model type whose tokenizer config also names shipped code: the tokenizer loads
    with transformers' own class, the template is set, and the saved files name no code."""
    marker = tmp_path / "MARKER"
    a = _with_code(llama_family["a"], tmp_path / "a", marker, custom=False)
    b = _with_code(llama_family["b"], tmp_path / "b", marker, custom=False)
    recipe = _recipe(tmp_path, a, b, chat_template=True)
    plan = make_plan(load_recipe(recipe), recipe_dir=tmp_path)
    assert plan.trust_remote_code is False and "auto_map" not in plan.output_config
    assert main(["merge", str(recipe), "--device", "cpu"]) == 0
    out = tmp_path / "out"
    _output_has_no_code(out)
    saved = (
        (out / "chat_template.jinja").read_text() if (out / "chat_template.jinja").is_file() else ""
    )
    saved += json.loads((out / "tokenizer_config.json").read_text()).get("chat_template") or ""
    assert "<|im_start|>" in saved
    assert not marker.exists()


async def test_the_run_screen_merges_without_trust(
    tmp_path: Path, hostile: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.editing.document import RecipeDocument
    from mergetui.paths import CONFIG_ENV, DATA_ENV
    from mergetui.tui.app import MergeTuiApp
    from mergetui.tui.run.screen import RunScreen

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    app = MergeTuiApp(RecipeDocument.open(_recipe(tmp_path, hostile["a"], hostile["b"])))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _run_from_the_app(app, pilot)
        assert isinstance(screen, RunScreen) and screen.last_outcome == "finished"
        log = " ".join(strip.text for strip in screen.query_one("#run-log").lines)
        assert "--trust-remote-code" in " ".join(log.split())
    _output_has_no_code(tmp_path / "out")
    assert not hostile["marker"].exists()


async def _run_from_the_app(app, pilot):
    await pilot.pause(0.4)
    await app.workers.wait_for_complete()
    await pilot.press("f4")
    await pilot.pause()
    screen = app.screen
    await pilot.press("r")
    for _ in range(400):
        await app.workers.wait_for_complete()
        await pilot.pause(0.05)
        if not screen.running:
            return screen
    raise AssertionError("the merge did not end")


# ----------------------------------------------------------------------------------------------
# Item 8: models of different architectures


def _relabel(source: Path, target: Path, architecture: str, model_type: str) -> Path:
    shutil.copytree(source, target)
    _edit_json(target / "config.json", architectures=[architecture], model_type=model_type)
    return target


@pytest.fixture
def llama_and_qwen(tmp_path: Path, llama_family: dict[str, Path]) -> dict[str, Path]:
    """A Llama and a "Qwen2" of the very same tensor names and shapes (only the config differs)."""
    return {
        "a": llama_family["a"],
        "b": _relabel(llama_family["b"], tmp_path / "qwen", "Qwen2ForCausalLM", "qwen2"),
    }


def test_mixed_architectures_are_refused_by_merge(
    tmp_path: Path, llama_and_qwen: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tmp_path, llama_and_qwen["a"], llama_and_qwen["b"])
    assert main(["merge", str(recipe), "--device", "cpu"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "models.b.source" in err and "different architectures" in err
    assert "'a' is LlamaForCausalLM (llama)" in err and "'b' is Qwen2ForCausalLM (qwen2)" in err
    assert "--allow-mixed-architectures" in err and "--allow-crimes" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--allow-mixed-architectures", "--allow-crimes"])
def test_mixed_architectures_merge_when_allowed(
    flag: str, tmp_path: Path, llama_and_qwen: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tmp_path, llama_and_qwen["a"], llama_and_qwen["b"])
    assert main(["merge", str(recipe), "--device", "cpu", flag]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "mixing them as asked" in err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_the_plan_refuses_and_names_the_models(
    tmp_path: Path, llama_and_qwen: dict[str, Path]
) -> None:
    recipe = load_recipe(_recipe(tmp_path, llama_and_qwen["b"], llama_and_qwen["a"], base=True))
    with pytest.raises(UserError) as caught:
        make_plan(recipe, recipe_dir=tmp_path)
    assert caught.value.where == "models.b.source"
    assert "'a' is Qwen2ForCausalLM (qwen2)" in caught.value.message  # a is the base here
    plan = make_plan(recipe, recipe_dir=tmp_path, allow_mixed_architectures=True)
    assert any("different architectures" in n for n in plan.notices)
    assert plan.output_config["model_type"] == "qwen2"  # the base's config


def test_mergekits_rule_for_the_same_architecture(
    tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    """`LLaMaForCausalLM` is one of the names of mergekit's llama definition: the same
    architecture. `PhiForCausalLM` names two definitions, told apart by model_type."""
    alias = _relabel(llama_family["b"], tmp_path / "alias", "LLaMaForCausalLM", "llama")
    plan = make_plan(load_recipe(_recipe(tmp_path, llama_family["a"], alias)), recipe_dir=tmp_path)
    assert not any("architectures" in n for n in plan.notices)

    phi = _relabel(llama_family["a"], tmp_path / "phi", "PhiForCausalLM", "phi")
    msft = _relabel(llama_family["b"], tmp_path / "phi-msft", "PhiForCausalLM", "phi-msft")
    with pytest.raises(UserError, match="PhiForCausalLM \\(phi-msft\\)"):
        make_plan(load_recipe(_recipe(tmp_path, phi, msft)), recipe_dir=tmp_path)


def test_validate_reports_mixed_architectures(
    tmp_path: Path, llama_and_qwen: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _recipe(tmp_path, llama_and_qwen["a"], llama_and_qwen["b"])
    problems = validate_recipe(load_recipe(path), base_dir=tmp_path)
    [problem] = [p for p in problems if "architecture" in p.message]
    assert problem.is_error and problem.where == "models.b.source"
    assert "Qwen2ForCausalLM" in problem.message and "LlamaForCausalLM" in problem.message
    assert main(["validate", str(path)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "Qwen2ForCausalLM" in out and "--allow-mixed-architectures" in out


def test_the_checkpoint_check_uses_the_same_rule(
    tmp_path: Path, llama_family: dict[str, Path], llama_and_qwen: dict[str, Path]
) -> None:
    from mergetui.checkpoints.compat import compare_checkpoints
    from mergetui.checkpoints.inspect import open_checkpoint

    alias = _relabel(llama_family["b"], tmp_path / "alias", "LLaMaForCausalLM", "llama")
    same = {"a": open_checkpoint(llama_family["a"]), "b": open_checkpoint(alias)}
    assert compare_checkpoints(same, "a") == []
    mixed = {name: open_checkpoint(path) for name, path in llama_and_qwen.items()}
    [problem] = compare_checkpoints(mixed, "a")
    assert problem.model == "b" and "Qwen2ForCausalLM" in problem.message


async def test_the_run_screen_shows_the_refusal(
    tmp_path: Path, llama_and_qwen: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.editing.document import RecipeDocument
    from mergetui.paths import CONFIG_ENV, DATA_ENV
    from mergetui.tui.app import MergeTuiApp

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, llama_and_qwen["a"], llama_and_qwen["b"])
    app = MergeTuiApp(RecipeDocument.open(recipe))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _run_from_the_app(app, pilot)
        assert screen.last_outcome == "failed"
        state = " ".join(str(screen.query_one("#run-state").render()).split())
        assert "different architectures" in state
    assert not (tmp_path / "out").exists()


def test_the_plan_default_stays_safe(tmp_path: Path, hostile: dict[str, Path]) -> None:
    """make_plan, as the app and validate call it: no trust unless asked for."""
    recipe = load_recipe(_recipe(tmp_path, hostile["a"], hostile["b"]))
    plan = make_plan(recipe, recipe_dir=tmp_path)
    assert "auto_map" not in plan.output_config
    assert any("tokenization_evil.py" in n for n in plan.notices)
    trusted = make_plan(recipe, recipe_dir=tmp_path, trust_remote_code=True)
    assert "auto_map" in trusted.output_config
    assert not any("Python code" in n for n in trusted.notices)


def test_the_guard_turns_transformers_question_into_an_error(
    hostile: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: even a load that leaves trust_remote_code unset (so transformers asks
    "Do you wish to run the custom code?") cannot read an answer under the guard."""
    import io

    from transformers import AutoTokenizer

    from mergetui.merge.remote_code import no_stdin_prompts

    answers = io.StringIO("y\n" * 5)
    monkeypatch.setattr(sys, "stdin", answers)
    with no_stdin_prompts(), pytest.raises(Exception, match="trust_remote_code"):
        AutoTokenizer.from_pretrained(str(hostile["a"]))
    assert answers.tell() == 0
    assert not hostile["marker"].exists()
    import builtins

    assert builtins.input is not None and builtins.input.__module__ == "builtins"  # restored

"""`mergetui validate` and `mergetui convert`: exit codes, messages, files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mergetui.cli import main
from mergetui.recipe.io import load_recipe

SAMPLES = Path(__file__).resolve().parent.parent / "sample_recipes"

GOOD = """\
[merge]
method = "linear"

[models.a]
source = "./a"

[parameters]
weight = 1
"""

BAD = """\
[merge]
method = "ties"
base = "a"

[models.a]
source = "./a"

[models.b]
source = "./b"

[parameters]
density = 1.5
"""


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "good.toml").write_text(GOOD)
    (tmp_path / "bad.toml").write_text(BAD)
    return tmp_path


def test_validate_ok(recipes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(recipes / "good.toml"), "--offline"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"{recipes / 'good.toml'}: ok"


def test_validate_lists_problems_and_fails(
    recipes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = recipes / "bad.toml"
    assert main(["validate", str(recipes / "good.toml"), str(bad), "--offline"]) == 1
    out = capsys.readouterr().out
    assert f"{recipes / 'good.toml'}: ok" in out
    assert f"{bad}: 2 errors" in out
    assert f"error   {bad}:12 (parameters.density): density must be in (0, 1]; got 1.5" in out
    assert f"{bad}:8 (models.b.parameters.weight): missing required parameter 'weight'" in out
    assert "fix: density is the share of entries kept" in out


def test_validate_warnings_alone_pass(recipes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = recipes / "warn.toml"
    path.write_text(GOOD + "wieght = 2\n")
    assert main(["validate", str(path), "--offline"]) == 0
    out = capsys.readouterr().out
    assert "1 warning" in out and "did you mean 'weight'?" in out


def test_validate_reports_unreadable_recipes_and_goes_on(
    recipes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = recipes / "broken.toml"
    broken.write_text('[merge]\nmethod = "linear"\nmethd = 1\n')
    assert main(["validate", str(broken), str(recipes / "good.toml"), "--offline"]) == 1
    out = capsys.readouterr().out
    assert f"{broken}:3" in out and "unknown key 'merge.methd'" in out
    assert f"{recipes / 'good.toml'}: ok" in out


def test_validate_json(recipes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(recipes / "bad.toml"), "--offline", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    problems = report[str(recipes / "bad.toml")]
    assert {p["where"] for p in problems} == {"parameters.density", "models.b.parameters.weight"}
    assert all(p["level"] == "error" and p["line"] for p in problems)


def test_validate_mergekit_yaml(recipes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = recipes / "card.yaml"
    path.write_text("models:\n  - model: ./a\nmerge_method: linear\nparameters:\n  weight: 1\n")
    assert main(["validate", str(path), "--offline"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"


def test_validate_needs_a_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2
    assert "RECIPE" in capsys.readouterr().err


def test_convert_toml_to_yaml_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # In one folder: across folders a relative output is rebased (tests/test_harden_paths.py).
    source = tmp_path / "marcoro14-slerp.toml"
    shutil.copyfile(SAMPLES / "marcoro14-slerp.toml", source)
    yaml_path = tmp_path / "marcoro.yaml"
    assert main(["convert", str(source), str(yaml_path)]) == 0
    assert f"wrote {yaml_path}" in capsys.readouterr().out
    config = yaml.safe_load(yaml_path.read_text())
    assert config["merge_method"] == "slerp"
    assert config["base_model"] == "AIDC-ai-business/Marcoroni-7B-v3"
    back = tmp_path / "back.toml"
    assert main(["convert", str(yaml_path), str(back)]) == 0
    assert load_recipe(back) == load_recipe(source)


def test_convert_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.yaml"
    target.write_text("keep me\n")
    assert main(["convert", str(SAMPLES / "marcoro14-slerp.toml"), str(target)]) == 1
    err = capsys.readouterr().err
    assert "output file already exists" in err and "--force" in err
    assert target.read_text() == "keep me\n"
    assert main(["convert", str(SAMPLES / "marcoro14-slerp.toml"), str(target), "--force"]) == 0
    assert target.read_text().startswith("# mergekit config written by mergetui.")


def test_convert_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", str(tmp_path / "missing.toml"), str(tmp_path / "x.yaml")]) == 1
    assert "recipe file not found" in capsys.readouterr().err
    assert main(["convert", str(SAMPLES / "marcoro14-slerp.toml"), str(tmp_path / "x.json")]) == 1
    assert "unknown recipe extension '.json'" in capsys.readouterr().err
    passthrough = tmp_path / "p.toml"
    passthrough.write_text(
        '[merge]\nmethod = "passthrough"\n[models.a]\nsource = "a"\n[models.a.parameters]\nscale = 2.0\n'
        '[[slices]]\nsources = [{ model = "a", layers = [0, 1] }]\n'
    )
    assert main(["convert", str(passthrough), str(tmp_path / "p.yaml")]) == 1
    err = capsys.readouterr().err
    assert "cannot write as mergekit YAML" in err and "models.a.parameters" in err
    assert not (tmp_path / "p.yaml").exists()


def test_convert_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["convert", "only-one.toml"])
    assert info.value.code == 2


def test_convert_rewrites_relative_model_folders(tmp_path: Path) -> None:
    (tmp_path / "models" / "a").mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.toml"
    recipe.write_text(
        '[merge]\nmethod = "linear"\n[models.a]\nsource = "../models/a"\n'
        '[models.hub]\nsource = "org/model"\n[parameters]\nweight = 1\n'
    )
    out = tmp_path / "elsewhere" / "deeper" / "r.yaml"
    assert main(["convert", str(recipe), str(out)]) == 0
    converted = load_recipe(out)
    assert converted.models["a"].source == "../../models/a"
    assert (out.parent / converted.models["a"].source).resolve() == (
        tmp_path / "models" / "a"
    ).resolve()
    assert converted.models["hub"].source == "org/model"


def test_console_script(tmp_path: Path) -> None:
    """The installed `mergetui` entry point runs the same commands in a fresh process."""
    script = Path(sys.executable).parent / "mergetui"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mergetui"]
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1"}
    out = tmp_path / "solar.yaml"
    done = subprocess.run(
        [*command, "convert", str(SAMPLES / "solar-depth-upscaling.toml"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [*command, "validate", "--offline", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # --offline checks the recipe alone: nothing about the (empty) Hugging Face cache.
    assert done.stdout.strip() == f"{out}: ok"

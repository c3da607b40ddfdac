"""`mergetui diff`: the per-layer table with sparklines, --json, --kind, the cache and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergetui.cli import main
from mergetui.cli.cmd_diff import model_names, sparkline
from mergetui.merge.analysis_run import analyze
from mergetui.paths import CACHE_ENV


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("COLUMNS", "120")
    return tmp_path / "cache"


@pytest.fixture
def fam(tmp_path: Path, llama_family: dict[str, Path]) -> dict[str, Path]:
    """The tiny Llama family under readable folder names (links to the session's models)."""
    folder = tmp_path / "models"
    folder.mkdir()
    named = {}
    for name, path in llama_family.items():
        (folder / name).symlink_to(path, target_is_directory=True)
        named[name] = folder / name
    return named


def test_json_matches_the_core(fam, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(fam["a"]), str(fam["b"]), "--base", str(fam["base"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models"] == ["a", "b", "base"]
    assert data["reference"] == "base" and data["compared"] == ["a", "b"]
    assert [r["row"] for r in data["rows"]] == ["embed", 0, 1, 2, 3, "head"]
    core = analyze({"a": fam["a"], "b": fam["b"], "base": fam["base"]}, "base", device="cpu")
    assert core.cached  # the CLI's run filled the cache
    for row in data["rows"]:
        metrics = core.group(row["row"])
        assert row["cosine"]["a"] == pytest.approx(metrics.cosine["a"])
        assert row["distance"]["b"] == pytest.approx(metrics.distance["b"])
        assert row["agreement"] == pytest.approx(metrics.agreement)
        assert set(row["kinds"]) >= {"embedding"} if row["row"] == "embed" else True
    assert 0.3 < data["overall"]["agreement"] < 0.7  # independent noise: about half agree
    assert Path(data["paths"]["base"]) == fam["base"].resolve()


def test_table_has_every_layer_and_a_sparkline_per_metric(
    fam, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", str(fam["a"]), str(fam["b"]), "--base", str(fam["base"])]) == 0
    text = capsys.readouterr().out
    for expected in ("cos a", "dist a", "cos b", "dist b", "agree", "embed", "head", "all"):
        assert expected in text
    lines = text.splitlines()
    spark_lines = [line for line in lines if line.strip().startswith(("cos ", "dist ", "agree"))]
    assert len(spark_lines) == 5
    for line in spark_lines:
        assert any(ch in line for ch in "▁▂▃▄▅▆▇█")
    assert "%" in text and "39 tensors compared" in text


def test_without_a_base_the_first_model_is_the_reference(
    fam, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diff", str(fam["a"]), str(fam["a"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models"] == ["a", "a-2"] and data["base"] is None
    assert data["overall"]["cosine"]["a-2"] == pytest.approx(1.0)
    assert data["overall"]["distance"]["a-2"] == 0.0
    assert data["overall"]["agreement"] is None
    assert main(["diff", str(fam["a"]), str(fam["b"])]) == 0
    text = capsys.readouterr().out
    assert "needs task vectors" in text and "agree" not in text.split("needs")[0].split("\n")[3]


def test_kind_restricts_the_table(fam, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(fam["base"]), str(fam["a"]), "--kind", "mlp"]) == 0
    text = capsys.readouterr().out
    assert "mlp tensors only" in text
    # Only layers hold MLP tensors: the embed and head rows show no number.
    embed_line = next(line for line in text.splitlines() if "embed" in line)
    assert "-" in embed_line and "0." not in embed_line


def test_refusals(tmp_path: Path, fam, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(tmp_path / "nowhere"), str(fam["a"])]) == 1
    assert "checkpoint folder not found" in capsys.readouterr().err
    assert main(["diff", str(fam["a"]), str(fam["b"]), "--base", str(fam["a"])]) == 1
    assert "the base is also one of the compared models" in capsys.readouterr().err
    assert main(["diff", str(fam["a"]), str(fam["b"]), "--device", "tpu"]) == 1
    assert "unknown device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["diff", str(fam["a"])])
    assert exit_info.value.code == 2


def test_helpers() -> None:
    assert model_names(["x/a", "y/a", "z/b/", "a"]) == ["a", "a-2", "b", "a-3"]
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([1.0, 1.0]) == "▁▁"
    assert sparkline([None, 1.0, 2.0]) == " ▁█"
    assert sparkline([]) == ""

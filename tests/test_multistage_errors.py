"""Multi-stage files: what is wrong is a located error before anything runs (exit 1, nothing
written); `validate` checks every stage; `--dry-run` shows every stage's plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergetui.cli import main


def _stage(family: dict[str, Path], name: str | None, *models: str) -> str:
    """A linear stage over `models` (a family member's key, or any other reference as it is)."""
    lines = [f"name: {name}"] if name else []
    lines += ["merge_method: linear", "dtype: float32", "models:"]
    for model in models:
        lines += [f"  - model: {family.get(model, model)}", "    parameters: {weight: 0.5}"]
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, *stages: str, suffix: str = ".yml") -> Path:
    path = tmp_path / f"multi{suffix}"
    path.write_text("---\n".join(stages))
    return path


def _merge_fails(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> str:
    """Run `merge`, expect exit 1 and nothing written; the error text."""
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["merge", str(path), "--out", str(tmp_path / "out"), *extra]
    assert main(args) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no stages folder
    captured = capsys.readouterr()
    return captured.err + captured.out


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (
            [("one", "two", "a"), ("two", "three", "b"), ("three", "one", "c"), (None, "two")],
            ["multi.yml:1:", "in a cycle: one -> two -> three -> one"],
        ),
        ([("self", "self", "a"), (None, "self")], ["multi.yml:1:", "cycle: self -> self"]),
        (
            [("soup", "a", "b"), ("soup", "b", "c"), (None, "soup")],
            ["multi.yml:10:", "two stages are named 'soup' (stages 1 and 2)"],
        ),
        (
            [("soup", "a", "b"), (None, "soup", "c"), (None, "soup")],
            ["multi.yml:18:", "stages 2 and 3 both have no name"],
        ),
        (
            [("soup", "a", "b"), (None, "soop", "c")],
            ["multi.yml:13", "'soop', which is no stage of this file (its stages: soup)"],
        ),
        ([("../up", "a", "b"), (None, "c")], ["multi.yml:1:", "plain folder name, not '../up'"]),
    ],
    ids=["cycle", "self", "duplicate", "two-unnamed", "unknown", "bad-name"],
)
def test_wrong_files_are_refused_before_anything_runs(
    llama_family: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stages: list[tuple[str | None, ...]],
    expected: list[str],
) -> None:
    path = _write(tmp_path, *(_stage(llama_family, name, *models) for name, *models in stages))
    text = _merge_fails(path, tmp_path, capsys)
    for part in expected:
        assert part in text
    assert main(["validate", str(path), "--offline"]) == 1
    validated = capsys.readouterr().out
    assert expected[-1] in validated


def test_a_final_stage_needs_an_output(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path, _stage(llama_family, "soup", "a", "b"), _stage(llama_family, None, "soup")
    )
    assert main(["merge", str(path)]) == 1
    err = capsys.readouterr().err
    assert "multi.yml:10" in err and "needs an output folder" in err and "--out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi.yml"]
    # validate needs none
    assert main(["validate", str(path), "--offline"]) == 0
    # nor may the stages go into the final output's folder
    for inter in ("out", "out/mid"):
        text = _merge_fails(path, tmp_path, capsys, "-I", str(tmp_path / inter))
        assert "is the final output folder or inside it" in text


def test_a_stage_error_names_the_stage_and_the_line(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = _stage(llama_family, None, "soup", "c").replace("merge_method", "merge_methd")
    path = _write(tmp_path, _stage(llama_family, "soup", "a", "b"), second)
    text = _merge_fails(path, tmp_path, capsys)
    assert "multi.yml:10" in text and "stage 2 (the final stage)" in text and "merge_methd" in text

    toml = tmp_path / "multi.toml"
    toml.write_text(
        '[[stages]]\nname = "soup"\n[stages.merge]\nmethod = "linear"\n'
        f'[stages.models.a]\nsource = "{llama_family["a"]}"\nparameters = {{ wieght = 1 }}\n'
    )
    assert main(["validate", str(toml)]) == 1
    out = capsys.readouterr().out
    assert "multi.toml (stage 'soup')" in out and "multi.toml:7" in out and "'wieght'" in out
    toml.write_text(toml.read_text().replace("method =", "methd ="))
    assert main(["validate", str(toml)]) == 1
    out = capsys.readouterr().out
    assert "multi.toml:4" in out and "stage 1 ('soup'): unknown key 'merge.methd'" in out

    toml.write_text('[merge]\nmethod = "linear"\n[[stages]]\nname = "x"\n')
    assert main(["validate", str(toml)]) == 1
    assert "only [[stages]] tables, not 'merge'" in capsys.readouterr().out


def test_validate_checks_every_stage(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _stage(llama_family, None, "soup", "c").replace("weight: 0.5", "weight: oops")
    path = _write(tmp_path, _stage(llama_family, "soup", "a", "b"), bad)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    first, _, second = out.partition("(the final stage)")
    assert "multi.yml (stage 'soup'): ok" in first
    assert "error" in second and "multi.yml:14" in second and "weight" in second
    # the soup's output does not exist yet: that is not a problem of the final stage
    assert "not found" not in out


def test_dry_run_shows_every_stage_and_writes_nothing(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path, _stage(llama_family, "soup", "a", "b"), _stage(llama_family, None, "soup", "c")
    )
    out, mid = tmp_path / "out", tmp_path / "mid"
    args = ["merge", str(path), "--out", str(out), "-I", str(mid)]
    assert main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "stage 1/2: soup" in text and "stage 2/2: final" in text
    assert text.count("will run") == 2 and text.count("merge plan (dry run") == 1
    assert "needs the output of soup" in text
    assert not out.exists() and not mid.exists()

    assert main([*args, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("up to date") == 2 and text.count("merge plan (dry run") == 2


def test_every_stage_named_needs_no_out_and_a_named_stage_no_output(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = ", ".join(
        f"{{model: {llama_family[k]}, parameters: {{weight: 0.5}}}}" for k in ("a", "b")
    )
    flow = f"{{name: soup, merge_method: linear, dtype: float32, models: [{models}]}}\n"
    path = _write(tmp_path, flow, _stage(llama_family, "more", "soup", "c"))
    assert main(["merge", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"stage 1/2: soup -> {tmp_path / 'multi-stages' / 'soup'}" in text
    assert f"stage 2/2: more -> {tmp_path / 'multi-stages' / 'more'}" in text

    toml = tmp_path / "multi.toml"
    toml.write_text(
        '[[stages]]\nname = "soup"\n[stages.merge]\nmethod = "linear"\noutput = "x"\n'
        f'[stages.models.a]\nsource = "{llama_family["a"]}"\nparameters = {{ weight = 1 }}\n'
    )
    text = _merge_fails(toml, tmp_path, capsys)
    assert "multi.toml:5" in text and "a named stage writes to the intermediate folder" in text


def test_the_app_opens_a_multi_stage_file_as_its_stages_or_names_the_stage_in_error(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    from mergetui.editing.document import RecipeDocument
    from mergetui.errors import UserError

    path = _write(
        tmp_path, _stage(llama_family, "soup", "a", "b"), _stage(llama_family, None, "soup")
    )
    document = RecipeDocument.open(path)
    assert document.stages is not None and len(document.stages) == 2
    assert document.recipe is document.stages[0].recipe
    assert document.display_name == f"{path.name} · stage 1/2: soup"
    with pytest.raises(UserError) as caught:
        document.save()
    assert "does not write multi-stage files" in caught.value.message
    path.write_text(
        path.read_text().replace("merge_method: linear\ndtype", "merge_methd: linear\ndtype")
    )
    with pytest.raises(UserError) as caught:
        RecipeDocument.open(path)
    assert "stage 1 ('soup'): unknown key 'merge_methd'" in caught.value.message

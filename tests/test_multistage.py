"""Multi-stage recipes: the same tensors as mergekit-multi, the TOML form read as the YAML form,
stages skipped only when their output holds the same recipe, stages in the progress, and Ctrl-C."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mergetui.cli import cmd_merge, main
from mergetui.merge import pipeline as pipeline_module
from mergetui.recipe.stage_order import place_stages
from mergetui.recipe.stages import load_stages
from mergetui.recipe.toml_write import dumps_toml
from mergetui.recipe.yaml_import import derive_model_name

TOLERANCE = 1e-5


def multi_yaml(family: dict[str, Path], *, weight: float = 0.6, t: str = "[0, 0.5, 1]") -> str:
    """Three stages: a linear soup of a and b, TIES of the soup and c onto the base, then SLERP
    from the base towards that (the final, unnamed stage)."""
    return f"""\
name: soup
merge_method: linear
models:
  - model: {family["a"]}
    parameters: {{weight: {weight}}}
  - model: {family["b"]}
    parameters: {{weight: {1 - weight:.3g}}}
dtype: float32
---
name: tied
merge_method: ties
base_model: {family["base"]}
models:
  - model: soup
    parameters: {{weight: 0.7, density: 0.5}}
  - model: {family["c"]}
    parameters: {{weight: 0.3, density: 0.5}}
  - model: {family["base"]}
dtype: float32
---
merge_method: slerp
base_model: {family["base"]}
models:
  - model: {family["base"]}
  - model: tied
parameters:
  t: {t}
dtype: float32
"""


def multi_toml(family: dict[str, Path]) -> str:
    """`multi_yaml` in mergetui's TOML form (its models named as the YAML import names them)."""
    n = {key: derive_model_name(str(path)) for key, path in family.items()}
    return f"""\
[[stages]]
name = "soup"

[stages.merge]
method = "linear"
dtype = "float32"

[stages.models.{n["a"]}]
source = "{family["a"]}"
parameters = {{ weight = 0.6 }}

[stages.models.{n["b"]}]
source = "{family["b"]}"
parameters = {{ weight = 0.4 }}

[[stages]]
name = "tied"

[stages.merge]
method = "ties"
base = "{n["base"]}"
dtype = "float32"

[stages.models.soup]
source = "soup"
parameters = {{ weight = 0.7, density = 0.5 }}

[stages.models.{n["c"]}]
source = "{family["c"]}"
parameters = {{ weight = 0.3, density = 0.5 }}

[stages.models.{n["base"]}]
source = "{family["base"]}"

[[stages]]  # the final stage

[stages.merge]
method = "slerp"
base = "{n["base"]}"
dtype = "float32"

[stages.models.{n["base"]}]
source = "{family["base"]}"

[stages.models.tied]
source = "tied"

[stages.parameters]
t = [0, 0.5, 1]
"""


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():
                found[name] = handle.get_tensor(name)
    return found


def _assert_same(ours: Path, theirs: Path) -> None:
    a, b = _tensors(ours), _tensors(theirs)
    assert set(a) == set(b) and a
    for name, expected in b.items():
        assert a[name].dtype == expected.dtype, name
        scale = max(expected.abs().max().item(), 1e-12)
        error = (a[name].float() - expected.float()).abs().max().item()
        assert error / scale <= TOLERANCE, f"{name}: {error / scale:.2e}"


def _stamp(folder: Path) -> int:
    return (folder / "model.safetensors").stat().st_mtime_ns


def test_three_stages_match_mergekit_multi(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    multimerge = pytest.importorskip(
        "mergekit.scripts.multimerge", reason="mergekit (the test extra) is the reference"
    )
    config = tmp_path / "multi.yml"
    config.write_text(multi_yaml(llama_family))
    theirs = tmp_path / "theirs"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    multimerge.main.main(
        [str(config), "--out-path", str(theirs / "final"), "-I", str(theirs / "stages")]
        + ["--quiet", "--no-copy-tokenizer", "--no-write-model-card"],
        standalone_mode=False,
    )
    ours = tmp_path / "ours"
    args = ["merge", str(config), "--out", str(ours / "final"), "-I", str(ours / "stages")]
    assert main([*args, "--device", "cpu"]) == 0
    _assert_same(ours / "stages" / "soup", theirs / "stages" / "soup")
    _assert_same(ours / "stages" / "tied", theirs / "stages" / "tied")
    _assert_same(ours / "final", theirs / "final")


def test_toml_form_reads_as_the_yaml_form(llama_family: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "multi.yml").write_text(multi_yaml(llama_family))
    (tmp_path / "multi.toml").write_text(multi_toml(llama_family))
    placed = {}
    for name in ("multi.yml", "multi.toml"):
        stages = load_stages(tmp_path / name)
        assert stages is not None
        placed[name] = place_stages(stages, tmp_path / name, out=tmp_path / "out")
    yaml_stages, toml_stages = placed["multi.yml"], placed["multi.toml"]
    assert [s.name for s in yaml_stages] == [s.name for s in toml_stages] == ["soup", "tied", None]
    for ours, theirs in zip(yaml_stages, toml_stages, strict=True):
        assert ours.output == theirs.output
        assert ours.uses == theirs.uses
        assert dumps_toml(ours.recipe) == dumps_toml(theirs.recipe)
    assert toml_stages[1].recipe.models["soup"].source == str(tmp_path / "out-stages" / "soup")
    assert toml_stages[2].output == tmp_path / "out"
    # a plain recipe is not a multi-stage file
    plain = tmp_path / "plain.yml"
    plain.write_text(multi_yaml(llama_family).split("---")[0].replace("name: soup\n", ""))
    assert load_stages(plain) is None


def test_stages_skip_only_when_merged_from_the_same_recipe(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "multi.toml"
    config.write_text(multi_toml(llama_family))
    out = tmp_path / "final"
    stages = tmp_path / "final-stages"  # the default intermediate folder, beside --out
    assert main(["merge", str(config), "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    for heading in ("stage 1/3: soup", "stage 2/3: tied", "stage 3/3: final"):
        assert heading in text
    assert "3 merged" in text
    stamps = {name: _stamp(stages / name) for name in ("soup", "tied")} | {"out": _stamp(out)}

    assert main(["merge", str(config), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("up to date (merged from this recipe): skipped") == 3
    assert {name: _stamp(stages / name) for name in ("soup", "tied")} | {"out": _stamp(out)} == (
        stamps
    )

    # the final stage edited: its folder is another recipe's now, kept without --force
    config.write_text(multi_toml(llama_family).replace("t = [0, 0.5, 1]", "t = [0, 0.3, 1]"))
    assert main(["merge", str(config), "--out", str(out)]) == 1
    assert "merged from another recipe" in capsys.readouterr().err
    assert _stamp(out) == stamps["out"]
    assert main(["merge", str(config), "--out", str(out), "--force"]) == 0
    assert "1 merged, 2 up to date" in capsys.readouterr().out
    assert _stamp(out) != stamps["out"]
    assert _stamp(stages / "tied") == stamps["tied"]

    # the first stage edited: it runs again, and so do the stages after it (same recipes)
    config.write_text(multi_toml(llama_family).replace("weight = 0.6", "weight = 0.5"))
    assert main(["merge", str(config), "--out", str(out), "--force"]) == 0
    assert "3 merged" in capsys.readouterr().out
    assert _stamp(stages / "tied") != stamps["tied"]


def test_ctrl_c_in_a_stage_keeps_the_finished_ones_and_a_rerun_finishes(
    llama_family: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "multi.yml"
    config.write_text(multi_yaml(llama_family))
    out, stages = tmp_path / "final", tmp_path / "mid"
    args = ["merge", str(config), "--out", str(out), "-I", str(stages), "--device", "cpu"]
    assert main(args) == 0
    tied = _stamp(stages / "tied")
    capsys.readouterr()

    # soup edited: soup runs again, then Ctrl-C in tied, which is now stale
    config.write_text(multi_yaml(llama_family, weight=0.5))
    real_run, real_compute = cmd_merge.run_with_progress, pipeline_module.compute_piece
    runs, calls = [], {"n": 0}

    def counting_run(*a: object, **k: object) -> int:
        runs.append(k.get("label"))
        return real_run(*a, **k)

    def interrupting_compute(*a: object, **k: object) -> object:
        if len(runs) == 2:
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGINT)  # what a Ctrl-C in the terminal sends
        return real_compute(*a, **k)

    monkeypatch.setattr(cmd_merge, "run_with_progress", counting_run)
    monkeypatch.setattr(pipeline_module, "compute_piece", interrupting_compute)
    previous = signal.getsignal(signal.SIGINT)
    assert main([*args, "--force"]) == 130
    assert signal.getsignal(signal.SIGINT) is previous
    err = capsys.readouterr().err
    assert "Cancelled" in err and "running again skips them" in err
    assert runs == ["stage 1/3 ", "stage 2/3 "]
    assert _stamp(stages / "tied") == tied  # the cancelled stage left its old folder as it was
    assert not [p.name for p in stages.iterdir() if ".mergetui-" in p.name]

    # the rerun needs no --force: soup is up to date, tied was merged before soup and runs again
    monkeypatch.setattr(pipeline_module, "compute_piece", real_compute)
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("skipped") == 1 and "2 merged, 1 up to date" in text
    assert _stamp(stages / "tied") != tied

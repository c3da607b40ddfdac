"""`mergetui merge`: dry run, a real run, mergekit YAML as it is, refusals, and Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergetui.cli import main
from mergetui.merge import pipeline as pipeline_module
from mergetui.merge import runner as runner_module


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".mergetui-" in p.name)


def _toml(family: dict[str, Path], output: Path | None = None, method: str = "ties") -> str:
    lines = [
        "[merge]",
        f'method = "{method}"',
        'base = "base"',
        'dtype = "bfloat16"',
    ]
    if output is not None:
        lines.append(f'output = "{output}"')
    lines += [
        "",
        "[models.base]",
        f'source = "{family["base"]}"',
        "",
        "[models.a]",
        f'source = "{family["a"]}"',
        "parameters = { weight = 0.5, density = 0.6 }",
        "",
        "[models.b]",
        f'source = "{family["b"]}"',
        "parameters = { weight = 0.5, density = 0.6 }",
    ]
    return "\n".join(lines) + "\n"


def test_dry_run_prints_the_plan_and_writes_nothing(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(llama_family))
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    for expected in ("ties", "base (base)", "layers", "4", "tensors", "39", "model.safetensors"):
        assert expected in text
    assert "estimated peak memory" in text
    assert "output size" in text
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_run_writes_a_model(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "merged"
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(llama_family, output=out))
    assert main(["merge", str(recipe), "--device", "cpu", "--shard-size", "300KB"]) == 0
    captured = capsys.readouterr()
    assert "Merged 39 tensors" in captured.out
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 1 and (out / "model.safetensors.index.json").exists()
    assert _leftovers(tmp_path) == []

    # an existing output is refused without --force, replaced with it
    assert main(["merge", str(recipe)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(recipe), "--force", "--shard-size", "5GB"]) == 0
    assert (out / "model.safetensors").exists()
    assert not (out / "model.safetensors.index.json").exists()


def test_mergekit_yaml_with_relative_paths(
    llama_family: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    for name in ("base", "a"):
        shutil.copytree(llama_family[name], folder / f"model-{name}")
    config = folder / "slerp.yml"
    config.write_text(
        "models:\n"
        "  - model: model-base\n"
        "  - model: model-a\n"
        "merge_method: slerp\n"
        "base_model: model-base\n"
        "parameters:\n"
        "  t:\n"
        "    - filter: self_attn\n"
        "      value: [0, 0.5, 1]\n"
        "    - value: 0.3\n"
        "dtype: float32\n"
    )
    monkeypatch.chdir(tmp_path)  # paths are relative to the recipe's folder, not to cwd
    out = tmp_path / "slerped"
    assert main(["merge", str(config), "--out", str(out)]) == 0
    merged = load_file(str(out / "model.safetensors"))
    base = load_file(str(llama_family["base"] / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"  # t = 0 at the first layer: the base
    torch.testing.assert_close(merged[name], base[name])
    assert (out / "mergekit_config.yml").exists()


def test_missing_tensor_fails_cleanly(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(llama_family["b"], broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    family = dict(llama_family, b=broken)
    recipe = tmp_path / "r.toml"
    out = tmp_path / "merged"
    recipe.write_text(_toml(family, output=out))
    assert main(["merge", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "model.layers.1.self_attn.k_proj.weight" in err and "'b'" in err
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_validation_errors_are_printed_like_validate(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.toml"
    text = _toml(llama_family, output=tmp_path / "merged").replace(
        "parameters = { weight = 0.5, density = 0.6 }", "parameters = { density = 0.6 }"
    )
    recipe.write_text(text)
    assert main(["merge", str(recipe)]) == 1
    out = capsys.readouterr().out
    assert "error" in out and "weight" in out
    assert not (tmp_path / "merged").exists()


def test_no_output_and_bad_options(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(llama_family))
    assert main(["merge", str(recipe)]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["merge", str(recipe), "--out", str(tmp_path / "x"), "--device", "tpu"]) == 1
    assert "unknown device" in capsys.readouterr().err
    assert main(["merge", str(recipe), "--out", str(tmp_path / "x"), "--shard-size", "big"]) == 1
    assert "shard" in capsys.readouterr().err.lower()
    assert main(["merge", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "x")]) == 1


def test_ctrl_c_cancels_cleanly(
    llama_family: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_compute = pipeline_module.compute_piece
    calls = {"n": 0}

    def interrupting_compute(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what a Ctrl-C in the terminal sends
        return real_compute(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "compute_piece", interrupting_compute)
    recipe = tmp_path / "r.toml"
    out = tmp_path / "merged"
    recipe.write_text(_toml(llama_family, output=out))
    previous = signal.getsignal(signal.SIGINT)
    assert main(["merge", str(recipe)]) == 130
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is restored
    err = capsys.readouterr().err
    assert "Cancelled" in err and "nothing was written" in err
    assert calls["n"] < 39
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_seed_is_recorded(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    out = tmp_path / "merged"
    recipe.write_text(_toml(llama_family, output=out, method="dare_ties"))
    assert main(["merge", str(recipe), "--seed", "1234"]) == 0
    assert "seed = 1234" in (out / "mergetui.toml").read_text()
    first = load_file(str(out / "model.safetensors"))
    assert main(["merge", str(recipe), "--seed", "1234", "--force"]) == 0
    again = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_the_command_exits_fast_with_its_output_flushed_and_its_exit_code(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    """`python -m mergetui` (the `mergetui` script's `run`) skips the interpreter's teardown once
    torch is loaded: what it printed still arrives, and the exit code is kept."""
    import subprocess
    import sys

    out = tmp_path / "merged"
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(llama_family, output=out))
    command = [sys.executable, "-m", "mergetui", "merge", str(recipe), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Merged 39 tensors" in done.stdout
    assert (out / "model.safetensors").exists() and _leftovers(tmp_path) == []
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1  # the output exists: refused, and the refusal is printed
    assert "already exists" in again.stderr


def test_the_cyclic_collector_is_paused_while_merging_and_resumed_after(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its scans of torch's objects cost ~0.4 s a merge; pausing it must not outlive the command.
    import gc

    seen: list[bool] = []
    real_run = runner_module.run_merge

    def recording_run(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return real_run(*args, **kwargs)

    monkeypatch.setattr(runner_module, "run_merge", recording_run)
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(llama_family, output=tmp_path / "merged"))
    assert gc.isenabled()
    assert main(["merge", str(recipe), "--device", "cpu"]) == 0
    assert seen == [False]
    assert gc.isenabled()
    # and after a failure too
    assert main(["merge", str(tmp_path / "missing.toml")]) == 1
    assert gc.isenabled()


def test_the_progress_bar_counts_finished_tensors_whatever_their_order(
    llama_family: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Tensors finish in any order; the count is of those done, not the last one's plan position.
    from mergetui.merge.events import TensorDone

    real_run = runner_module.run_merge

    def last_index_first(plan: object, *, on_event: object, **kwargs: object) -> object:
        events: list[object] = []
        result = real_run(plan, on_event=events.append, **kwargs)
        done = [e for e in events if isinstance(e, TensorDone)]
        for event in sorted(done, key=lambda e: -e.index):  # the first tensor finishes last
            on_event(event)
        return result

    monkeypatch.setattr(runner_module, "run_merge", last_index_first)
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(llama_family, output=tmp_path / "merged"))
    assert main(["merge", str(recipe), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "39/39 tensors" in err
    assert "1/39 tensors" not in err.splitlines()[-1]


def test_each_plan_notice_is_printed_once(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan's notices come back as the engine's Notice events: printing them before the run
    too showed every one twice."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(llama_family, output=tmp_path / "merged", method="dare_ties"))
    assert main(["merge", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert err.count("is random: using seed") == 1, err

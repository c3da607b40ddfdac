"""`mergetui extract-lora`'s refusals: every bad number, regex, model pair and output folder is one
located line on stderr, exit 1, and nothing written (no adapter, no temporary folder); `--force`
replaces only an adapter the command wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from extract_helpers import make_finetune

from mergetui.cli import main
from mergetui.demo import make_tiny_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extract-errors")
    base = make_tiny_model(root / "base", seed=0, num_layers=1)
    tuned = make_finetune(base, root / "tuned", lambda name: [1.0, 0.5], noise=1e-3, seed=3)
    return {"root": root, "base": base, "tuned": tuned}


def fails(pair: dict[str, Path], capsys, *args: str, out: Path | None = None) -> str:
    """Run the command, expect exit 1 with nothing written; return its error line(s)."""
    out = out if out is not None else pair["root"] / "never"
    before = set(out.parent.iterdir())
    code = main(["extract-lora", str(pair["tuned"]), str(pair["base"]), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert set(out.parent.iterdir()) == before  # no adapter, no temporary folder
    return " ".join(err.split())


@pytest.mark.parametrize(
    ("args", "where", "what"),
    [
        (["--rank", "0"], "--rank", "from 1 to"),
        (["--rank", "-3"], "--rank", "from 1 to"),
        (["--rank", "100000"], "--rank", "from 1 to"),
        (["--energy", "0"], "--energy", "above 0 and at most 1"),
        (["--energy", "1.5"], "--energy", "above 0 and at most 1"),
        (["--energy", "nan"], "--energy", "above 0 and at most 1"),
        (["--include", "q_proj("], "--include", "not a regular expression"),
        (["--exclude", "[x"], "--exclude", "not a regular expression"),
        (["--include", "nothing-matches-this"], "--include", "no module is left to decompose"),
        (["--device", "tpu"], "--device", "unknown device"),
    ],
)
def test_bad_options(pair: dict[str, Path], capsys, args: list[str], where: str, what: str) -> None:
    err = fails(pair, capsys, *args)
    assert where in err and what in err


def test_models_that_do_not_match(pair: dict[str, Path], capsys) -> None:
    root = pair["root"]
    wide = make_tiny_model(root / "wide", seed=0, num_layers=1, hidden_size=32)
    code = main(["extract-lora", str(pair["tuned"]), str(wide), "--out", str(root / "x2")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "in the fine-tune but" in err and str(wide) in err
    assert not (root / "x2").exists()
    gpt2 = make_tiny_model(root / "gpt2", arch="gpt2", seed=0, num_layers=1)
    code = main(["extract-lora", str(pair["tuned"]), str(gpt2), "--out", str(root / "x3")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "GPT2LMHeadModel" in err and "LlamaForCausalLM" in err
    gpt2_tuned = make_tiny_model(root / "gpt2-tuned", base=gpt2, seed=1)
    code = main(["extract-lora", str(gpt2_tuned), str(gpt2), "--out", str(root / "x5")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "Conv1D" in err and "--embed-lora" in err
    code = main(
        ["extract-lora", str(root / "missing"), str(pair["base"]), "--out", str(root / "x4")]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "not found" in err and "missing" in err
    assert not any((root / name).exists() for name in ("x2", "x3", "x4", "x5"))


def test_pickle_checkpoints_need_allow_bin(pair: dict[str, Path], capsys) -> None:
    from safetensors.torch import load_file

    root = pair["root"]
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((pair["base"] / "config.json").read_text())
    torch.save(load_file(pair["base"] / "model.safetensors"), pickled / "pytorch_model.bin")
    code = main(["extract-lora", str(pair["tuned"]), str(pickled), "--out", str(root / "bin")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "pickle" in err and "--allow-bin" in err and not (root / "bin").exists()
    args = ["extract-lora", str(pair["tuned"]), str(pickled), "--out", str(root / "bin")]
    assert main([*args, "--allow-bin"]) == 0
    assert (root / "bin" / "adapter_model.safetensors").is_file()


def test_existing_output_and_force(pair: dict[str, Path], capsys) -> None:
    root = pair["root"]
    theirs = root / "someone-elses"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    err = fails(pair, capsys, out=theirs)
    assert "already exists" in err and "--force" in err
    err = fails(pair, capsys, "--force", out=theirs)
    assert "only replaces a folder that this command wrote" in err and "notes.txt" in err
    assert (theirs / "notes.txt").read_text() == "keep me"
    # a merge's output is no adapter of ours either, nor is an input folder
    err = fails(pair, capsys, "--force", out=pair["base"])
    assert "input model's folder" in err

    ours = root / "ours"
    assert main(["extract-lora", str(pair["tuned"]), str(pair["base"]), "--out", str(ours)]) == 0
    first = json.loads((ours / "adapter_config.json").read_text())
    err = fails(pair, capsys, "--rank", "1", out=ours)
    assert "already exists" in err
    args = ["extract-lora", str(pair["tuned"]), str(pair["base"]), "--out", str(ours)]
    assert main([*args, "--rank", "1", "--force"]) == 0
    second = json.loads((ours / "adapter_config.json").read_text())
    assert (first["r"], second["r"]) == (64, 1)
    assert sorted(p.name for p in ours.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_cancel_leaves_nothing(pair: dict[str, Path]) -> None:
    import threading

    from mergetui.errors import CancelledError
    from mergetui.merge.extract_plan import ExtractOptions, plan_extraction
    from mergetui.merge.extract_run import run_extraction

    root = pair["root"]
    cancel = threading.Event()
    seen: list[str] = []

    def on_event(event) -> None:
        seen.append(event.module)
        cancel.set()  # after the first module

    plan = plan_extraction(pair["tuned"], pair["base"], ExtractOptions(rank=2))
    before = set(root.iterdir())
    with pytest.raises(CancelledError):
        run_extraction(plan, root / "cancelled", on_event=on_event, cancel=cancel, device="cpu")
    assert len(seen) == 1 and set(root.iterdir()) == before


def test_hub_ids_from_the_cache_and_offline(
    pair: dict[str, Path], capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Hub ids are found in the HF cache as merge inputs are; the config and card name the base
    as given. One not there, offline, is one line saying so."""
    import shutil

    commit = "c" * 40
    repo = tmp_path / "cache" / "models--org--tiny-base"
    shutil.copytree(pair["base"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "adapter"
    assert main(["extract-lora", str(pair["tuned"]), "org/tiny-base", "--out", str(out)]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "org/tiny-base"
    )
    assert '- "org/tiny-base"' in (out / "README.md").read_text()
    capsys.readouterr()
    code = main(["extract-lora", "org/not-cached", "org/tiny-base", "--out", str(tmp_path / "x")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "org/not-cached" in err and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "x").exists()

"""`mergetui inspect`: the summary, the layer table, JSON for scripts, and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mergetui.formatting import human_bytes, human_count


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run the real `mergetui` entry point with only this part's commands registered (so these
    tests do not depend on the other commands' modules); returns (exit code, stdout, stderr)."""
    import mergetui.cli

    monkeypatch.setattr(mergetui.cli, "COMMAND_MODULES", ("inspect", "demo"))
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> tuple[int, str, str]:
        code = mergetui.cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_json_is_the_only_output(cli, arch_models: dict[str, Path]) -> None:
    code, out, err = cli("inspect", str(arch_models["qwen2"]), "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["model_type"] == "qwen2" and data["num_layers"] == 4
    assert data["parameters"] == 197_696
    assert data["dtypes"] == {"F32": len(data["tensors"])}
    assert data["tied"] is False and data["has_chat_template"] is True
    assert data["layers"][1]["attention"][0].startswith("model.layers.1.self_attn.")


def test_summary(cli, arch_models: dict[str, Path]) -> None:
    code, out, _ = cli("inspect", str(arch_models["gemma"]))
    assert code == 0
    lines = {line.split("  ")[0]: line for line in out.splitlines() if line.strip()}
    assert "GemmaForCausalLM (gemma)" in lines["architecture"]
    assert lines["layers"].split()[-1] == "4"
    assert "172,608" in lines["parameters"]
    assert "F32 x38" in lines["dtypes"]
    assert "in 1 safetensors file" in lines["size on disk"]
    assert "yes" in lines["tied embeddings"]
    assert lines["tokenizer"].split()[-1] == "yes"
    assert "model.embed_tokens.weight" in lines["before layers"]
    # The per-layer table only with --layers.
    assert "q_proj" not in out


def test_layer_table(cli, arch_models: dict[str, Path]) -> None:
    code, out, _ = cli("inspect", str(arch_models["gpt2"]), "--layers")
    assert code == 0
    rows = [line for line in out.splitlines() if "c_attn" in line]
    assert len(rows) == 4
    for index, row in enumerate(rows):
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        assert cells[:4] == [str(index), "c_attn c_proj", "c_fc c_proj", "ln_1 ln_2"]
        assert cells[4] == human_count(33_472)


def test_missing_folder_exits_1_with_reason(cli, tmp_path: Path) -> None:
    missing = tmp_path / "not-here"
    code, out, err = cli("inspect", str(missing))
    assert code == 1 and out == ""
    assert "error:" in err and "not-here" in err and "checkpoint folder not found" in err


def test_hub_id_not_in_cache(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, _, err = cli("inspect", "some-org/some-model")
    assert code == 1
    assert "not in the Hugging Face cache" in err and "huggingface-cli download" in err


def test_hub_id_in_cache(
    cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    commit = "c" * 40
    repo = tmp_path / "cache" / "models--org--tiny"
    shutil.copytree(llama_family["base"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    code, out, _ = cli("inspect", "org/tiny", "--json")
    assert code == 0
    assert json.loads(out)["path"] == str(repo / "snapshots" / commit)
    code, _, err = cli("inspect", "org/tiny", "--revision", "dev")
    assert code == 1 and "at revision dev" in err


def test_bin_refused_then_allowed(cli, tmp_path: Path, llama_family: dict[str, Path]) -> None:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(llama_family["base"] / "config.json", folder)
    torch.save(
        load_file(str(llama_family["base"] / "model.safetensors")), folder / "pytorch_model.bin"
    )
    code, _, err = cli("inspect", str(folder))
    assert code == 1 and "pytorch_model.bin" in err and "--allow-bin" in err
    code, out, _ = cli("inspect", str(folder), "--allow-bin", "--json")
    assert code == 0 and json.loads(out)["format"] == "bin"


def test_truncated_checkpoint_exits_1(cli, tmp_path: Path, llama_family: dict[str, Path]) -> None:
    folder = Path(shutil.copytree(llama_family["base"], tmp_path / "cut"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    code, out, err = cli("inspect", str(folder), "--json")
    assert code == 1 and out == ""
    assert "truncated" in err and "model.safetensors" in err


def test_warnings_are_shown(cli, tmp_path: Path, llama_family: dict[str, Path]) -> None:
    folder = Path(shutil.copytree(llama_family["base"], tmp_path / "odd"))
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    code, out, _ = cli("inspect", str(folder))
    assert code == 0 and "warning:" in out and "5 layers" in out


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (2_633_784, "2.6 MB"),
        (14_483_000_000, "14.5 GB"),
    ],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [(12, "12"), (33_472, "33.5K"), (1_312_896, "1.31M"), (7_241_732_096, "7.24B")],
)
def test_human_count(count: int, text: str) -> None:
    assert human_count(count) == text

"""The Hub commands end to end against the stand-in: `mergetui hub search/info`, `pull` (progress
bar), `inspect REPO_ID` from remote headers, `push`, `merge` fetching missing Hub models first (or
stopping clearly offline), `--models-dir`, and messages that never show the token."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hub_server import TEST_TOKEN, HubServer, serve_for_test

from mergetui.checkpoints.inspect import open_checkpoint
from mergetui.checkpoints.locate import find_local


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MERGETUI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    yield from serve_for_test(tmp_path, monkeypatch)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    import mergetui.cli

    def run(*argv: str) -> tuple[int, str, str]:
        code = mergetui.cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_hub_search_table_and_json(cli, hub: HubServer, llama_family: dict[str, Path]) -> None:
    hub.add_repo("org/llama-x", llama_family["a"], downloads=5, likes=9, tags=["merge"])
    hub.add_repo("org/llama-y", llama_family["b"], downloads=50, likes=1)
    code, out, err = cli("hub", "search", "llama", "--limit", "5")
    assert code == 0 and err == ""
    assert out.index("org/llama-y") < out.index("org/llama-x")
    code, out, _ = cli("hub", "search", "llama", "--sort", "likes", "--json")
    assert [m["repo_id"] for m in json.loads(out)] == ["org/llama-x", "org/llama-y"]
    code, out, _ = cli("hub", "search", "--filter", "merge", "--json")
    assert [m["repo_id"] for m in json.loads(out)] == ["org/llama-x"]
    code, out, _ = cli("hub", "search", "nothing-like-this")
    assert code == 0 and "No models match" in out
    with pytest.raises(SystemExit) as caught:
        cli("hub", "search", "x", "--sort", "stars")
    assert caught.value.code == 2


def test_hub_info(cli, hub: HubServer, llama_family: dict[str, Path]) -> None:
    hub.add_repo("org/tiny", llama_family["base"], license="apache-2.0", gated="manual", likes=7)
    code, out, _ = cli("hub", "info", "org/tiny")
    assert code == 0
    assert "LlamaForCausalLM" in out and "apache-2.0" in out and "manual approval" in out
    assert "model.safetensors" in out and "197K" in out
    code, out, _ = cli("hub", "info", "org/tiny", "--json")
    data = json.loads(out)
    assert data["likes"] == 7 and data["total_parameters"] == 197_184
    code, _, err = cli("hub", "info", "org/missing")
    assert code == 1 and "no public model" in err and "Traceback" not in err


def test_pull_shows_progress_and_fills_the_cache(
    cli, hub: HubServer, llama_family: dict[str, Path]
) -> None:
    hub.add_repo("org/tiny", llama_family["base"], files={"big.bin": b"0" * 1000})
    code, out, err = cli("pull", "org/tiny")
    assert code == 0, err
    snapshot = find_local("org/tiny")
    assert snapshot is not None and f"Downloaded org/tiny to {snapshot}" in out.replace("\n", "")
    assert "pulling org/tiny" in err and "6/6 files" in err
    assert not (snapshot / "big.bin").exists()
    code, _, _ = cli("pull", "org/tiny", "--include", "*.bin")
    assert (snapshot / "big.bin").read_bytes() == b"0" * 1000
    code, _, err = cli("pull", "org/tiny", "--revision", "nope")
    assert code == 1 and "no such revision" in err


def test_inspect_reads_remote_headers(cli, hub: HubServer, sharded_llama: Path) -> None:
    hub.add_repo("org/sharded", sharded_llama)
    code, out, err = cli("inspect", "org/sharded", "--json")
    assert code == 0, err
    data = json.loads(out)
    local = open_checkpoint(sharded_llama)
    assert data["remote"] is True and data["parameters"] == local.parameter_count
    assert data["num_layers"] == 4 and set(data["tensors"]) == set(local.tensors)
    assert find_local("org/sharded") is None  # nothing was downloaded
    code, out, _ = cli("inspect", "org/sharded", "--layers")
    assert "on the Hub (headers only" in out and "size on the Hub" in out


def test_inspect_offline_says_so(
    cli, hub: HubServer, llama_family: dict[str, Path], monkeypatch
) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("inspect", "org/tiny")
    assert code == 1 and "not in the Hugging Face cache" in err and "offline" in err
    assert hub.requests == []


def test_push(
    cli, hub: HubServer, llama_family: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    folder = tmp_path / "merged"
    shutil.copytree(llama_family["base"], folder)
    code, _, err = cli("push", str(folder), "tester/merged")
    assert code == 1 and "HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    code, out, err = cli("push", str(folder), "tester/merged", "--private")
    assert code == 0, err
    assert "Pushed" in out and "tester/merged" in out
    assert hub.repos["tester/merged"].private
    # The folder's files, and a model card made for it (the folder had none).
    files = hub.repos["tester/merged"].files
    assert set(files) == {p.name for p in folder.iterdir()} | {"README.md"}
    assert b"mergetui" in files["README.md"]
    assert TEST_TOKEN not in out + err


def _hub_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        textwrap.dedent(
            f"""\
            [merge]
            method = "linear"
            output = "{tmp_path / "out"}"

            [parameters]
            weight = 0.5

            [models.a]
            source = "org/model-a"

            [models.b]
            source = "org/model-b"
            """
        ),
        encoding="utf-8",
    )
    return recipe


def test_merge_downloads_missing_hub_models_first(
    cli, hub: HubServer, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    hub.add_repo("org/model-a", llama_family["a"])
    hub.add_repo("org/model-b", llama_family["b"])
    recipe = _hub_recipe(tmp_path)
    code, out, err = cli("merge", str(recipe))
    assert code == 0, out + err
    assert "org/model-a is not on this machine; downloading it first" in err
    assert "pulling org/model-b" in err
    assert find_local("org/model-a") is not None and find_local("org/model-b") is not None
    merged = open_checkpoint(tmp_path / "out")
    assert merged.parameter_count == open_checkpoint(llama_family["a"]).parameter_count
    card = (tmp_path / "out" / "README.md").read_text()
    assert "org/model-a" in card.split("---")[1]  # base_model lists the Hub parents
    # Second run: nothing is fetched again.
    before = len(hub.downloaded("org/model-a"))
    code, _, err = cli("merge", str(recipe), "--force")
    assert code == 0 and "downloading" not in err
    assert len(hub.downloaded("org/model-a")) == before


def test_merge_offline_stops_with_a_clear_message(
    cli, hub: HubServer, llama_family: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    hub.add_repo("org/model-a", llama_family["a"])
    recipe = _hub_recipe(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("merge", str(recipe))
    assert code == 1
    assert "offline mode" in err and "a (org/model-a)" in err and "b (org/model-b)" in err
    assert not (tmp_path / "out").exists() and hub.requests == []


def test_merge_missing_repo_on_the_hub(cli, hub: HubServer, tmp_path: Path) -> None:
    recipe = _hub_recipe(tmp_path)
    code, _, err = cli("merge", str(recipe))
    assert code == 1 and "no public model" in err and "org/model-a" in err


def test_models_dir_is_remembered(cli, hub: HubServer, tmp_path: Path) -> None:
    from mergetui.settings import AppConfig

    folder = tmp_path / "my-models"
    folder.mkdir()
    code, _, err = cli("--models-dir", str(folder), "hub", "search", "--json")
    assert code == 0 and "remembered models folder" in err
    assert AppConfig.load().models_dirs == [str(folder.resolve())]
    code, _, err = cli("--models-dir", str(folder), "hub", "search", "--json")
    assert AppConfig.load().models_dirs == [str(folder.resolve())]  # not twice
    code, _, err = cli("--models-dir", str(tmp_path / "missing"), "hub", "search")
    assert code == 1 and "models folder not found" in err


def test_the_token_is_never_printed_on_errors(hub: HubServer, tmp_path: Path) -> None:
    """A subprocess with a wrong token in the environment, as a user would run it."""
    import os

    env = dict(os.environ, HF_TOKEN="hf_SecretThatMustNotLeak123456", HF_ENDPOINT=hub.url)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "mergetui", "push", str(folder), "tester/x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert "401" in result.stderr
    assert "hf_SecretThatMustNotLeak123456" not in result.stdout + result.stderr

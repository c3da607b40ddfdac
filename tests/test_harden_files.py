"""Hostile checkpoint files (issue 13, items 6 and 10), through the real `mergetui` entry point.

A shard index may not name a file outside its checkpoint folder (`..`, an absolute path, a folder
that is a link leading out), while a Hugging Face cache snapshot, whose files are links into
../../blobs/, keeps working. A weight file that is a looping link or a FIFO, and a recipe written
into a folder that cannot be written, end in one line (what, where, fix) and exit 1, never a
traceback or a hang. `inspect FILE.safetensors` reads that file's header.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hub_server import HubServer, serve_for_test

from mergetui.checkpoints.inspect import open_checkpoint
from mergetui.checkpoints.weights import SAFETENSORS_INDEX
from mergetui.cli import main
from mergetui.errors import UserError
from mergetui.paths import CACHE_ENV, CONFIG_ENV, DATA_ENV

# A command that should answer at once; if it blocks (a FIFO opened for reading), the test fails
# when this runs out instead of hanging the suite.
HANG_LIMIT_S = 120


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "analysis-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *expected: str) -> None:
    """The CLI's shape for a UserError: `error: WHERE: WHAT` and a `fix:` line, no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), err
    assert any(line.strip().startswith("fix: ") for line in lines[1:]), err
    for text in expected:
        assert text in err, (text, err)


def sharded_copy(sharded: Path, folder: Path) -> Path:
    shutil.copytree(sharded, folder)
    return folder


def rewrite_index(folder: Path, index_name: str, change: dict[str, str]) -> None:
    """Point some shard names of the index elsewhere (`change`: old shard name -> new name)."""
    index_path = folder / index_name
    index = json.loads(index_path.read_text())
    index["weight_map"] = {t: change.get(s, s) for t, s in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))


def merge_recipe(tmp_path: Path, base: Path, other: Path) -> Path:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        "\n".join(
            [
                "[merge]",
                'method = "linear"',
                "",
                "[models.one]",
                f'source = "{base}"',
                "parameters = { weight = 0.5 }",
                "",
                "[models.two]",
                f'source = "{other}"',
                "parameters = { weight = 0.5 }",
            ]
        )
        + "\n"
    )
    return recipe


# -- item 6: shard indexes that point outside the checkpoint ------------------------------------


@pytest.fixture
def escaping(tmp_path: Path, sharded_llama: Path, llama_family: dict[str, Path]) -> dict:
    """A sharded checkpoint and, beside it, another model whose file an index could point at."""
    other = tmp_path / "other"
    shutil.copytree(llama_family["a"], other)
    folder = sharded_copy(sharded_llama, tmp_path / "victim")
    first = json.loads((folder / SAFETENSORS_INDEX).read_text())["weight_map"]
    shard = next(iter(first.values()))
    return {"folder": folder, "other": other, "shard": shard}


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "nested-dotdot"])
def test_inspect_refuses_an_index_that_leaves_the_folder(
    kind: str, escaping: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, other, shard = escaping["folder"], escaping["other"], escaping["shard"]
    target = {
        "dotdot": "../other/model.safetensors",
        "absolute": str(other / "model.safetensors"),
        "nested-dotdot": "sub/../../other/model.safetensors",
    }[kind]
    rewrite_index(folder, SAFETENSORS_INDEX, {shard: target})
    (folder / shard).unlink()  # as a hostile repo would ship it: the shard only "elsewhere"
    code, out, err = run_cli(capsys, "inspect", str(folder))
    assert code == 1 and out == ""
    assert_one_line_error(err, str(folder / SAFETENSORS_INDEX), repr(target), "not a file inside")
    assert ("'..'" if "dotdot" in kind else "absolute path") in err


def test_merge_and_diff_refuse_it_too(
    escaping: dict, tmp_path: Path, llama_family: dict[str, Path], capsys
) -> None:
    folder, shard = escaping["folder"], escaping["shard"]
    rewrite_index(folder, SAFETENSORS_INDEX, {shard: "../other/model.safetensors"})
    recipe = merge_recipe(tmp_path, folder, llama_family["b"])
    out_dir = tmp_path / "merged"
    code, _, err = run_cli(capsys, "merge", str(recipe), "--out", str(out_dir))
    assert code == 1 and not out_dir.exists()
    assert_one_line_error(err, SAFETENSORS_INDEX, "../other/model.safetensors")
    code, _, err = run_cli(capsys, "diff", str(folder), str(llama_family["b"]))
    assert code == 1
    assert_one_line_error(err, SAFETENSORS_INDEX, "../other/model.safetensors")


def test_chat_refuses_it_before_transformers_reads_the_index(
    escaping: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, shard = escaping["folder"], escaping["shard"]
    rewrite_index(folder, SAFETENSORS_INDEX, {shard: "../other/model.safetensors"})
    code, out, err = run_cli(capsys, "chat", str(folder), "--prompt", "hi")
    assert code == 1 and out == ""
    assert_one_line_error(err, SAFETENSORS_INDEX, "../other/model.safetensors")


def test_a_subfolder_that_links_out_is_refused(escaping: dict, capsys) -> None:
    folder, other, shard = escaping["folder"], escaping["other"], escaping["shard"]
    (folder / "sub").symlink_to(other, target_is_directory=True)
    rewrite_index(folder, SAFETENSORS_INDEX, {shard: "sub/model.safetensors"})
    code, _, err = run_cli(capsys, "inspect", str(folder))
    assert code == 1
    assert_one_line_error(err, "'sub/model.safetensors'", "link that leads out")


def test_a_real_subfolder_inside_the_checkpoint_is_fine(
    escaping: dict, sharded_llama: Path, capsys
) -> None:
    folder, shard = escaping["folder"], escaping["shard"]
    (folder / "weights").mkdir()
    (folder / shard).rename(folder / "weights" / shard)
    rewrite_index(folder, SAFETENSORS_INDEX, {shard: f"weights/{shard}"})
    code, out, err = run_cli(capsys, "inspect", str(folder), "--json")
    assert code == 0, err
    assert json.loads(out)["parameters"] == open_checkpoint(sharded_llama).parameter_count
    assert folder / "weights" / shard in open_checkpoint(folder).weight_files


def test_bin_index_that_leaves_the_folder_is_refused(
    tmp_path: Path, llama_family: dict[str, Path], capsys
) -> None:
    import torch
    from safetensors.torch import load_file

    other = tmp_path / "other"
    other.mkdir()
    state = load_file(str(llama_family["base"] / "model.safetensors"))
    torch.save(state, other / "pytorch_model.bin")
    folder = tmp_path / "binmodel"
    folder.mkdir()
    shutil.copy(llama_family["base"] / "config.json", folder)
    index = {"metadata": {}, "weight_map": dict.fromkeys(state, "../other/pytorch_model.bin")}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    code, _, err = run_cli(capsys, "inspect", str(folder), "--allow-bin")
    assert code == 1
    assert_one_line_error(err, "pytorch_model.bin.index.json", "../other/pytorch_model.bin")


def test_hf_cache_snapshot_links_into_blobs_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sharded_llama: Path, capsys
) -> None:
    """A real cache snapshot (written by huggingface_hub from the stand-in Hub): every file is a
    link to ../../blobs/<hash>, shards and index included, and it opens as before."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for hub in serve_for_test(tmp_path, monkeypatch):
        hub.add_repo("org/sharded", sharded_llama)
        code, _, err = run_cli(capsys, "pull", "org/sharded")
        assert code == 0, err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(capsys, "inspect", "org/sharded", "--json")
    assert code == 0, err
    data = json.loads(out)
    snapshot = Path(data["path"])
    shard = snapshot / data["weight_files"][0]
    assert shard.is_symlink() and "blobs" in os.readlink(shard)
    assert (snapshot / SAFETENSORS_INDEX).is_symlink()
    assert data["parameters"] == open_checkpoint(sharded_llama).parameter_count


def test_remote_index_that_leaves_the_repo_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sharded_llama: Path, capsys
) -> None:
    index = json.loads((sharded_llama / SAFETENSORS_INDEX).read_text())
    shard = next(iter(index["weight_map"].values()))
    index["weight_map"] = {
        t: ("../../other/repo/model.safetensors" if s == shard else s)
        for t, s in index["weight_map"].items()
    }
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub: HubServer
    for hub in serve_for_test(tmp_path, monkeypatch):
        hub.add_repo(
            "org/escape", sharded_llama, files={SAFETENSORS_INDEX: json.dumps(index).encode()}
        )
        code, out, err = run_cli(capsys, "inspect", "org/escape", "--remote")
        assert code == 1 and out == ""
        assert_one_line_error(err, "org/escape", "'..'", "../../other/repo/model.safetensors")
        assert not hub.log(contains="other/repo")  # nothing was asked outside the repo


# -- item 10: looping links, FIFOs, read-only targets, a file given to inspect -------------------


@pytest.fixture
def model_copy(tmp_path: Path, llama_family: dict[str, Path]) -> Path:
    return Path(shutil.copytree(llama_family["a"], tmp_path / "model"))


def test_a_looping_link_is_one_line_in_inspect_merge_and_diff(
    model_copy: Path, tmp_path: Path, llama_family: dict[str, Path], capsys
) -> None:
    weights = model_copy / "model.safetensors"
    weights.unlink()
    weights.symlink_to("model.safetensors")  # points at itself: ELOOP
    for argv in (
        ("inspect", str(model_copy)),
        ("inspect", str(weights)),
        ("diff", str(model_copy), str(llama_family["b"])),
        (
            "merge",
            str(merge_recipe(tmp_path, model_copy, llama_family["b"])),
            "--out",
            str(tmp_path / "merged"),
        ),
    ):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1, argv
        assert_one_line_error(err, str(weights), "symbolic link that loops")
    assert not (tmp_path / "merged").exists()


def run_with_limit(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m mergetui ARGV` in a child, killed after HANG_LIMIT_S (then the test fails)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "mergetui", *argv],
            capture_output=True,
            text=True,
            timeout=HANG_LIMIT_S,
            env={**os.environ, "COLUMNS": "200"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"mergetui {' '.join(argv)} blocked for {HANG_LIMIT_S} s (opened a FIFO?)")


@pytest.mark.parametrize("command", ["inspect", "inspect-file", "merge"])
def test_a_fifo_named_like_weights_is_refused_without_blocking(
    command: str, model_copy: Path, tmp_path: Path, llama_family: dict[str, Path]
) -> None:
    weights = model_copy / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    argv = {
        "inspect": ["inspect", str(model_copy)],
        "inspect-file": ["inspect", str(weights)],
        "merge": [
            "merge",
            str(merge_recipe(tmp_path, model_copy, llama_family["b"])),
            "--out",
            str(tmp_path / "merged"),
        ],
    }[command]
    result = run_with_limit(*argv)
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, str(weights), "FIFO (named pipe), not a regular file")


def test_the_tensor_reader_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    """The merge reads weights with its own descriptors: a FIFO put in place of a planned file
    after planning must not block it either."""
    from mergetui.merge.reader import TensorReader

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            with TensorReader() as reader:
                reader.read(fifo, 8, 4, "F32", (1,), "t")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(HANG_LIMIT_S)
    if thread.is_alive():
        with open(fifo, "wb"):  # let the blocked open return so the thread can end
            pass
        pytest.fail("TensorReader blocked opening a FIFO")
    assert isinstance(outcome[0], UserError) and "FIFO" in str(outcome[0])


def test_convert_into_a_read_only_file_system_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """EROFS cannot be produced here without mounting (and a root user ignores mode bits), so the
    file system's answer is given by the one call that asks it: creating the temporary file."""
    sample = Path(__file__).parents[1] / "sample_recipes" / "marcoro14-slerp.toml"
    target = tmp_path / "out" / "recipe.yaml"
    target.parent.mkdir()

    def read_only(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, out, err = run_cli(capsys, "convert", str(sample), str(target))
    assert code == 1 and out == ""
    assert_one_line_error(err, str(target), "read-only", "writable file system")
    assert list(target.parent.iterdir()) == []


def test_convert_when_the_rename_fails_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    sample = Path(__file__).parents[1] / "sample_recipes" / "marcoro14-slerp.toml"
    target = tmp_path / "recipe.yaml"
    real_replace = os.replace

    def refuse(src: str, dst: str) -> None:
        if Path(dst) == target:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    code, _, err = run_cli(capsys, "convert", str(sample), str(target))
    assert code == 1
    assert_one_line_error(err, str(target), "read-only")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".recipe.yaml.")]


def _without_root_override() -> list[str]:
    """A command prefix under which mode bits hold: root ignores them (CAP_DAC_OVERRIDE), so as root
    the child runs with that capability dropped by util-linux's setpriv."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux's setpriv to drop CAP_DAC_OVERRIDE")
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX mode bits")
def test_convert_into_a_folder_without_write_permission(tmp_path: Path) -> None:
    sample = Path(__file__).parents[1] / "sample_recipes" / "marcoro14-slerp.toml"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    command = [sys.executable, "-m", "mergetui", "convert", str(sample), str(locked / "r.yaml")]
    try:
        done = subprocess.run(
            _without_root_override() + command, capture_output=True, text=True, timeout=120
        )
    finally:
        locked.chmod(0o755)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert_one_line_error(done.stderr, str(locked / "r.yaml"), "permission denied")
    assert list(locked.iterdir()) == []


def test_convert_where_a_file_stands_in_for_the_folder(tmp_path: Path, capsys) -> None:
    """A real OS refusal that holds for root too: OUT's folder is a file."""
    sample = Path(__file__).parents[1] / "sample_recipes" / "marcoro14-slerp.toml"
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    code, _, err = run_cli(capsys, "convert", str(sample), str(blocker / "recipe.yaml"))
    assert code == 1
    assert_one_line_error(err, str(blocker), "cannot create this folder")
    assert blocker.read_text() == "a file, not a folder"


def test_inspect_a_safetensors_file_reads_its_header(
    llama_family: dict[str, Path], sharded_llama: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = llama_family["base"]
    code, out, err = run_cli(capsys, "inspect", str(folder / "model.safetensors"), "--json")
    assert code == 0, err
    data = json.loads(out)
    whole = open_checkpoint(folder)
    assert data["parameters"] == whole.parameter_count
    assert set(data["tensors"]) == set(whole.tensors)
    assert data["architecture"] == "LlamaForCausalLM"  # config.json beside it is read
    assert data["weight_files"] == ["model.safetensors"] and data["warnings"] == []
    # A relative path that could also read as a Hub id ("folder/file") is the local file.
    monkeypatch.chdir(folder.parent)
    code, out, err = run_cli(capsys, "inspect", f"{folder.name}/model.safetensors")
    assert code == 0, err
    assert "LlamaForCausalLM" in out and "in 1 safetensors file" in out
    # One shard of several: its tensors only, and a warning pointing at the folder.
    shard = sorted(sharded_llama.glob("*.safetensors"))[0]
    code, out, err = run_cli(capsys, "inspect", str(shard), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert 0 < len(data["tensors"]) < len(whole.tensors)
    assert any(f"inspect {sharded_llama}" in warning for warning in data["warnings"])


def test_inspect_another_file_says_to_pass_its_folder(
    llama_family: dict[str, Path], tmp_path: Path, capsys
) -> None:
    config = llama_family["base"] / "config.json"
    code, _, err = run_cli(capsys, "inspect", str(config))
    assert code == 1
    assert_one_line_error(err, str(config), "this is a file", str(llama_family["base"]))
    dangling = tmp_path / "model.safetensors"
    dangling.symlink_to(tmp_path / "gone.safetensors")
    code, _, err = run_cli(capsys, "inspect", str(dangling))
    assert code == 1
    assert_one_line_error(err, str(dangling), "does not exist")


def test_diff_given_a_file_says_to_pass_its_folder(
    llama_family: dict[str, Path], capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    weights = llama_family["a"] / "model.safetensors"
    code, _, err = run_cli(capsys, "diff", str(weights), str(llama_family["b"]))
    assert code == 1
    assert_one_line_error(err, str(weights), "this is a file", str(llama_family["a"]))

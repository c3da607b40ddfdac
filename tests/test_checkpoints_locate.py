"""find_local: folders first, then the Hugging Face cache in huggingface_hub's own layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mergetui.checkpoints.locate import find_local, hub_cache_dir, looks_like_hub_id

COMMIT_MAIN = "a" * 40
COMMIT_OLD = "b" * 40


def _fake_cache(cache: Path, repo_id: str, model: Path) -> Path:
    """Lay out a repo the way huggingface_hub does: blobs, snapshot symlinks, refs."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for commit in (COMMIT_MAIN, COMMIT_OLD):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for file in model.iterdir():
            blob = repo / "blobs" / f"{commit[:4]}-{file.name}"
            blob.parent.mkdir(exist_ok=True)
            shutil.copy(file, blob)
            (snapshot / file.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_MAIN)
    (repo / "refs" / "v1").write_text(COMMIT_OLD)
    return repo


@pytest.fixture
def clean_hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("meta-llama/Meta-Llama-3-8B", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", True),
        ("gpt2", True),
        ("./models/x", False),
        ("/abs/path", False),
        ("~/models/x", False),
        ("a/b/c", False),
        ("org/x--y", False),
        ("org/a..b", False),
        ("org/-x", False),
        ("org/x.", False),
        ("org/name@main", False),
        ("", False),
        ("x" * 97, False),
    ],
)
def test_looks_like_hub_id(source: str, expected: bool) -> None:
    assert looks_like_hub_id(source) is expected


def test_folder_wins_absolute_and_relative(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = llama_family["base"]
    assert find_local(base) == base.resolve()
    assert find_local(str(base)) == base.resolve()
    monkeypatch.chdir(base.parent)
    assert find_local(base.name) == base.resolve()
    assert find_local("no-such-folder-here") is None


def test_hub_cache_dir_follows_environment(
    clean_hf_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hub_cache_dir() == clean_hf_env / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_hf_env / "xdg"))
    assert hub_cache_dir() == clean_hf_env / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(clean_hf_env / "hf-home"))
    assert hub_cache_dir() == clean_hf_env / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(clean_hf_env / "hub-cache"))
    assert hub_cache_dir() == clean_hf_env / "hub-cache"


def test_snapshot_in_cache_by_revision(
    clean_hf_env: Path, monkeypatch: pytest.MonkeyPatch, llama_family: dict[str, Path]
) -> None:
    from huggingface_hub import try_to_load_from_cache

    cache = clean_hf_env / "hub-cache"
    repo = _fake_cache(cache, "tiny-org/tiny-llama", llama_family["base"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    found = find_local("tiny-org/tiny-llama")
    assert found == repo / "snapshots" / COMMIT_MAIN
    # huggingface_hub resolves the same file through the same layout.
    assert Path(try_to_load_from_cache("tiny-org/tiny-llama", "config.json", cache_dir=cache)) == (
        found / "config.json"
    )
    assert find_local("tiny-org/tiny-llama", revision="v1") == repo / "snapshots" / COMMIT_OLD
    assert find_local("tiny-org/tiny-llama", revision=COMMIT_OLD) == repo / "snapshots" / COMMIT_OLD
    assert find_local("tiny-org/tiny-llama", revision="no-such-branch") is None
    assert find_local("tiny-org/other-model") is None

    # HF_HOME/hub is used when HF_HUB_CACHE is not set.
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(clean_hf_env / "hf-home"))
    assert find_local("tiny-org/tiny-llama") is None
    shutil.move(str(cache), str(clean_hf_env / "hf-home" / "hub"))
    assert find_local("tiny-org/tiny-llama") == (
        clean_hf_env / "hf-home" / "hub" / repo.name / "snapshots" / COMMIT_MAIN
    )


def test_single_snapshot_without_refs(
    clean_hf_env: Path, monkeypatch: pytest.MonkeyPatch, llama_family: dict[str, Path]
) -> None:
    cache = clean_hf_env / "hub-cache"
    repo = _fake_cache(cache, "org/model", llama_family["base"])
    shutil.rmtree(repo / "refs")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # Two snapshots and no refs/main: ambiguous.
    assert find_local("org/model") is None
    shutil.rmtree(repo / "snapshots" / COMMIT_OLD)
    assert find_local("org/model") == repo / "snapshots" / COMMIT_MAIN
    # A snapshot named by ref whose folder is gone is not found.
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_OLD)
    assert find_local("org/model") is None


def test_cached_snapshot_opens_as_checkpoint(
    clean_hf_env: Path, monkeypatch: pytest.MonkeyPatch, llama_family: dict[str, Path]
) -> None:
    from mergetui.checkpoints.inspect import open_checkpoint

    cache = clean_hf_env / "hub-cache"
    _fake_cache(cache, "org/model", llama_family["base"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    checkpoint = open_checkpoint(find_local("org/model"))
    assert checkpoint.num_layers == 4
    assert checkpoint.size_on_disk == (llama_family["base"] / "model.safetensors").stat().st_size

"""Local sources: model folders (nested, broken ones listed with the reason), the Hugging Face cache
(HF_HUB_CACHE and HF_HOME honoured at call time, unfinished downloads skipped), the filter, the
compatibility check by tensor name and shape, and the remembered models folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mergetui.checkpoints.compat import compare_checkpoints
from mergetui.checkpoints.inspect import open_checkpoint
from mergetui.checkpoints.locate import INCOMPLETE_MARKER, find_local
from mergetui.checkpoints.sources import (
    find_checkpoint_dirs,
    scan_cache,
    scan_local,
    scan_models_dirs,
)
from mergetui.paths import CONFIG_ENV
from mergetui.recipe.model import ModelEntry, Recipe
from mergetui.recipe.models_compat import check_recipe_models
from mergetui.settings import AppConfig, remember_models_dirs


def fake_cache_repo(cache: Path, repo_id: str, source: Path, commit: str, ref: bool = True) -> Path:
    """The layout huggingface_hub writes: blobs, snapshots/<commit>/ (files here), refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_models_folders_nested_and_broken(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    root = tmp_path / "models"
    shutil.copytree(llama_family["base"], root / "base")
    shutil.copytree(llama_family["a"], root / "team" / "ft-a")
    shutil.copytree(llama_family["a"], root / ".hidden" / "skip-me")
    broken = root / "broken"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (root / "empty").mkdir()
    assert [p.name for p in find_checkpoint_dirs(root)] == ["base", "broken", "ft-a"]
    rows = {row.name: row for row in scan_models_dirs([root, tmp_path / "missing"])}
    assert set(rows) == {"base", "broken", "ft-a"}
    base = rows["base"]
    local = open_checkpoint(llama_family["base"])
    assert base.origin == "folder" and base.where == "local" and not base.remote
    assert base.parameters == local.parameter_count and base.layers == 4
    assert base.dtype == "F32" and base.architecture == "LlamaForCausalLM"
    assert base.size == local.size_on_disk and base.source == str((root / "base").resolve())
    assert rows["broken"].error and "runs past the end of the file" in rows["broken"].error
    # A folder that is itself a checkpoint is listed as one.
    assert [r.name for r in scan_models_dirs([root / "base"])] == ["base"]


def test_cache_honours_hf_hub_cache_and_hf_home(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    home = tmp_path / "hf-home"
    fake_cache_repo(home / "hub", "org/from-home", llama_family["base"], "a" * 40)
    monkeypatch.setenv("HF_HOME", str(home))
    assert [r.name for r in scan_cache()] == ["org/from-home"]
    other = tmp_path / "explicit-cache"
    snapshot = fake_cache_repo(other, "org/explicit", llama_family["a"], "b" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(other))  # wins over HF_HOME
    rows = scan_cache()
    assert [r.name for r in rows] == ["org/explicit"]
    assert rows[0].origin == "cache" and rows[0].source == "org/explicit"
    assert rows[0].path == snapshot and rows[0].revision is None
    assert rows[0].parameters == open_checkpoint(llama_family["a"]).parameter_count
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing-here"))
    assert scan_cache() == []


def test_cache_skips_unfinished_downloads(
    tmp_path: Path, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    commit = "c" * 40
    snapshot = fake_cache_repo(cache, "org/half", llama_family["base"], commit, ref=False)
    assert find_local("org/half") == snapshot
    marker = snapshot.parent.parent / f"{INCOMPLETE_MARKER}-{commit}"
    marker.write_text("in progress")
    assert find_local("org/half") is None
    assert find_local("org/half", commit) is None
    assert scan_cache() == []
    marker.unlink()
    assert [r.name for r in scan_cache()] == ["org/half"]
    # A snapshot without refs/main is used at its commit.
    assert scan_cache()[0].revision == commit


def test_filter_words(tmp_path: Path, llama_family: dict[str, Path]) -> None:
    root = tmp_path / "models"
    shutil.copytree(llama_family["base"], root / "my-llama")
    row = scan_local([root], cache_dir=tmp_path / "no-cache")[0]
    assert row.matches("") and row.matches("llama") and row.matches("LLAMA local")
    assert row.matches("models/my") and row.matches("folder f32")
    assert not row.matches("qwen") and not row.matches("llama remote")
    # The rest of the path does not count (it would match everything under it).
    assert not row.matches(tmp_path.parts[1])


def test_compatibility_names_tensors_and_both_shapes(
    tiny_model_factory, llama_family: dict[str, Path], arch_models: dict[str, Path], tmp_path: Path
) -> None:
    wide = tiny_model_factory("llama", seed=7, vocab_size=512)
    deep = tiny_model_factory("llama", seed=7, num_layers=5)
    opened = {
        "base": open_checkpoint(llama_family["base"]),
        "a": open_checkpoint(llama_family["a"]),
        "wide": open_checkpoint(wide),
        "deep": open_checkpoint(deep),
        "qwen": open_checkpoint(arch_models["qwen2"]),
    }
    problems = compare_checkpoints(opened, "base")
    by_model: dict[str, list[str]] = {}
    for problem in problems:
        by_model.setdefault(problem.model, []).append(problem.message)
    assert "a" not in by_model  # a fine-tune of the base fits
    assert "model.embed_tokens.weight: base [384, 64] vs wide [512, 64]" in by_model["wide"]
    assert "lm_head.weight: base [384, 64] vs wide [512, 64]" in by_model["wide"]
    assert any("5 layers, but base has 4" in m for m in by_model["deep"])
    assert any(
        m.startswith("model.layers.4.") and m.endswith("in deep, missing in base")
        for m in by_model["deep"]
    )
    assert any(
        "architecture Qwen2ForCausalLM, but base is LlamaForCausalLM" in m for m in by_model["qwen"]
    )
    # Through a recipe: the base is the reference; a model not on disk is reported, not a crash.
    recipe = Recipe(
        method="linear",
        base="a",
        models={
            "a": ModelEntry("a", str(llama_family["a"])),
            "wide": ModelEntry("wide", str(wide)),
            "gone": ModelEntry("gone", str(tmp_path / "gone")),
        },
    )
    report = check_recipe_models(recipe, tmp_path, remote=False)
    assert report.reference == "a" and set(report.checked) == {"a", "wide"}
    assert "gone" in report.skipped and not report.ok
    assert any(p.tensor == "model.embed_tokens.weight" for p in report.problems)


def test_models_dirs_remembered_in_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    assert remember_models_dirs([tmp_path / "m1"]) == [str(tmp_path / "m1")]
    assert remember_models_dirs([tmp_path / "m1", tmp_path / "m2"]) == [str(tmp_path / "m2")]
    config = AppConfig.load()
    assert config.models_dirs == [str(tmp_path / "m1"), str(tmp_path / "m2")]
    assert config.theme  # the other settings still load
    (tmp_path / "config" / "config.toml").write_text(
        'models_dirs = "not a list"\ntheme = "ember"\n'
    )
    config = AppConfig.load()
    assert config.models_dirs == [] and config.theme == "ember"

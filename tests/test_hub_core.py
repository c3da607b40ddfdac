"""mergetui.checkpoints.hub against the Hub stand-in, with the real huggingface_hub client:
search, info, remote headers by Range request, download with progress and cancel, push, the
error cases (401, gated, 404, 429, broken download, hostile file names), offline mode, and the
token never showing up in a message."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import pytest
from hub_server import TEST_TOKEN, HubServer, serve_for_test
from hub_server import merged_folder as _merged_folder

from mergetui.checkpoints import hub as hubmod
from mergetui.checkpoints.inspect import open_checkpoint
from mergetui.checkpoints.locate import find_local
from mergetui.errors import CancelledError, UserError


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from serve_for_test(tmp_path, monkeypatch)


def big_safetensors(megabytes: int = 3) -> bytes:
    """A valid safetensors file of a few MB (one F32 tensor of zeros)."""
    numel = megabytes * 1024 * 1024 // 4
    header = json.dumps(
        {
            "model.embed_tokens.weight": {
                "dtype": "F32",
                "shape": [numel],
                "data_offsets": [0, numel * 4],
            }
        }
    ).encode()
    return struct.pack("<Q", len(header)) + header + bytes(numel * 4)


# -- search and info -------------------------------------------------------------------------


def test_search_sorts_filters_and_limits(hub: HubServer, llama_family: dict[str, Path]) -> None:
    hub.add_repo(
        "org/llama-a",
        llama_family["a"],
        downloads=10,
        likes=50,
        trending=1.0,
        created_at="2024-03-01T00:00:00.000Z",
        tags=["merge"],
    )
    hub.add_repo(
        "org/llama-b",
        llama_family["b"],
        downloads=99,
        likes=1,
        trending=9.0,
        created_at="2024-01-01T00:00:00.000Z",
    )
    hub.add_repo(
        "other/qwen", llama_family["c"], downloads=5, likes=5, created_at="2024-06-01T00:00:00.000Z"
    )
    assert [m.repo_id for m in hubmod.search_models("llama")] == ["org/llama-b", "org/llama-a"]
    assert [m.repo_id for m in hubmod.search_models("", sort="likes")][0] == "org/llama-a"
    assert [m.repo_id for m in hubmod.search_models("", sort="trending")][0] == "org/llama-b"
    assert [m.repo_id for m in hubmod.search_models("", sort="created")][0] == "other/qwen"
    assert [m.repo_id for m in hubmod.search_models("", filters=["merge"])] == ["org/llama-a"]
    assert len(hubmod.search_models("", limit=2)) == 2
    request = hub.log("GET", "/api/models")[-1]
    assert request.query["limit"] == ["2"] and request.query["sort"] == ["downloads"]
    found = hubmod.search_models("llama-a")[0]
    assert found.downloads == 10 and found.likes == 50 and "merge" in found.tags
    with pytest.raises(UserError, match="unknown sort"):
        hubmod.search_models("x", sort="stars")


def test_model_info_has_sizes_licence_gating_and_parameters(
    hub: HubServer, llama_family: dict[str, Path]
) -> None:
    repo = hub.add_repo(
        "org/tiny", llama_family["base"], license="apache-2.0", gated="manual", tags=["merge"]
    )
    info = hubmod.model_info("org/tiny")
    local = open_checkpoint(llama_family["base"])
    assert info.sha == repo.sha
    assert info.license == "apache-2.0" and info.gated == "manual"
    assert info.total_parameters == local.parameter_count and info.dtype == "F32"
    assert info.architecture == "LlamaForCausalLM"
    sizes = {f.path: f.size for f in info.files}
    assert sizes["model.safetensors"] == (llama_family["base"] / "model.safetensors").stat().st_size
    assert info.size == sum(p.stat().st_size for p in llama_family["base"].iterdir())
    assert [f.lfs for f in info.files if f.path == "model.safetensors"] == [True]


def test_remote_headers_read_by_range_without_the_weights(
    hub: HubServer, sharded_llama: Path
) -> None:
    hub.add_repo("org/sharded", sharded_llama)
    remote = hubmod.read_remote_checkpoint("org/sharded")
    local = open_checkpoint(sharded_llama)
    assert list(remote.tensors) == list(local.tensors)
    assert {n: t.shape for n, t in remote.tensors.items()} == {
        n: t.shape for n, t in local.tensors.items()
    }
    assert remote.parameter_count == local.parameter_count
    assert remote.num_layers == local.num_layers == 4
    assert remote.architecture == "LlamaForCausalLM"
    assert remote.has_tokenizer and remote.has_chat_template
    assert remote.size_on_disk == local.size_on_disk
    assert len(remote.weight_files) > 1
    # Every safetensors request was a Range request: 8 bytes, then exactly the header.
    shard_gets = [r for r in hub.log("GET", "/resolve/") if r.path.endswith(".safetensors")]
    assert shard_gets and all("range" in r.headers for r in shard_gets)
    assert hub.downloaded("org/sharded") == ["config.json", "model.safetensors.index.json"]
    data = remote.to_dict()
    assert data["remote"] is True and data["repo_id"] == "org/sharded"


# -- download --------------------------------------------------------------------------------


def test_download_into_the_cache_with_progress(
    hub: HubServer, llama_family: dict[str, Path]
) -> None:
    files = {"notes.bin": b"x" * 100, "extra/readme.txt": b"hello"}
    hub.add_repo("org/tiny", llama_family["base"], files=files)
    events: list[hubmod.DownloadProgress] = []
    snapshot = hubmod.download_repo("org/tiny", on_progress=events.append)
    assert find_local("org/tiny") == snapshot
    # Only safetensors, JSON and tokenizer files by default.
    fetched = sorted(p.name for p in snapshot.iterdir())
    assert "notes.bin" not in fetched and "extra" not in fetched
    assert "model.safetensors" in fetched and "chat_template.jinja" in fetched
    assert (
        open_checkpoint(snapshot).parameter_count
        == open_checkpoint(llama_family["base"]).parameter_count
    )
    # Progress by bytes and files, ending exactly at the totals.
    last = events[-1]
    total = sum((llama_family["base"] / name).stat().st_size for name in fetched)
    assert last.done and last.bytes_done == last.bytes_total == total
    assert last.files_done == last.file_count == len(fetched)
    assert [e.bytes_done for e in events] == sorted(e.bytes_done for e in events)
    # The weights come last, after the small metadata files.
    order = [p.split("/", 2)[-1] for p in hub.downloaded("org/tiny")]
    assert order[-1] == "model.safetensors"
    # A second pull fetches nothing.
    count = len(hub.log("GET", "/resolve/"))
    assert hubmod.download_repo("org/tiny") == snapshot
    assert len(hub.log("GET", "/resolve/")) == count


def test_include_patterns(hub: HubServer, llama_family: dict[str, Path]) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    snapshot = hubmod.download_repo("org/tiny", include=["config.json"])
    assert [p.name for p in snapshot.iterdir()] == ["config.json"]
    with pytest.raises(UserError, match="no file in the repo matches"):
        hubmod.download_repo("org/tiny", include=["*.gguf"])


def test_cancel_leaves_no_partial_file_and_a_later_pull_resumes(
    hub: HubServer, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # huggingface_hub reads 10 MB per chunk; smaller chunks let a test file be cancelled mid-way.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 65536)
    weights = big_safetensors(3)
    hub.add_repo("org/big", llama_family["base"], files={"model.safetensors": weights})
    cancel = threading.Event()
    seen: list[hubmod.DownloadProgress] = []

    def on_progress(event: hubmod.DownloadProgress) -> None:
        seen.append(event)
        if (
            event.file == "model.safetensors"
            and event.bytes_done > event.bytes_total - len(weights) + 200_000
        ):
            cancel.set()

    with pytest.raises(CancelledError):
        hubmod.download_repo("org/big", on_progress=on_progress, cancel=cancel)
    assert seen[-1].bytes_done < seen[-1].bytes_total
    from mergetui.checkpoints.locate import cached_repo_dir

    repo = cached_repo_dir("org/big")
    assert not list(repo.rglob("*.incomplete"))
    assert not list((repo / "snapshots").glob("*/model.safetensors"))
    assert find_local("org/big") is None  # an unfinished snapshot is not a model
    assert not (repo / "refs" / "main").exists()
    # Pull again: the finished files are kept, the rest comes, and it is a model now.
    before = len(hub.downloaded("org/big"))
    snapshot = hubmod.download_repo("org/big")
    assert find_local("org/big") == snapshot
    assert (snapshot / "model.safetensors").read_bytes() == weights
    assert hub.downloaded("org/big")[before:] == [hub.downloaded("org/big")[-1]]


def test_hostile_file_names_are_refused(
    hub: HubServer, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    hub.add_repo("org/evil", llama_family["base"], files={"../../escape.json": b"{}"})
    with pytest.raises(UserError, match="refused the repo file name"):
        hubmod.download_repo("org/evil")
    assert not hub.downloaded("org/evil")
    assert not (tmp_path / "escape.json").exists()
    for name in ("/etc/passwd", "a/../../b", "C:\\x", "a\\..\\b", "", "./a"):
        with pytest.raises(UserError):
            hubmod.safe_repo_path(name)
    assert hubmod.safe_repo_path("sub/model.safetensors") == "sub/model.safetensors"


def test_broken_download_says_to_retry(hub: HubServer, llama_family: dict[str, Path]) -> None:
    hub.add_repo("org/broken", llama_family["base"])
    hub.truncate = {"model.safetensors"}
    with pytest.raises(UserError) as caught:
        hubmod.download_repo("org/broken")
    assert "broke off" in caught.value.message and "again" in caught.value.fix
    from mergetui.checkpoints.locate import cached_repo_dir

    assert not list(cached_repo_dir("org/broken").rglob("*.incomplete"))
    assert find_local("org/broken") is None


# -- errors, token, offline ------------------------------------------------------------------


def test_not_found_private_gated_and_rate_limited(
    hub: HubServer, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/private", llama_family["base"], private=True)
    hub.add_repo("org/gated", llama_family["base"], gated="auto")
    with pytest.raises(UserError) as caught:
        hubmod.model_info("org/missing")
    assert "no public model" in caught.value.message and "HF_TOKEN" in caught.value.fix
    with pytest.raises(UserError, match="no public model"):
        hubmod.model_info("org/private")
    # Gated: the info is public, the files are not.
    assert hubmod.model_info("org/gated").gated == "auto"
    with pytest.raises(UserError) as caught:
        hubmod.download_repo("org/gated")
    assert "gated" in caught.value.message and "request access" in caught.value.fix
    assert f"{hub.url}/org/gated" in caught.value.fix
    hub.rate_limited = True
    with pytest.raises(UserError) as caught:
        hubmod.search_models("x")
    assert "rate-limiting" in caught.value.message and "wait" in caught.value.fix
    hub.rate_limited = False
    # With the token, the private repo opens and the gated files come.
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    assert hubmod.model_info("org/private").private
    assert find_local("org/gated") is None
    before = len(hub.log(contains="/org/gated/resolve"))
    assert hubmod.download_repo("org/gated") == find_local("org/gated")
    sent = hub.log(contains="/org/gated/resolve")[before:]
    assert sent and all(r.headers.get("authorization") == f"Bearer {TEST_TOKEN}" for r in sent)
    with pytest.raises(UserError) as caught:
        hubmod.model_info("org/missing")
    assert "cannot see it" in caught.value.message


def test_token_never_in_messages(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    assert TEST_TOKEN not in hubmod.redact(f"failed with Authorization: Bearer {TEST_TOKEN}")
    assert "hf_***" in hubmod.redact(f"token {TEST_TOKEN} leaked")
    assert "hf_***" in hubmod.redact("other hf_abcdefghijklmnop token", token="")
    error = hubmod.hub_error(RuntimeError(f"boom {TEST_TOKEN}"), "org/x")
    assert TEST_TOKEN not in str(error)


def test_offline_mode_refuses_before_any_request(
    hub: HubServer, llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hubmod.is_offline() and "HF_HUB_OFFLINE" in hubmod.offline_reason()
    for call in (
        lambda: hubmod.search_models("tiny"),
        lambda: hubmod.model_info("org/tiny"),
        lambda: hubmod.read_remote_checkpoint("org/tiny"),
        lambda: hubmod.download_repo("org/tiny"),
    ):
        with pytest.raises(hubmod.HubOffline, match="offline"):
            call()
    assert hub.requests == []


def test_no_network_is_offline_with_a_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = HubServer().start()
    url = server.url
    server.stop()  # nothing listens there any more
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(hubmod.HubOffline) as caught:
        hubmod.search_models("x")
    assert "cannot reach the Hub" in caught.value.message and "HF_HUB_OFFLINE=1" in caught.value.fix


# -- push ------------------------------------------------------------------------------------


def test_push_creates_the_repo_and_uploads_with_progress(
    hub: HubServer, llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    card = "---\nbase_model:\n- org/parent-a\n- org/parent-b\ntags:\n- merge\n---\n# merged\n"
    folder = _merged_folder(tmp_path, llama_family["base"], card)
    events: list[hubmod.UploadProgress] = []
    url = hubmod.push_folder(folder, "tester/my-merge", private=True, on_progress=events.append)
    assert url.endswith("/tester/my-merge")
    repo = hub.repos["tester/my-merge"]
    assert repo.private
    assert repo.files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert repo.files["README.md"].decode() == card
    assert set(repo.files) == {p.name for p in folder.iterdir()}
    assert len(hub.commits) == 1
    assert events[-1].stage == "done" and events[-1].bytes_done == events[-1].bytes_total
    assert any(e.stage == "uploading" and 0 < e.bytes_done < e.bytes_total for e in events)
    # Pushing again updates the same repo (create_repo accepts that it exists).
    hubmod.push_folder(folder, "tester/my-merge")
    assert len(hub.commits) == 2


def test_push_needs_a_token_and_cancel_commits_nothing(
    hub: HubServer, llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _merged_folder(tmp_path, llama_family["base"], "# card\n")
    with pytest.raises(UserError) as caught:
        hubmod.push_folder(folder, "tester/x")
    assert "token" in caught.value.message and "HF_TOKEN" in caught.value.fix
    monkeypatch.setenv("HF_TOKEN", "hf_WrongToken1234567890")
    with pytest.raises(UserError) as caught:
        hubmod.push_folder(folder, "tester/x")
    assert "401" in caught.value.message and "hf_WrongToken" not in str(caught.value)
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    cancel = threading.Event()

    def on_progress(event: hubmod.UploadProgress) -> None:
        if event.stage == "uploading" and event.bytes_done > 0:
            cancel.set()

    with pytest.raises(CancelledError):
        hubmod.push_folder(folder, "tester/x", on_progress=on_progress, cancel=cancel)
    assert hub.commits == []
    with pytest.raises(UserError, match="org/name"):
        hubmod.push_folder(folder, "just-a-name")

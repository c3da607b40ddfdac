"""Hub calls never wait without end (issue 13, item 9).

Against a server that accepts connections and never answers (`BlackHole`), and against the Hub
stand-in when a file's body stalls after its headers, every command that talks to the Hub ends
within its timeout (HF_HUB_ETAG_TIMEOUT for metadata, HF_HUB_DOWNLOAD_TIMEOUT for transfers, 1 s
here) with exit 1 and one line saying which server did not answer, how long it was given, and how
to wait longer or go offline. A request that fails once (a 503, a body cut short) is tried again
and succeeds; a 4xx is not tried again. `pull` stops on the first Ctrl-C while the Hub is silent.
The Checkpoints screen's Hub workers end the same way.

The CLI runs in a thread with a deadline, so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub.constants  # noqa: F401 - imported before any test sets HF_ENDPOINT
import pytest
from hub_server import BlackHole, HubServer, serve_for_test

from mergetui.checkpoints import hub as hubmod
from mergetui.checkpoints.hub.net import RETRIES, timeout_seconds
from mergetui.checkpoints.locate import INCOMPLETE_MARKER, cached_repo_dir, find_local
from mergetui.errors import UserError

TRIES = RETRIES + 1
DEADLINE_S = (
    60  # far above what a 1 s timeout takes (3 tries and 1.5 s of pauses), far below a hang
)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MERGETUI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "1")
    yield from serve_for_test(tmp_path, monkeypatch)


@pytest.fixture
def silent(hub: HubServer, monkeypatch: pytest.MonkeyPatch):
    """A black hole as HF_ENDPOINT (the stand-in stays up, unused)."""
    from huggingface_hub.utils import build_hf_headers

    # huggingface_hub fetches a registry once per process, when it first builds headers, from the
    # endpoint it saw when imported: done now, so that the hole counts only mergetui's requests.
    build_hf_headers()
    with BlackHole() as hole:
        monkeypatch.setenv("HF_ENDPOINT", hole.url)
        yield hole


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """`mergetui.cli.main(argv)` -> (exit code, stdout, stderr, seconds), failing past the
    deadline rather than waiting on a hung request."""
    import mergetui.cli

    def run(*argv: str) -> tuple[int, str, str, float]:
        result: dict[str, int] = {}
        thread = threading.Thread(
            target=lambda: result.update(code=mergetui.cli.main(list(argv))), daemon=True
        )
        start = time.monotonic()
        thread.start()
        thread.join(DEADLINE_S)
        elapsed = time.monotonic() - start
        assert not thread.is_alive(), f"mergetui {' '.join(argv)} still waiting after {elapsed} s"
        captured = capsys.readouterr()
        return result["code"], captured.out, captured.err, elapsed

    return run


def assert_one_timeout_line(err: str, server: str, variable: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and "pulling" not in line]
    assert "Traceback" not in err
    assert len(lines) == 2 and lines[0].startswith("error:") and "fix:" in lines[1], err
    assert f"{server} did not answer within 1 s" in lines[0], err
    assert f"{TRIES} tries" in lines[0]
    assert f"{variable}=<seconds>" in lines[1] and "HF_HUB_OFFLINE=1" in lines[1]


# -- a server that never answers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("hub", "info", "org/tiny"),
        ("hub", "search", "tiny"),
        ("pull", "org/tiny"),
        ("inspect", "--remote", "org/tiny"),
    ],
    ids=["hub-info", "hub-search", "pull", "inspect-remote"],
)
def test_commands_time_out_against_a_silent_server(
    cli, silent: BlackHole, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    code, out, err, elapsed = cli(*argv)
    assert code == 1, (out, err)
    assert elapsed < 20  # 1 s a try; huggingface_hub's default of 10 s would take 30 s
    assert_one_timeout_line(err, f"the Hub at {silent.url}", "HF_HUB_ETAG_TIMEOUT")
    path = "/api/models" + ("" if argv[1] == "search" else "/org/tiny")
    assert f"GET {path}," in err
    assert silent.connections == TRIES  # tried again, a bounded number of times
    assert not (tmp_path / "hf-cache").exists() or not list((tmp_path / "hf-cache").rglob("*"))


def test_a_longer_timeout_is_used_and_a_bad_one_refused(
    cli, silent: BlackHole, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    code, _, err, elapsed = cli("hub", "info", "org/tiny")
    assert code == 1 and "did not answer within 2 s" in err and "(now 2)" in err
    assert elapsed >= TRIES * 2
    for bad in ("soon", "-1", "1.5", "99999"):
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", bad)
        code, _, err, _ = cli("hub", "info", "org/tiny")
        assert code == 1 and "HF_HUB_ETAG_TIMEOUT" in err and "whole number of seconds" in err
        assert "Traceback" not in err
    assert silent.connections == TRIES  # a bad setting sends nothing
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0")  # as huggingface_hub: 0 means the default
    assert timeout_seconds("HF_HUB_ETAG_TIMEOUT") == 10


# -- headers, then a body that never comes -------------------------------------------------------


def test_pull_times_out_when_a_body_stalls_and_resumes_later(
    cli, hub: HubServer, llama_family: dict[str, Path]
) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    hub.stall = {"model.safetensors"}
    code, _, err, _ = cli("pull", "org/tiny")
    assert code == 1
    assert_one_timeout_line(err, f"the Hub at {hub.url}", "HF_HUB_DOWNLOAD_TIMEOUT")
    assert "/resolve/" in err and "model.safetensors" in err
    stalled = [r for r in hub.log("GET", "/resolve/") if r.path.endswith("model.safetensors")]
    assert len(stalled) == TRIES
    repo = cached_repo_dir("org/tiny")
    assert not list(repo.rglob("*.incomplete"))
    assert list(repo.glob(f"{INCOMPLETE_MARKER}-*")) and find_local("org/tiny") is None
    # The Hub answers again: the pull resumes, fetching only what is missing.
    hub.stall = set()
    fetched = len(hub.downloaded("org/tiny"))
    code, _, err, _ = cli("pull", "org/tiny")
    assert code == 0, err
    assert hub.downloaded("org/tiny")[fetched:] == ["model.safetensors"]
    snapshot = find_local("org/tiny")
    assert snapshot is not None
    assert (snapshot / "model.safetensors").read_bytes() == (
        llama_family["base"] / "model.safetensors"
    ).read_bytes()


def test_inspect_remote_header_read_times_out(
    cli, hub: HubServer, llama_family: dict[str, Path]
) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    hub.stall = {"model.safetensors"}
    code, _, err, _ = cli("inspect", "--remote", "org/tiny")
    assert code == 1
    assert_one_timeout_line(err, f"the Hub at {hub.url}", "HF_HUB_DOWNLOAD_TIMEOUT")
    ranged = [r for r in hub.log("GET", "model.safetensors") if "range" in r.headers]
    assert len(ranged) == TRIES


# -- retries -------------------------------------------------------------------------------------


def test_a_request_that_fails_once_is_tried_again(
    cli, hub: HubServer, llama_family: dict[str, Path]
) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    hub.fail_next = {"/api/models/org/tiny": 1}
    code, out, err, _ = cli("hub", "info", "org/tiny")
    assert code == 0 and "LlamaForCausalLM" in out, err
    assert len(hub.log("GET", "/api/models/org/tiny")) == 2
    hub.fail_next = {"/api/models": 1}
    code, out, _, _ = cli("hub", "search", "tiny")
    assert code == 0 and "org/tiny" in out
    assert len([r for r in hub.log("GET") if r.path == "/api/models"]) == 2


def test_a_download_cut_short_once_resumes_where_it_stopped(
    cli, hub: HubServer, llama_family: dict[str, Path]
) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    hub.cut_next = {"model.safetensors": 1}
    code, _, err, _ = cli("pull", "org/tiny")
    assert code == 0, err
    gets = [r for r in hub.log("GET", "/resolve/") if r.path.endswith("model.safetensors")]
    weights = (llama_family["base"] / "model.safetensors").read_bytes()
    assert len(gets) == 2 and gets[1].headers.get("range") == f"bytes={len(weights) // 2}-"
    snapshot = find_local("org/tiny")
    assert snapshot is not None and (snapshot / "model.safetensors").read_bytes() == weights


def test_client_errors_are_not_tried_again(cli, hub: HubServer) -> None:
    code, _, err, _ = cli("hub", "info", "org/missing")
    assert code == 1 and "no public model" in err
    assert len(hub.log("GET", "/api/models/org/missing")) == 1
    hub.rate_limited = True
    code, _, err, _ = cli("hub", "search", "x")
    assert code == 1 and "rate-limiting" in err
    assert len([r for r in hub.log("GET") if r.path == "/api/models"]) == 1


def test_a_server_error_that_persists_ends_after_the_retries(
    hub: HubServer, llama_family: dict[str, Path]
) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    hub.fail_next = {"/api/models/org/tiny": 99}
    with pytest.raises(UserError, match="the Hub had a problem \\(503\\)"):
        hubmod.model_info("org/tiny")
    assert len(hub.log("GET", "/api/models/org/tiny")) == TRIES


# -- Ctrl-C --------------------------------------------------------------------------------------


def test_pull_stops_on_the_first_ctrl_c(
    hub: HubServer, llama_family: dict[str, Path], tmp_path: Path
) -> None:
    hub.add_repo("org/tiny", llama_family["base"])
    hub.stall = {"model.safetensors"}
    env = dict(
        os.environ,
        HF_ENDPOINT=hub.url,
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
        HF_HUB_DOWNLOAD_TIMEOUT="600",  # Ctrl-C must not wait for this
        HF_HUB_ETAG_TIMEOUT="600",
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "mergetui", "pull", "org/tiny"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(2400):  # until the weights are asked for (and stall)
            if any(r.path.endswith("model.safetensors") for r in hub.log("GET", "/resolve/")):
                break
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        time.sleep(0.3)  # inside the read now
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)  # once
        out, err = child.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert elapsed < 15  # not the 600 s download timeout
    assert "Traceback" not in err and "Cancelled" in err and "pull again to resume" in err
    repo = cached_repo_dir("org/tiny", tmp_path / "hf-cache")
    assert not list(repo.rglob("*.incomplete"))
    assert list(repo.glob(f"{INCOMPLETE_MARKER}-*"))  # marked unfinished: a later pull resumes
    assert (repo / "snapshots").is_dir() and not list(repo.glob("snapshots/*/model.safetensors"))


# -- the Checkpoints screen ----------------------------------------------------------------------


async def test_checkpoints_screen_hub_workers_end(
    silent: BlackHole, hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.paths import CONFIG_ENV
    from mergetui.settings import AppConfig
    from mergetui.tui.app import MergeTuiApp

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    app = MergeTuiApp(initial_screen="checkpoints", config=AppConfig())
    notes: list[str] = []
    monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append(str(message)))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        screen = app.screen
        await pilot.press("slash", *"tiny", "enter")
        for _ in range(DEADLINE_S * 10):
            if "unreachable" in screen.hub_message:
                break
            await pilot.pause(0.1)
        assert "unreachable" in screen.hub_message
        assert any("did not answer within 1 s" in n and "HF_HUB_OFFLINE" in n for n in notes)
        await app.workers.wait_for_complete()


async def test_checkpoints_screen_download_ends_when_the_body_stalls(
    hub: HubServer, llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetui.paths import CONFIG_ENV
    from mergetui.settings import AppConfig
    from mergetui.tui.app import MergeTuiApp

    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    hub.add_repo("acme/tiny", llama_family["base"])
    hub.stall = {"model.safetensors"}
    app = MergeTuiApp(initial_screen="checkpoints", config=AppConfig())
    notes: list[str] = []
    monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append(str(message)))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        screen = app.screen
        await pilot.press("slash", *"tiny", "enter")
        for _ in range(DEADLINE_S * 10):
            if screen.rows and screen.rows[0].source == "acme/tiny":
                break
            await pilot.pause(0.1)
        await pilot.press("escape", "d")
        await pilot.pause()
        assert screen.download is not None
        for _ in range(DEADLINE_S * 10):
            if screen.download is None:
                break
            await pilot.pause(0.1)
        assert screen.download is None and not screen.query_one("#ck-download").display
        assert any(
            "did not answer within 1 s" in n and "HF_HUB_DOWNLOAD_TIMEOUT" in n for n in notes
        )
        assert find_local("acme/tiny") is None
        await app.workers.wait_for_complete()


def test_a_model_card_alias_bomb_is_refused_before_push(tmp_path: Path) -> None:
    """push reads the folder's README front matter to add `base_model`: with the recipes' bounded
    loader, a card whose aliases expand past the limit is one located error, not unbounded work."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "README.md").write_text("---\n" + "\n".join(levels) + "\n---\n# card\n")
    with pytest.raises(UserError) as caught:
        hubmod.card_with_parents(folder)
    assert "expands to more than" in caught.value.message
    assert caught.value.where.startswith(str(folder / "README.md") + ":")

"""`mergetui evolve` end to end on tiny real checkpoints, scored by the real local backend (parents
loaded once, candidates merged in memory, perplexity on a text): the files, the best recipe merging
to the best candidate's tensors, the same seed giving the same search, Ctrl-C then resume, and each
user error as one line, exit 1, nothing written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from evolve_helpers import LABEL, read_lines, write_spec

from mergetui.cli import main
from mergetui.recipe.io import load_recipe
from mergetui.search import events
from mergetui.search.loop import run_search
from mergetui.search.spec import load_search_spec

SEARCH = "population = 3\nbudget = 6\nseed = 7\n"
ARGS = ["--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, torch's spinning second thread made each tiny
    candidate ten times slower. The results do not depend on it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, llama_family: dict[str, Path]) -> Path:
    """A folder holding the spec (base + a + b, weights searched, one group each)."""
    folder = tmp_path_factory.mktemp("evolve")
    write_spec(folder, llama_family, search=SEARCH)
    return folder


@pytest.fixture(scope="module")
def first_run(family: Path) -> tuple[Path, dict]:
    """`mergetui evolve spec.toml --json` once: its folder and the JSON it printed."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["evolve", str(family / "spec.toml"), *ARGS, "--json"])
    assert code == 0
    return family / "spec-evolve", json.loads(out.getvalue())


def test_evolve_writes_the_results(first_run: tuple[Path, dict]) -> None:
    out, printed = first_run
    lines = read_lines(out / "evaluations.jsonl")
    assert len(lines) == 6
    assert [(line["generation"], line["candidate"]) for line in lines] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)
    ]  # fmt: skip
    assert all(set(line["scores"]) == {LABEL} and line["seconds"] > 0 for line in lines)
    assert all(line["fitness"] == line["scores"][LABEL] for line in lines)
    best = min(lines, key=lambda line: line["fitness"])
    assert printed == json.loads((out / "summary.json").read_text())
    assert printed["best"]["values"] == best["values"]
    assert printed["evaluations"] == 6 and printed["stopped"] is False
    assert sorted(p.name for p in out.iterdir()) == [
        "best.toml",
        "best.yaml",
        "evaluations.jsonl",
        "summary.json",
    ]


def test_best_toml_merges_to_the_best_candidate(
    first_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """`mergetui merge best.toml` writes the tensors the search scored in memory, and they score
    what the search recorded."""
    from safetensors.torch import load_file

    from mergetui.search.evaluator import CandidateEvaluator

    out, printed = first_run
    merged = tmp_path / "merged"
    assert main(["merge", str(out / "best.toml"), "--out", str(merged)]) == 0
    on_disk: dict = {}
    for file in merged.glob("*.safetensors"):
        on_disk.update(load_file(file))
    spec = load_search_spec(out.parent / "spec.toml")
    evaluator = CandidateEvaluator(spec, device="cpu")
    try:
        scores = evaluator.evaluate(load_recipe(out / "best.toml"))
        resident = {name: t.detach().cpu() for name, t in evaluator.model.state_dict().items()}
    finally:
        evaluator.close()
    assert scores[LABEL] == pytest.approx(printed["best"]["fitness"], rel=1e-9)
    assert set(on_disk) <= set(resident)
    for name, tensor in on_disk.items():
        assert tensor.equal(resident[name].to(tensor.dtype)), name


def test_the_same_seed_again_after_ctrl_c_resumes_to_the_same_search(
    family: Path, first_run: tuple[Path, dict]
) -> None:
    """Stopped after two candidates (as Ctrl-C stops it), then the same command again: the search
    picks up where it stopped and ends with the very evaluations of the uninterrupted run."""
    out = family / "resumed"
    cancel = threading.Event()

    def stop_after_two(event: events.SearchEvent) -> None:
        if isinstance(event, events.CandidateScored) and event.evaluation == 1:
            cancel.set()

    spec = load_search_spec(family / "spec.toml")
    finished = run_search(spec, out_dir=out, device="cpu", on_event=stop_after_two, cancel=cancel)
    assert finished.stopped and finished.evaluations == 2
    assert len(read_lines(out / "evaluations.jsonl")) == 2
    assert main(["evolve", str(family / "spec.toml"), *ARGS, "--out", str(out)]) == 0
    _same_search(out, first_run[0])


def _same_search(out: Path, reference: Path) -> None:
    lines = read_lines(out / "evaluations.jsonl")
    expected = read_lines(reference / "evaluations.jsonl")
    assert [line["evaluation"] for line in lines] == list(range(6))  # no duplicates, no gaps
    for line, other in zip(lines, expected, strict=True):
        assert (line["generation"], line["candidate"]) == (other["generation"], other["candidate"])
        assert line["values"] == other["values"]
        assert line["scores"] == pytest.approx(other["scores"], rel=1e-12)
    assert (out / "best.toml").read_text().split("\n", 1)[1] == (
        (reference / "best.toml").read_text().split("\n", 1)[1]
    )


def test_sigint_stops_after_the_candidate_and_exits_130(
    family: Path, first_run: tuple[Path, dict]
) -> None:
    out = family / "interrupted"
    command = [sys.executable, "-m", "mergetui", "evolve", str(family / "spec.toml"), *ARGS]
    command += ["--out", str(out), "--budget", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 240
    log = out / "evaluations.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr
    assert "Stopped" in stdout
    done = len(read_lines(log))
    assert 1 <= done < 30
    assert json.loads((out / "summary.json").read_text())["stopped"] is True
    # The same command (with the first run's budget) resumes: nothing repeated, nothing lost.
    assert (
        main(["evolve", str(family / "spec.toml"), *ARGS, "--out", str(out), "--budget", "6"]) == 0
    )
    if done <= 6:
        _same_search(out, first_run[0])


# ----------------------------------------------------------------------------------------------
# User errors: one line, exit 1, nothing written


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-parameter", "nothing to search"),
        ("unknown-parameter", "has no parameter 'wieght'"),
        ("unknown-kind", "unknown objective kind 'perplexty'"),
        ("missing-text", "does not exist"),
        ("empty-text", "is empty"),
        ("budget", "below the population"),
        ("models", "different shapes"),
        ("workers", "--workers is for the ray backend"),
        ("ray", "127.0.0.1"),
    ],
)
def test_user_errors(
    case: str,
    message: str,
    tmp_path: Path,
    llama_family: dict[str, Path],
    tiny_model_factory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    family = dict(llama_family)
    search, objective, extra = SEARCH, None, []
    if case == "no-parameter":
        search += "parameters = []\n"
    elif case == "unknown-parameter":
        search += 'parameters = ["wieght"]\n'
    elif case == "unknown-kind":
        objective = '[[search.objective]]\nkind = "perplexty"\ntext = "prose.txt"\n'
    elif case == "missing-text":
        objective = '[[search.objective]]\nkind = "perplexity"\ntext = "gone.txt"\n'
    elif case == "empty-text":
        (tmp_path / "empty.txt").write_text("\n")
        objective = '[[search.objective]]\nkind = "perplexity"\ntext = "empty.txt"\n'
    elif case == "budget":
        extra = ["--budget", "2"]
    elif case == "models":
        family["b"] = tiny_model_factory("llama", seed=5, hidden_size=32)
    elif case == "workers":
        extra = ["--workers", "0"]
    elif case == "ray":
        extra = ["--backend", "ray", "--ray-address", f"127.0.0.1:{_closed_port()}"]
    spec = write_spec(tmp_path, family, search=search, objective=objective)
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main(["evolve", str(spec), *ARGS, *extra]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no spec-evolve folder
    assert not os.path.exists(tmp_path / "spec-evolve")

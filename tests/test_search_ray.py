"""The Ray backend on real Ray and the real evaluator, with tiny real llama checkpoints.

Two Ray sessions, one per class, each shared by its tests (Ray takes seconds to start on two
cores): a local instance started by the backend's own `connect` (`ray.init(num_cpus=2)` here), and
two simulated nodes (`ray.cluster_utils.Cluster`: a head and a worker node, one CPU each) that the
backend joins by address. Every score is compared with the local backend's for the same candidate.
The tests that need no Ray session (sizing, addresses, Ray missing) run first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from mergetui.errors import UserError

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline and quiet
ray = pytest.importorskip("ray", reason="the Ray backend needs the optional ray extra")

from mergetui.search import backend_ray  # noqa: E402
from mergetui.search.backend_ray import RayBackend  # noqa: E402
from mergetui.search.backends import make_backend  # noqa: E402
from mergetui.search.ray_cluster import (  # noqa: E402
    check_reachable,
    connect,
    import_ray,
    parse_address,
    plan_workers,
)

REPO = Path(__file__).resolve().parent.parent
TEXT = (
    "The river ran quietly past the old mill, and the miller counted the sacks of grain. "
    "def add(a, b):\n    return a + b\n"
) * 12
# Candidates' values (task_arithmetic weights: model a's two groups, then b's).
VALUES = [
    [0.5, 0.5, 0.5, 0.5],
    [0.9, 0.1, 0.2, 0.8],
    [0.0, 1.0, 1.0, 0.0],
    [0.3, 0.3, 0.7, 0.7],
    [1.0, 0.6, 0.1, 0.4],
    [0.2, 0.8, 0.5, 0.9],
]


def _spec_for(folder: Path, family: dict[str, Path]):
    from mergetui.search.spec import load_search_spec

    (folder / "text.txt").write_text(TEXT, encoding="utf-8")
    models = "\n".join(
        f'[models.{name}]\nsource = "{family[name]}"\n'
        + ("parameters = { weight = 0.5 }\n" if name != "base" else "")
        for name in ("base", "a", "b")
    )
    (folder / "spec.toml").write_text(
        f"""
[merge]
method = "task_arithmetic"
base = "base"
dtype = "float32"

{models}
[search]
parameters = ["weight"]
layer_groups = 2
budget = 8
population = 4
seed = 3

[[search.objective]]
kind = "perplexity"
text = "text.txt"
""",
        encoding="utf-8",
    )
    return load_search_spec(folder / "spec.toml")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory, llama_family: dict[str, Path]):
    return _spec_for(tmp_path_factory.mktemp("ray-spec"), llama_family)


def _batch_for(spec: Any) -> list:
    from mergetui.search.genome import Genome

    genome = Genome(spec, 4)
    return [(index, genome.recipe_for(values)) for index, values in enumerate(VALUES)]


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def batch(spec) -> list:
    return _batch_for(spec)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """In-process scoring with one thread, as each one-CPU Ray worker scores: two threads on two
    busy cores (Ray's processes, the other tests) spin each other ten times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local(spec) -> Iterator[Any]:
    from mergetui.search.backend_local import LocalBackend

    backend = LocalBackend(spec, device="cpu")
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def local_scores(local, batch) -> dict[int, dict[str, float]]:
    return {index: scores for index, scores, _ in local.evaluate(batch, threading.Event())}


def _score_all(backend: RayBackend, batch: list) -> dict[int, dict[str, float]]:
    scored = {}
    for index, scores, seconds in backend.evaluate(batch, threading.Event()):
        assert index not in scored and seconds >= 0
        scored[index] = scores
    return scored


# ----------------------------------------------------------------------------------------------
# No Ray session needed


def _node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    resources = {"CPU": cpus, "memory": 1e9}
    if gpus:
        resources["GPU"] = gpus
    return {"Alive": alive, "Resources": resources}


def test_workers_one_per_node_sharing_its_cpus() -> None:
    plan = plan_workers([_node(4), _node(4), _node(8, alive=False)], "auto", None)
    assert (plan.count, plan.num_cpus, plan.num_gpus, plan.device) == (2, 4, 0, "auto")
    # Uneven nodes: the share shrinks until every actor fits on some node (8 // 3 = 2 each).
    plan = plan_workers([_node(8), _node(2)], "cpu", 3)
    assert (plan.count, plan.num_cpus) == (3, 2)
    plan = plan_workers([_node(8), _node(1)], "cpu", 3)
    assert (plan.count, plan.num_cpus) == (3, 2)  # 8 // 2 + 1 // 2 = 4 places for 3
    with pytest.raises(UserError, match="needs a CPU each"):
        plan_workers([_node(2)], "cpu", 3)


def test_workers_one_per_gpu() -> None:
    plan = plan_workers([_node(16, gpus=4), _node(8, gpus=2)], "auto", None)
    assert (plan.count, plan.num_gpus, plan.num_cpus, plan.device) == (6, 1, 0, "cuda")
    assert plan_workers([_node(16, gpus=4)], "cuda:3", 2).count == 2
    # --device cpu keeps a GPU cluster's actors on CPUs.
    assert plan_workers([_node(16, gpus=4)], "cpu", None).num_gpus == 0
    with pytest.raises(UserError, match="has 4"):
        plan_workers([_node(16, gpus=4)], "auto", 5)
    with pytest.raises(UserError, match="has none"):
        plan_workers([_node(16)], "cuda", None)


def test_worker_count_is_checked() -> None:
    from mergetui.search.ray_cluster import check_workers

    for bad in (0, -1, 10**6, 1.5, True):
        with pytest.raises(UserError, match="--workers"):
            check_workers(bad)  # type: ignore[arg-type]
    assert check_workers(None) is None and check_workers(3) == 3


def test_addresses_are_parsed() -> None:
    assert parse_address("10.0.0.5:6379") == ("", "10.0.0.5", 6379)
    assert parse_address(" ray://head:10001") == ("ray://", "head", 10001)
    assert parse_address("[::1]:6379") == ("", "::1", 6379)
    for bad in ("head", "head:", ":6379", "head:0", "head:70000", "head:port"):
        with pytest.raises(UserError, match="not a Ray address") as raised:
            parse_address(bad)
        assert raised.value.where == "--ray-address"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_address_fails_fast(spec) -> None:
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the Ray cluster") as raised:
        make_backend("ray", spec, device="cpu", address=address)
    assert time.monotonic() - started < 5
    assert raised.value.where == "--ray-address" and "ray start --head" in (raised.value.fix or "")
    assert not ray.is_initialized()


def test_address_that_is_not_ray_fails_fast() -> None:
    class Plain(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Plain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(UserError, match="not as a Ray cluster"):
            check_reachable(f"127.0.0.1:{server.server_address[1]}")
        assert time.monotonic() - started < 5
    finally:
        server.shutdown()
        server.server_close()


def test_ray_missing_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError) as raised:
        import_ray()
    assert raised.value.fix == "pip install 'mergetui[ray]'"


def test_importing_the_backend_does_not_import_ray() -> None:
    code = (
        "import sys, mergetui.search.backend_ray, mergetui.search.backends\n"
        "print(sorted({'ray', 'torch', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# A local Ray instance


@dataclass
class Shared:
    """A backend shared by a class's tests (each backend loads the parents once per worker)."""

    backend: RayBackend
    notices: list[str]
    spec: Any = None
    family: dict[str, Path] = field(default_factory=dict)

    def batch(self) -> list:
        return _batch_for(self.spec)

    def take_notices(self) -> list[str]:
        taken, self.notices[:] = list(self.notices), []
        return taken


@pytest.fixture(scope="class")
def local_ray() -> Iterator[None]:
    assert not ray.is_initialized()
    assert connect(ray, None) is True  # the backend's own local start: all CPUs here (2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="class")
def local_backend(
    local_ray: None, tmp_path_factory: pytest.TempPathFactory, llama_family: dict[str, Path]
) -> Iterator[Shared]:
    folder = tmp_path_factory.mktemp("ray-local")
    family = {name: folder / name for name in ("base", "a", "b")}
    for name, path in family.items():  # a copy: the last test takes a parent away
        shutil.copytree(llama_family[name], path)
    spec = _spec_for(folder, family)
    notices: list[str] = []
    backend = RayBackend(spec, device="cpu", workers=2, on_notice=notices.append)
    try:
        yield Shared(backend, notices, spec, family)
    finally:
        backend.close()


class TestLocalRay:
    def test_scores_match_the_local_backend(self, local_backend: Shared, local_scores) -> None:
        backend = local_backend.backend
        assert ray.cluster_resources()["CPU"] == _cpus()
        workers = backend.workers()
        assert [w["state"] for w in workers] == ["ready", "ready"]
        assert len({w["pid"] for w in workers}) == 2 and backend.device == "cpu"
        assert "2 workers (1 CPU each, device cpu) on 1 node, 2 ready" in backend.describe()
        # The same candidates (parents copied elsewhere) score exactly as in this process.
        assert _score_all(backend, local_backend.batch()) == local_scores
        assert sum(w["scored"] for w in backend.workers()) == len(VALUES)
        assert local_backend.take_notices() == []

    def test_workers_that_cannot_be_placed_are_an_error(self, local_backend: Shared) -> None:
        # One worker asks for both CPUs, which the class's backend holds: it never starts.
        with pytest.raises(UserError, match="no Ray worker started within 1 s"):
            RayBackend(local_backend.spec, device="cpu", workers=1, start_timeout=1)
        assert len(local_backend.backend.workers()) == 2  # the other backend is untouched

    def test_cancel_stops_after_the_candidates_in_progress(self, local_backend: Shared) -> None:
        backend, batch = local_backend.backend, local_backend.batch()
        cancel = threading.Event()
        scored = []
        for index, _scores, _ in backend.evaluate(batch, cancel):
            scored.append(index)
            cancel.set()
        assert len(scored) == 2  # the first result, and the one the other worker had begun
        again = [i for i, _, _ in backend.evaluate(batch[:3], threading.Event())]
        assert sorted(again) == [0, 1, 2]  # the backend goes on with the next batch

    def test_a_killed_worker_s_candidate_is_redispatched(
        self,
        local_backend: Shared,
        local_scores,
        caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        caplog.set_level(logging.INFO, logger="mergetui.search.ray")
        backend = local_backend.backend
        victim = backend.workers()[0]
        scored = {}
        for index, scores, _ in backend.evaluate(local_backend.batch(), threading.Event()):
            scored[index] = scores
            if len(scored) == 1:  # mid-search, the worker's process dies
                os.kill(victim["pid"], signal.SIGKILL)
        assert scored == local_scores  # every candidate, each once, with the same scores
        assert victim["pid"] not in {w.get("pid") for w in backend.workers()}
        notices = local_backend.take_notices()
        assert len(notices) == 1, notices
        assert f"Ray worker {victim['slot']} on node {victim['node_ip']}" in notices[0]
        assert "died" in notices[0] and "re-dispatched" in notices[0]
        assert "starting a new worker" in notices[0]
        # Ray's own report of the death goes to the log, not to stdout (the CLI's --json).
        deadline = time.monotonic() + 30
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("worker died" in r.getMessage().lower() for r in caplog.records)
        assert "worker died" not in capfd.readouterr().out.lower()

    def test_evolve_end_to_end_on_ray(
        self, local_backend: Shared, spec, local, tmp_path: Path
    ) -> None:
        from mergetui.search.events import SearchStarted
        from mergetui.search.loop import run_search

        # The loop drives the class's Ray backend (its workers already hold the parents; the
        # spec's copies of them are the same files) and, for the reference, the local one.
        events: list = []
        before = sum(w["scored"] for w in local_backend.backend.workers())
        ray_run = run_search(
            local_backend.spec,
            out_dir=tmp_path / "ray",
            backend_name="ray",
            backend=local_backend.backend,
            on_event=events.append,
        )
        local_run = run_search(spec, out_dir=tmp_path / "local", backend=local)
        assert ray_run.evaluations == local_run.evaluations == spec.budget
        assert ray_run.best_fitness == local_run.best_fitness
        assert ray_run.best_values == local_run.best_values
        started = next(e for e in events if isinstance(e, SearchStarted))
        assert (started.backend, started.device) == ("ray", "cpu")
        assert (tmp_path / "ray" / "best.toml").is_file()
        after = sum(w["scored"] for w in local_backend.backend.workers())
        assert after - before == spec.budget  # every candidate was scored by a Ray worker

    def test_no_worker_left_is_a_user_error(self, local_backend: Shared) -> None:
        backend, batch = local_backend.backend, local_backend.batch()
        shutil.rmtree(local_backend.family["a"])  # no new worker can load the parents now
        for name in ray.util.list_named_actors():
            if name.startswith("mergetui-"):
                ray.kill(ray.get_actor(name), no_restart=True)
        with pytest.raises(UserError) as raised:
            list(backend.evaluate(batch[:2], threading.Event()))
        assert str(local_backend.family["a"]) in str(raised.value)
        notices = local_backend.take_notices()
        assert any("re-dispatched" in n for n in notices), notices
        assert any("could not start" in n for n in notices), notices
        assert backend.workers() == []

    def test_a_candidate_that_kills_every_worker_is_an_error(
        self, local_backend: Shared, spec, batch, local_scores, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        local_backend.backend.close()  # its CPUs go back for this test's workers
        monkeypatch.setattr(backend_ray, "MAX_ATTEMPTS", 2)  # not 3: no wait for a new worker

        def crashing(spec, device):  # the real evaluator, but one candidate kills the process
            import os

            from mergetui.search.evaluator import CandidateEvaluator

            evaluator = CandidateEvaluator(spec, device)

            class Crashing:
                def evaluate(self, recipe):
                    if recipe.description == "too big":
                        os._exit(1)  # as the kernel's OOM killer would
                    return evaluator.evaluate(recipe)

                def close(self):
                    evaluator.close()

            return Crashing()

        notices: list[str] = []
        fatal = (0, dataclasses.replace(batch[0][1], description="too big"))
        with RayBackend(
            spec, device="cpu", workers=2, on_notice=notices.append, evaluator_factory=crashing
        ) as backend:
            scored = _score_all(backend, batch[1:3])  # the others score as ever
            assert scored == {i: local_scores[i] for i in (1, 2)}
            with pytest.raises(UserError, match="candidate 0 was lost with 2 Ray workers"):
                list(backend.evaluate([fatal], threading.Event()))
        died = [n for n in notices if "died" in n and "candidate 0 re-dispatched" in n]
        assert len(died) == 1, notices


# ----------------------------------------------------------------------------------------------
# Two simulated nodes


@pytest.fixture(scope="class")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    with pytest.MonkeyPatch.context() as patch:
        # The nodes' workers import this checkout (a real cluster has mergetui installed).
        path = os.environ.get("PYTHONPATH")
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), path) if p))
        made = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        try:
            made.add_node(num_cpus=1)
            made.wait_for_nodes()
            yield made
        finally:
            if ray.is_initialized():
                ray.shutdown()
            made.shutdown()


@pytest.fixture(scope="class")
def cluster_backend(cluster: Any, spec) -> Iterator[Shared]:
    notices: list[str] = []
    backend = RayBackend(spec, device="cpu", address=cluster.address, on_notice=notices.append)
    try:
        yield Shared(backend, notices, spec)
    finally:
        backend.close()


class TestTwoNodes:
    def test_both_nodes_get_work(self, cluster: Any, cluster_backend: Shared, local_scores) -> None:
        backend = cluster_backend.backend
        workers = backend.workers()
        assert len(workers) == 2  # by default one worker per node, with that node's CPU
        assert len({w["node_id"] for w in workers}) == 2
        assert f"the cluster at {cluster.address}: 2 workers" in backend.describe()
        assert "on 2 nodes, 2 ready" in backend.describe()
        assert _score_all(backend, cluster_backend.batch()) == local_scores
        assert all(w["scored"] >= 1 for w in backend.workers())

    def test_a_lost_node_s_candidate_is_redispatched(
        self, cluster: Any, cluster_backend: Shared, local_scores
    ) -> None:
        backend = cluster_backend.backend
        node = next(iter(cluster.worker_nodes))
        lost = next(w for w in backend.workers() if w["node_id"] == node.node_id)
        scored = {}
        for index, scores, _ in backend.evaluate(cluster_backend.batch(), threading.Event()):
            scored[index] = scores
            if len(scored) == 1:
                cluster.remove_node(node)  # the node goes, and its worker with it
        assert scored == local_scores
        ready = [w for w in backend.workers() if w["state"] == "ready"]
        assert [w["node_id"] for w in ready] == [cluster.head_node.node_id]
        notices = cluster_backend.take_notices()
        assert len(notices) == 1 and "re-dispatched" in notices[0], notices
        assert f"({lost['node_id'][:8]}, pid {lost['pid']})" in notices[0]

    def test_closing_leaves_the_cluster(self, cluster_backend: Shared) -> None:
        assert ray.is_initialized()
        cluster_backend.backend.close()  # the backend joined the cluster, so it leaves it
        assert not ray.is_initialized()

"""The Ray side of `backend_ray`: joining or starting a cluster, sizing the workers, the actor.

Kept apart from the dispatch so each stays small. Nothing here imports ray at import time: the
core's import must not pull it in (`tests/test_core_imports.py`), and Ray is an optional extra.

- `import_ray()`: ray, or a UserError with the install line;
- `connect(ray, address)`: checks the address answers as a Ray head (a TCP connect and an
  HTTP/2 greeting, each with a timeout: `ray.init` itself retries a silent or wrong address for
  minutes) before `ray.init(address=...)`; without an address a quiet local instance starts;
- `plan_workers(nodes, device, workers)`: how many actors, with what resources (pure: it reads
  `ray.nodes()`'s records);
- `EvaluatorWorker`: the actor's class (made remote at run time), one `CandidateEvaluator` each.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.errors import UserError

RAY_FIX = "pip install 'mergetui[ray]'"
ADDRESS_WHERE = "--ray-address"
CONNECT_TIMEOUT_S = 5.0
MAX_WORKERS = 1024
# A local instance only carries recipes and scores between processes: a small object store.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray
# client server) answers with a SETTINGS frame of its own.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4
EvaluatorFactory = Callable[[Any, str], Any]
_log = logging.getLogger("mergetui.search.ray")


def import_ray() -> Any:
    """The ray module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise UserError(
            f"the Ray backend needs the ray package ({err})", where="--backend ray", fix=RAY_FIX
        ) from None
    return ray


# ----------------------------------------------------------------------------------------------
# The cluster


def parse_address(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `HOST:PORT` or `ray://HOST:PORT` (IPv6 hosts in brackets)."""
    text = address.strip()
    scheme = ""
    if text.startswith("ray://"):
        scheme, text = "ray://", text[len("ray://") :]
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(
            f"{address!r} is not a Ray address",
            where=ADDRESS_WHERE,
            fix="write the head node's HOST:PORT as `ray start --head` prints it "
            "(e.g. 10.0.0.5:6379), or ray://HOST:10001 for a Ray client server",
        )
    return scheme, host, int(port_text)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """UserError unless `address` accepts a TCP connection within `timeout` and answers as a
    gRPC server (Ray's GCS does). `ray.init` retries a wrong address for minutes; this does not."""
    _scheme, host, port = parse_address(address)
    fix = (
        "start the head with `ray start --head --port=6379` and check the host, the port and "
        "the firewall between here and there"
    )
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UserError(
            f"cannot reach the Ray cluster at {address}: {reason}", where=ADDRESS_WHERE, fix=fix
        ) from None
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return  # a TLS GCS does not speak plain HTTP/2; ray.init checks it
        if not _answers_http2(sock, timeout):
            raise UserError(
                f"{address} answers, but not as a Ray cluster",
                where=ADDRESS_WHERE,
                fix="give the head node's GCS address and port as `ray start --head` prints it "
                "(port 6379 unless --port said otherwise)",
            )


def _answers_http2(sock: socket.socket, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(_HTTP2_HELLO)
        header = b""
        while len(header) < 9:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == _HTTP2_SETTINGS


def connect(ray: Any, address: str | None, payload_bytes: int = 0) -> bool:
    """Join the cluster at `address`, or start a local instance (its object store sized for
    `payload_bytes` of shipped data); True when this call connected (the caller disconnects on
    close), False when Ray was already initialised in this process (that session is used)."""
    if address:
        check_reachable(address)
    if ray.is_initialized():
        return False  # a session this process opened before (the app's last search, a test)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    if address:
        quiet.pop("include_dashboard")  # only for a new instance
        _init(ray, address=address.strip(), **quiet)
        return True
    _init(
        ray,
        address="local",  # a new instance even when RAY_ADDRESS is set
        num_cpus=_cpus_here(),
        object_store_memory=LOCAL_OBJECT_STORE_BYTES + 2 * payload_bytes,
        runtime_env={"env_vars": {"PYTHONPATH": _python_path_with_mergetui()}},
        **quiet,
    )
    return True


def _init(ray: Any, **kwargs: Any) -> None:
    try:
        ray.init(**kwargs)
        _errors_to_logging()
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = kwargs.get("address")
        raise UserError(
            f"Ray could not start or join the cluster: {first_line(err)}",
            where=ADDRESS_WHERE if where != "local" else "--backend ray",
            fix="check that this machine and the cluster run the same Ray and Python versions",
        ) from None


def _errors_to_logging() -> None:
    """Ray's driver prints the cluster's error reports ("A worker died...") to stdout, whatever
    `log_to_driver` says: over the CLI's progress, into `--json` output. The backend reports a
    lost worker itself (`on_notice`), so those reports go to the `mergetui.search.ray` logger.
    The printer is a private function of Ray's, looked up by name when a report comes: if a Ray
    version has none, nothing changes."""
    import ray._private.worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "mergetui_logging", False):
        return

    def to_logging(data: Mapping[str, Any], ignore_prefix: bool = False) -> None:
        for line in data.get("lines", ()):
            _log.info("%s: %s", data.get("pid", "ray"), line)

    to_logging.mergetui_logging = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_logging


def _cpus_here() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _python_path_with_mergetui() -> str:
    """PYTHONPATH for a local instance's workers: the folder mergetui is imported from first, so
    they import this very copy (a source checkout too), then whatever the driver had."""
    import mergetui

    here = str(Path(mergetui.__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH")
    return os.pathsep.join([here, rest]) if rest else here


def first_line(error: BaseException) -> str:
    """The line of an error worth showing (Ray's messages run to tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.split(":", 1)[0].endswith(("Error", "Exception")):
            return line
    return lines[0] if lines else type(error).__name__


# ----------------------------------------------------------------------------------------------
# Sizing


@dataclass(frozen=True)
class WorkerPlan:
    """How many actors and what each asks of Ray. `device` is what each evaluator is given."""

    count: int
    num_cpus: int
    num_gpus: int
    device: str
    nodes: int

    def describe(self) -> str:
        each = f"{self.num_gpus} GPU" if self.num_gpus else f"{self.num_cpus} CPU"
        workers = f"{self.count} worker{'s' if self.count != 1 else ''}"
        nodes = f"{self.nodes} node{'s' if self.nodes != 1 else ''}"
        return f"{workers} ({each} each, device {self.device}) on {nodes}"


def check_workers(workers: int | None) -> int | None:
    """--workers: a whole number from 1 to MAX_WORKERS, or None for the default."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 < workers <= MAX_WORKERS:
        raise UserError(
            f"--workers is {workers!r}; it must be a whole number from 1 to {MAX_WORKERS}",
            where="--workers",
            fix="pass another --workers, or leave it out (one worker per GPU, else per node)",
        )
    return workers


def plan_workers(
    nodes: Sequence[Mapping[str, Any]], device: str, workers: int | None
) -> WorkerPlan:
    """The actors for a cluster (`ray.nodes()` records): one per GPU when the cluster has GPUs and
    the device allows them, else `workers` (default: one per node) sharing the CPUs."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    gpus = int(sum(r.get("GPU", 0) for r in alive))
    cpus = [int(r.get("CPU", 0)) for r in alive]
    wants_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if wants_gpu:
        if gpus == 0:
            raise UserError(
                f"--device {device} asks for GPUs, but the Ray cluster has none",
                where="--device",
                fix="use --device cpu or auto, or add GPU nodes to the cluster",
            )
        count = gpus if workers is None else workers
        if count > gpus:
            raise UserError(
                f"--workers {count} asks for one GPU each, but the Ray cluster has {gpus}",
                where="--workers",
                fix=f"pass --workers {gpus} or fewer (or leave it out: one per GPU)",
            )
        # Ray gives each actor its GPU as cuda:0, so a numbered device means nothing here; no CPU
        # is reserved (a GPU node may have fewer CPUs than GPUs).
        return WorkerPlan(count, 0, 1, "cuda", len(alive))
    total = sum(cpus)
    count = workers if workers is not None else max(1, sum(1 for c in cpus if c > 0))
    if total < count:
        raise UserError(
            f"--workers {count} needs a CPU each, but the Ray cluster has {total}",
            where="--workers",
            fix=f"pass --workers {max(1, total)} or fewer, or add nodes",
        )
    per = total // count
    while per > 1 and sum(c // per for c in cpus) < count:
        per -= 1  # uneven nodes: the largest share every actor can be placed with
    return WorkerPlan(count, per, 0, device, len(alive))


# ----------------------------------------------------------------------------------------------
# The actor


def objective_texts(spec: Any) -> dict[int, tuple[str, bytes]]:
    """The objectives' files, read here and shipped with the spec, so a node needs only the
    parents (objective index -> (file name, bytes)). An lm-eval task folder is not shipped."""
    texts: dict[int, tuple[str, bytes]] = {}
    for index, objective in enumerate(spec.objectives):
        if objective.path is not None:
            path = Path(objective.path)
            try:
                texts[index] = (path.name, path.read_bytes())
            except OSError as err:
                raise UserError(
                    f"cannot read {path}: {err.strerror or err}", where=objective.label
                ) from None
    return texts


class EvaluatorWorker:
    """One Ray actor: a `CandidateEvaluator` over the parents, loaded once by `start()`, then
    `evaluate(index, recipe)` for each candidate it is sent. Loading is a method, not the
    constructor, so a UserError (parents missing on this node) comes back as itself."""

    def __init__(
        self,
        spec: Any,
        device: str,
        threads: int,
        texts: Mapping[int, tuple[str, bytes]],
        factory: EvaluatorFactory | None = None,
    ) -> None:
        self._spec = spec
        self._device = device
        self._threads = threads
        self._texts = texts
        self._factory = factory
        self._evaluator: Any = None
        self._folder: Path | None = None

    def start(self) -> dict[str, Any]:
        """Load the parents; where this worker runs (node id and address, pid, device)."""
        import ray

        if self._threads > 0:
            import torch

            torch.set_num_threads(self._threads)
        spec = self._with_local_texts(self._spec)
        factory = self._factory
        if factory is None:
            from mergetui.search.evaluator import CandidateEvaluator

            factory = CandidateEvaluator
        self._evaluator = factory(spec, self._device)
        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "device": str(getattr(self._evaluator, "device", self._device)),
        }

    def evaluate(self, index: int, recipe: Any) -> tuple[int, dict[str, float], float]:
        started = time.perf_counter()
        scores = self._evaluator.evaluate(recipe)
        return index, dict(scores), time.perf_counter() - started

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _with_local_texts(self, spec: Any) -> Any:
        """The spec with each shipped objective file written here and pointed at."""
        if not self._texts:
            return spec
        self._folder = Path(tempfile.mkdtemp(prefix="mergetui-ray-"))
        objectives = list(spec.objectives)
        for index, (name, data) in self._texts.items():
            path = self._folder / str(index) / name
            path.parent.mkdir()
            path.write_bytes(data)
            objectives[index] = dataclasses.replace(objectives[index], path=path)
        return dataclasses.replace(spec, objectives=tuple(objectives))

"""Candidates scored on a Ray cluster: one actor per GPU (or per `--workers` share of the CPUs),
each loading the parents once; the driver (`loop.py`) runs CMA-ES and hands over batches.

`RayBackend.evaluate(batch, cancel)` sends each idle worker a candidate, yields each score as it
comes back (completion order), and sends the next. A worker that dies (its process killed, its node
lost: Ray's `RayActorError` and kin) costs nothing but time: its candidate goes back to the front of
the queue for another worker, a new worker is started in its place (at most `MAX_RESTARTS` per
slot) and `on_notice` tells the user. A candidate that takes `MAX_ATTEMPTS` workers down with it, or
a cluster with no worker left, is a UserError. An error raised by the evaluator itself (a candidate
the merge refuses) is raised here as it was there. When `cancel` is set no new candidate is sent;
those in progress finish and are yielded. Every wait on Ray is bounded (`POLL_S` at a time, workers
`start_timeout` to load the parents), so a silent cluster becomes an error, not a hang.

The Ray plumbing (connecting, sizing, the actor class) is in `ray_cluster.py`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mergetui.device import check_device_name
from mergetui.errors import UserError
from mergetui.search.ray_cluster import (
    EvaluatorFactory,
    EvaluatorWorker,
    WorkerPlan,
    check_workers,
    connect,
    first_line,
    import_ray,
    objective_texts,
    plan_workers,
)

if TYPE_CHECKING:
    from mergetui.recipe.model import Recipe

START_TIMEOUT_S = 900.0  # loading the parents of a large model on a cold node takes minutes
CLOSE_TIMEOUT_S = 10.0
POLL_S = 0.25  # how often a wait looks at `cancel`
MAX_RESTARTS = 3  # new workers started in one worker's place over a search
MAX_ATTEMPTS = 3  # workers a candidate may be sent to before the search gives up on it
DOCS_FIX = "see docs/evolve.md, Scaling out on Ray: every node needs mergetui and the parents"

STARTING, READY, DEAD = "starting", "ready", "dead"


@dataclass
class _Job:
    index: int
    recipe: Recipe
    attempts: int = 0


@dataclass
class _Worker:
    """One actor slot: the actor now in it and what it is doing."""

    slot: int
    handle: Any
    state: str = STARTING
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # from EvaluatorWorker.start
    job: _Job | None = None
    scored: int = 0  # candidates this actor has scored
    ref: Any = None  # the start call, the job's call, or an abandoned job's call

    @property
    def where(self) -> str:
        if not self.info:
            return f"Ray worker {self.slot}"
        return (
            f"Ray worker {self.slot} on node {self.info['node_ip']} "
            f"({str(self.info['node_id'])[:8]}, pid {self.info['pid']})"
        )


class RayBackend:
    """The `Backend` protocol (see `backends.py`) on a Ray cluster."""

    name = "ray"

    def __init__(
        self,
        spec: Any,
        *,
        device: str = "auto",
        workers: int | None = None,
        address: str | None = None,
        on_notice: Callable[[str], Any] | None = None,
        start_timeout: float = START_TIMEOUT_S,
        evaluator_factory: EvaluatorFactory | None = None,
    ) -> None:
        self._ray = ray = import_ray()
        device = check_device_name(device)
        workers = check_workers(workers)
        self._notice = on_notice or (lambda message: None)
        self._start_timeout = start_timeout
        self._workers: list[_Worker] = []
        self._failures: list[BaseException] = []  # why workers could not start, in order
        texts = objective_texts(spec)  # a node needs no copy of the objectives' files
        self._owns_ray = connect(ray, address, sum(len(data) for _, data in texts.values()))
        self._where = (
            f"the cluster at {address.strip()}"
            if address
            else "a local Ray instance"
            if self._owns_ray
            else "this process's Ray session"
        )
        try:
            self.plan: WorkerPlan = plan_workers(ray.nodes(), device, workers)
            self._actor = ray.remote(EvaluatorWorker)
            self._options = {
                "num_cpus": self.plan.num_cpus,
                "num_gpus": self.plan.num_gpus,
                "max_restarts": 0,  # this backend restarts workers itself, and says so
                "scheduling_strategy": "SPREAD",
            }
            self._token = uuid.uuid4().hex[:8]
            self._args = (ray.put(spec), self.plan.device, self.plan.num_cpus)
            self._texts = ray.put(texts)
            self._factory = evaluator_factory
            self._workers = [self._spawn(slot) for slot in range(self.plan.count)]
            self._await_start()
        except BaseException:
            self.close()
            raise

    # -- the protocol --------------------------------------------------------------------------

    def evaluate(
        self, batch: Sequence[tuple[int, Recipe]], cancel: threading.Event
    ) -> Iterator[tuple[int, dict[str, float], float]]:
        """Score `batch` on the workers: (index, scores, seconds) in completion order."""
        queue = deque(_Job(index, recipe) for index, recipe in batch)
        try:
            while True:
                if not cancel.is_set():
                    self._dispatch(queue)
                busy = any(w.job is not None for w in self._workers)
                if not busy and (cancel.is_set() or not queue):
                    return
                self._require_workers()
                result = self._wait_once(queue, cancel)
                if result is not None:
                    yield result
        finally:
            for worker in self._workers:
                worker.job = None  # a call still running is abandoned: its result is dropped

    @property
    def device(self) -> str:
        """The workers' device (e.g. "cuda", "cpu"; several joined by commas)."""
        found = sorted({str(w.info["device"]) for w in self._workers if w.info})
        return ", ".join(found) if found else self.plan.device

    def describe(self) -> str:
        ready = sum(w.state == READY for w in self._workers)
        return f"Ray, {self._where}: {self.plan.describe()}, {ready} ready"

    def close(self) -> None:
        """Stop the workers (their memory goes back) and leave Ray if this backend joined it."""
        ray = self._ray
        workers, self._workers = self._workers, []
        ready = [w for w in workers if w.state == READY]
        if ready:
            try:
                ray.wait(
                    [w.handle.close.remote() for w in ready],
                    num_returns=len(ready),
                    timeout=CLOSE_TIMEOUT_S,
                )
            except Exception:  # noqa: BLE001 - closing what may already be gone
                pass
        for worker in workers:
            self._kill(worker)
        if self._owns_ray:
            self._owns_ray = False
            ray.shutdown()

    def workers(self) -> list[dict[str, Any]]:
        """The live workers: slot, state, candidates scored and, once started, node_id, node_ip,
        pid and device."""
        return [
            {"slot": w.slot, "state": w.state, "scored": w.scored, **w.info}
            for w in self._workers
            if w.state != DEAD
        ]

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workers -------------------------------------------------------------------------------

    def _spawn(self, slot: int, restarts: int = 0) -> _Worker:
        # Named, so `ray list actors` shows what each one is: mergetui-<backend>-w<slot>-r<n>.
        name = f"mergetui-{self._token}-w{slot}-r{restarts}"
        options = self._actor.options(name=name, **self._options)
        handle = options.remote(*self._args, self._texts, self._factory)
        worker = _Worker(slot, handle, restarts=restarts)
        worker.ref = handle.start.remote()
        return worker

    def _await_start(self) -> None:
        """Wait (bounded) until every worker has loaded the parents or failed; at least one must
        be ready. Those still loading at the deadline join when they are ready."""
        deadline = time.monotonic() + self._start_timeout
        while any(w.state == STARTING for w in self._workers):
            if time.monotonic() >= deadline:
                break
            self._wait_once(deque(), threading.Event(), timeout=deadline - time.monotonic())
        self._require_workers()
        starting = sum(w.state == STARTING for w in self._workers)
        if starting:
            self._notice(
                f"{starting} Ray worker(s) did not start within {self._start_timeout:.0f} s; "
                "the search goes on without them until they do"
            )

    def _require_workers(self) -> None:
        """UserError when no worker is left, or none has started in time."""
        alive = [w for w in self._workers if w.state != DEAD]
        if not alive:
            actionable = [f for f in self._failures if isinstance(f, UserError)]
            if actionable:
                raise actionable[-1]  # e.g. the parents are not where the recipe says
            last = self._failures[-1] if self._failures else None
            reason = f": {first_line(last)}" if last is not None else ""
            raise UserError(f"no Ray worker is left{reason}", where="--backend ray", fix=DOCS_FIX)
        if any(w.state == READY for w in alive):
            return
        now = time.monotonic()
        if all(now - w.started_at >= self._start_timeout for w in alive):
            raise UserError(
                f"no Ray worker started within {self._start_timeout:.0f} s "
                f"({self.plan.describe()}): the cluster may lack the resources, or a node "
                "cannot load the parents",
                where="--backend ray",
                fix="check `ray status` on the head node; " + DOCS_FIX,
            )

    def _dispatch(self, queue: deque[_Job]) -> None:
        for worker in self._workers:
            if not queue:
                return
            if worker.state == READY and worker.ref is None:
                job = queue.popleft()
                job.attempts += 1
                worker.job = job
                worker.ref = worker.handle.evaluate.remote(job.index, job.recipe)

    def _wait_once(
        self, queue: deque[_Job], cancel: threading.Event, timeout: float = POLL_S
    ) -> tuple[int, dict[str, float], float] | None:
        """Wait (at most `timeout`) for one call to finish and act on it; a result to yield."""
        owners = {w.ref: w for w in self._workers if w.ref is not None}
        if not owners:
            time.sleep(min(timeout, POLL_S))  # nothing running yet (restarts pending)
            return None
        done, _ = self._ray.wait(list(owners), num_returns=1, timeout=min(timeout, POLL_S))
        if not done:
            return None
        worker = owners[done[0]]
        ref, worker.ref = worker.ref, None
        if worker.state == STARTING:
            self._started(worker, ref)
            return None
        job, worker.job = worker.job, None
        try:
            result = self._ray.get(ref, timeout=CLOSE_TIMEOUT_S)
        except self._ray.exceptions.RayTaskError as err:
            if job is None:
                return None  # an abandoned call failed: nobody is waiting for it
            cause = getattr(err, "cause", None)
            if isinstance(cause, UserError):
                raise cause from None
            raise
        except Exception as err:  # noqa: BLE001 - every other Ray error means the worker is lost
            self._lost(worker, err, job, queue, cancel)
            return None
        if job is None:
            return None
        worker.scored += 1
        return result

    def _started(self, worker: _Worker, ref: Any) -> None:
        """A worker's start call ended: ready, or out. Loading that raised (the parents are not on
        its node) is not retried; a worker that died while loading (its node lost) is."""
        ray = self._ray
        retry = False
        try:
            worker.info = ray.get(ref, timeout=CLOSE_TIMEOUT_S)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            failure: BaseException = cause if isinstance(cause, BaseException) else err
        except Exception as err:  # noqa: BLE001 - the actor died while loading
            failure, retry = err, True
        else:
            worker.state = READY
            return
        self._failures.append(failure)
        self._kill(worker)
        worker.state = DEAD
        message = f"{worker.where} could not start: {first_line(failure)}"
        if retry and worker.restarts < MAX_RESTARTS:
            self._replace(worker)
            message += "; starting a new worker"
        self._notice(message)

    def _lost(
        self,
        worker: _Worker,
        error: BaseException,
        job: _Job | None,
        queue: deque[_Job],
        cancel: threading.Event,
    ) -> None:
        """A worker died: its candidate back to the queue, a new worker in its place."""
        where = worker.where
        self._kill(worker)
        worker.state = DEAD
        self._failures.append(error)
        message = f"{where} died ({first_line(error)})"
        if job is not None and not cancel.is_set():
            if job.attempts >= MAX_ATTEMPTS:
                raise UserError(
                    f"candidate {job.index} was lost with {job.attempts} Ray workers in a row "
                    f"(last: {message})",
                    where="--backend ray",
                    fix="check the workers' memory (`ray status`, the nodes' logs); "
                    "the candidate may not fit",
                )
            queue.appendleft(job)
            message += f"; candidate {job.index} re-dispatched"
        elif job is not None:
            message += f"; candidate {job.index} dropped (stopping)"
        if not cancel.is_set() and worker.restarts < MAX_RESTARTS:
            self._replace(worker)
            message += "; starting a new worker"
        self._notice(message)

    def _replace(self, worker: _Worker) -> None:
        """A new actor in a dead worker's slot (Ray places it wherever there is room)."""
        index = self._workers.index(worker)
        self._workers[index] = self._spawn(worker.slot, worker.restarts + 1)

    def _kill(self, worker: _Worker) -> None:
        try:
            self._ray.kill(worker.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass

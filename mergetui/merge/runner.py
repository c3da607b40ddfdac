"""Executes a Plan: read, merge and write tensor by tensor, then put the folder in place.

`run_merge` checks the target, announces the plan, runs the pipeline (pipeline.py: a reader thread,
compute workers and a writer thread, run by the work model of work.py within the limits of
budgets.py) into a temporary folder beside the target, writes the extras (config, tokenizer,
model card) and renames the folder into place.

Everything is written to `.<name>.mergetui-tmp-PID-XXXX` beside the target (see target.py) and
renamed into place only when complete; on any error or cancel the temporary folder is removed and
nothing is left behind; one that a killed merge left is removed by the next merge into that target.
`run_merge` keeps no global state: several merges may run at once in one process.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mergetui.device import core_count, resolve_device, use_cores
from mergetui.errors import CancelledError, UserError
from mergetui.formatting import human_bytes
from mergetui.merge.budgets import Ledger
from mergetui.merge.events import (
    Cancelled,
    EventCallback,
    Failed,
    Finished,
    MergeEvent,
    MergeResult,
    Notice,
    PlanReady,
)
from mergetui.merge.pipeline import Pipeline, Progress
from mergetui.merge.target import (  # noqa: F401 - TEMP_MARKER, OLD_MARKER: public names here
    OLD_MARKER,
    TEMP_MARKER,
    TempFolder,
    check_output,
    output_guard,
    remove_stale_temps,
)
from mergetui.merge.work import work_model

if TYPE_CHECKING:
    import torch

    from mergetui.merge.plan import Plan
    from mergetui.merge.plan_tensors import PlannedTensor


def run_merge(
    plan: Plan,
    *,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> MergeResult:
    """Run the merge; return once the output folder is complete and in place.

    Raises UserError (bad input, full disk...) or CancelledError after emitting Failed or
    Cancelled; in every such case no output folder and no temporary folder remain. `on_event` is
    called from the engine's threads, one call at a time.
    """
    emit = _SerialEmitter(on_event)
    started = time.perf_counter()
    progress = Progress()
    try:
        device, ledger, notices = _merge_into_place(plan, emit, cancel, force, progress)
    except CancelledError:
        emit(Cancelled(progress.tensors_done))
        raise
    except UserError as exc:
        emit(Failed(str(exc)))
        raise
    except OSError as exc:
        error = _os_user_error(exc, plan.output_dir)
        emit(Failed(str(error)))
        raise error from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            emit(Cancelled(progress.tensors_done))
        else:
            emit(Failed(f"internal error: {exc!r}"))
        raise
    seconds = time.perf_counter() - started
    emit(Finished(plan.output_dir, seconds, plan.tensor_count, plan.total_bytes))
    return MergeResult(
        output_dir=plan.output_dir,
        seconds=seconds,
        tensor_count=plan.tensor_count,
        total_bytes=plan.total_bytes,
        shard_files=tuple(plan.layout.filenames),
        device=str(device),
        notices=tuple(plan.notices) + tuple(notices),
        accounted_peak_bytes=ledger.peak,
    )


def working_bound(tensors: Sequence[PlannedTensor], method: str, device: str) -> int:
    """The most memory the engine holds for these tensors above the process baseline (no torch
    import): for `auto`, what it holds on the CPU, its largest case."""
    gpu = device.startswith(("cuda", "mps"))
    return work_model(tensors, method, "cuda" if gpu else "cpu", _core_count()).bound()


def _merge_into_place(
    plan: Plan,
    emit: Callable[[MergeEvent], None],
    cancel: threading.Event | None,
    force: bool,
    progress: Progress,
) -> tuple[torch.device, Ledger, list[str]]:
    """Check the target, merge into a temporary folder beside it and rename that into place; on
    any failure the temporary folder is removed. Returns the device, the ledger, the notices."""
    target = plan.output_dir
    guard = output_guard(plan)
    check_output(target, force, **guard)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temps(target):
        emit(Notice(f"removed {stale.name}, left behind by an interrupted merge"))
    _check_free_space(target.parent, plan.total_bytes)
    temp = TempFolder(target)
    try:
        result = _merge_into(plan, temp.path, emit, cancel, progress)
        _raise_if_cancelled(cancel)
        temp.release_into(target, force, **guard)
    except BaseException:
        temp.remove()
        raise
    return result


def _merge_into(
    plan: Plan,
    folder: Path,
    emit: Callable[[MergeEvent], None],
    cancel: threading.Event | None,
    progress: Progress,
) -> tuple[torch.device, Ledger, list[str]]:
    """Announce the plan, write every tensor and then the extras into `folder`."""
    from mergetui.merge.output import prepare_extras, write_extras

    device = resolve_device(plan.device)
    emit(
        PlanReady(
            method=plan.method,
            models=tuple(plan.models),
            tensor_count=plan.tensor_count,
            layer_count=plan.layer_count,
            total_bytes=plan.total_bytes,
            shard_count=plan.shard_count,
            output_dir=plan.output_dir,
            device=str(device),
            estimated_peak_bytes=plan.estimated_peak_bytes,
        )
    )
    for message in plan.notices:
        emit(Notice(message))
    extras = prepare_extras(plan)  # recipe texts, tokenizer: fail before the long part
    _use_all_cores()
    _tune_allocator()
    model = work_model(plan.tensors, plan.method, device.type, _core_count())
    ledger = Pipeline(plan, model, folder, device, emit, cancel, progress).run()
    notices = write_extras(plan, folder, extras)
    for message in notices:
        emit(Notice(message))
    return device, ledger, notices


class _SerialEmitter:
    """Calls the listener one event at a time, whichever engine thread emits."""

    def __init__(self, callback: EventCallback | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()

    def __call__(self, event: MergeEvent) -> None:
        if self._callback is None:
            return
        with self._lock:
            self._callback(event)


# ----------------------------------------------------------------------------------------------
# Folders


def _check_free_space(parent: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    margin = 16 * 1024 * 1024
    if free < needed + margin:
        raise UserError(
            f"not enough free disk space: the merge writes {human_bytes(needed)} but only "
            f"{human_bytes(free)} is free",
            where=str(parent),
            fix="free some space or choose another --out",
        )


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("merge cancelled")


# glibc's malloc gives blocks over a threshold (128 KiB, rising to what was last freed) their own
# mmap, so a chunk's float32 temporaries (512 KiB) often come as fresh pages: a page fault per
# 4 KiB, tens of thousands per tensor. Serving blocks up to this size from the heap lets every
# chunk reuse the memory the previous one freed (a third to half fewer faults, measured).
_MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024
_allocator_tuned = False


def _tune_allocator() -> None:
    """Ask glibc to keep chunk-sized blocks on the heap (once per process; no-op elsewhere)."""
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    from mergetui.malloc import set_malloc_thresholds

    set_malloc_thresholds(_MALLOC_MMAP_THRESHOLD, 2 * _MALLOC_MMAP_THRESHOLD)


def _core_count() -> int:
    """The cores a merge runs on (tests pin it here)."""
    return core_count()


def _use_all_cores() -> None:
    use_cores(_core_count())


def _os_user_error(exc: OSError, target: Path) -> UserError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            "the disk is full: no space left to write the merged model",
            where=str(target.parent),
            fix="free some space or choose another --out",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(
            f"cannot write there: {exc.strerror}",
            where=str(exc.filename or target),
            fix="choose an output folder you can write to",
        )
    return UserError(f"{exc.strerror or exc}", where=str(exc.filename or target))

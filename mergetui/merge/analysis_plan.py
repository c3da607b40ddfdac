"""What an analysis reads, decided from the checkpoints' headers alone (cheap: no torch), and
the cache of its results.

`plan_analysis` picks the tensors every model holds with the same shape and a float dtype (the
tensors a merge reads: one skipped-suffix list and one dtype table), and where each one's bytes
are. Results are cached on disk (in `paths.analysis_cache_dir`), keyed by every weight file's path,
size and modification time, so a second look is instant and a changed checkpoint is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergetui.checkpoints.layers import block_kind, is_pre_layer, is_skipped, layer_index
from mergetui.dtypes import FLOAT_CODES
from mergetui.errors import UserError
from mergetui.merge.analysis import ANALYSIS_VERSION, Analysis, RowKey, Sums, TensorSums
from mergetui.paths import analysis_cache_dir


@dataclass(frozen=True)
class AnalysisSource:
    """Where one model holds one tensor's bytes."""

    file: Path
    offset: int  # -1 for a pytorch .bin tensor
    nbytes: int
    dtype: str
    name: str


@dataclass(frozen=True)
class AnalysisTensor:
    """A tensor to compare: its row and block kind, and where each model holds it."""

    name: str
    row: RowKey
    kind: str
    numel: int
    shape: tuple[int, ...]
    sources: tuple[AnalysisSource, ...]  # reference first, then the others in order


@dataclass
class AnalysisPlan:
    """What an analysis will read, decided from headers alone (cheap: no torch)."""

    models: tuple[str, ...]
    reference: str
    has_base: bool
    paths: dict[str, Path]
    tensors: list[AnalysisTensor]
    skipped: list[str]
    num_layers: int
    cache_key: dict[str, Any]

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(m for m in self.models if m != self.reference)

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for t in self.tensors for s in t.sources)

    def result(
        self, tensors: list[TensorSums], *, cached: bool, seconds: float, device: str = "cpu"
    ) -> Analysis:
        """The analysis of this plan from its tensors' sums."""
        return Analysis(
            models=self.models,
            reference=self.reference,
            has_base=self.has_base,
            tensors=tensors,
            skipped=list(self.skipped),
            num_layers=self.num_layers,
            cached=cached,
            seconds=seconds,
            device=device,
        )


def plan_analysis(
    models: Mapping[str, str | Path], base: str | None = None, *, allow_bin: bool = False
) -> AnalysisPlan:
    """Open the checkpoints' headers and decide the tensors to compare.

    `models` maps names to checkpoint folders (at least two); `base`, one of the names, is the
    reference (None: the first model is). Tensors the reference has but another model lacks, or
    holds with another shape, are skipped and listed in `skipped`; non-floating buffers too.
    """
    from mergetui.checkpoints.inspect import open_checkpoint

    names = list(models)
    if len(names) < 2:
        raise UserError("comparing needs at least two models", fix="give two checkpoint folders")
    if base is not None and base not in models:
        raise UserError(f"the base {base!r} is not one of the models", where="base")
    reference = base if base is not None else names[0]
    checkpoints = {
        name: open_checkpoint(path, allow_bin=allow_bin) for name, path in models.items()
    }
    others = [n for n in names if n != reference]
    ref = checkpoints[reference]
    planned: list[AnalysisTensor] = []
    skipped: list[str] = []
    for tensor_name, info in ref.tensors.items():
        if is_skipped(tensor_name):
            continue
        found = _plan_tensor(tensor_name, info, reference, {o: checkpoints[o] for o in others})
        if isinstance(found, str):
            skipped.append(found)
        else:
            planned.append(found)
    for other in others:
        extra = [n for n in checkpoints[other].tensors if n not in ref.tensors]
        if extra:
            skipped.append(f"{len(extra)} tensor(s) only in {other}, e.g. {extra[0]}")
    if not planned:
        raise UserError(
            "the models have no tensor in common to compare",
            fix="compare checkpoints of the same architecture and size",
        )
    key = {
        "version": ANALYSIS_VERSION,
        "reference": _identity(ref),
        "others": [_identity(checkpoints[o]) for o in others],
    }
    return AnalysisPlan(
        models=tuple(names),
        reference=reference,
        has_base=base is not None,
        paths={n: Path(p) for n, p in models.items()},
        tensors=planned,
        skipped=skipped,
        num_layers=len(ref.layers),
        cache_key=key,
    )


def _plan_tensor(
    tensor_name: str, info: Any, reference: str, others: Mapping[str, Any]
) -> AnalysisTensor | str:
    """One of the reference's tensors, with where every model holds it; or why it is skipped."""
    if info.dtype not in FLOAT_CODES:
        return f"{tensor_name}: {info.dtype} is not a floating-point tensor"
    sources = [AnalysisSource(info.file, info.offset, info.nbytes, info.dtype, tensor_name)]
    for other, checkpoint in others.items():
        found = checkpoint.tensors.get(tensor_name)
        if found is None:
            return f"{tensor_name}: missing in {other}"
        if tuple(found.shape) != tuple(info.shape):
            return (
                f"{tensor_name}: shape {list(found.shape)} in {other}, "
                f"{list(info.shape)} in {reference}"
            )
        if found.dtype not in FLOAT_CODES:
            return f"{tensor_name}: {found.dtype} in {other} is not floating-point"
        sources.append(
            AnalysisSource(found.file, found.offset, found.nbytes, found.dtype, tensor_name)
        )
    index = layer_index(tensor_name)
    row: RowKey = index if index is not None else ("embed" if is_pre_layer(tensor_name) else "head")
    numel = 1
    for dim in info.shape:
        numel *= dim
    kind = block_kind(tensor_name)
    return AnalysisTensor(tensor_name, row, kind, numel, tuple(info.shape), tuple(sources))


def _identity(checkpoint: Any) -> list[list[Any]]:
    """A checkpoint's weight files as (path, size, mtime_ns): any rewrite changes it."""
    out = []
    for file in checkpoint.weight_files:
        resolved = Path(file).resolve()
        stat = resolved.stat()
        out.append([str(resolved), stat.st_size, stat.st_mtime_ns])
    return out


def cache_path(plan: AnalysisPlan) -> Path:
    digest = hashlib.sha256(json.dumps(plan.cache_key, sort_keys=True).encode()).hexdigest()
    return analysis_cache_dir() / f"{digest[:40]}.json"


def load_cached(plan: AnalysisPlan) -> Analysis | None:
    """The cached result for exactly these files, or None (absent, stale, unreadable)."""
    path = cache_path(plan)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("key") != plan.cache_key:
        return None
    stored = data.get("tensors")
    layout = Sums(len(plan.others))
    if not isinstance(stored, list):
        return None
    by_name = {t.name: t for t in plan.tensors}
    tensors: list[TensorSums] = []
    for entry in stored:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in by_name):
            return None
        sums = entry[1]
        if not (isinstance(sums, list) and len(sums) == layout.length):
            return None
        planned = by_name[entry[0]]
        tensors.append(TensorSums(planned.name, planned.row, planned.kind, tuple(map(float, sums))))
    if len(tensors) != len(plan.tensors):
        return None
    return plan.result(tensors, cached=True, seconds=float(data.get("seconds", 0.0)))


def store_cached(plan: AnalysisPlan, analysis: Analysis) -> Path | None:
    """Write the result atomically (temp file + rename); a cache that cannot be written is skipped."""
    path = cache_path(plan)
    data = {
        "key": plan.cache_key,
        "seconds": analysis.seconds,
        "tensors": [[t.name, list(t.sums)] for t in analysis.tensors],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
    except OSError:
        return None
    return path

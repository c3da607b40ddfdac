"""The merge engine: recipe -> plan -> streamed tensors -> a finished model folder.

    from mergetui.merge import make_plan, run_merge
    plan = make_plan(recipe, recipe_dir=..., out="merged/")   # headers only; UserError if unfit
    result = run_merge(plan, on_event=print, cancel=threading.Event())

See docs/engine.md. Names are imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "make_plan": "mergetui.merge.plan",
    "Plan": "mergetui.merge.plan",
    "PlannedTensor": "mergetui.merge.plan_tensors",
    "PlannedInput": "mergetui.merge.plan_tensors",
    "run_merge": "mergetui.merge.runner",
    "MergeResult": "mergetui.merge.events",
    "PlanReady": "mergetui.merge.events",
    "TensorDone": "mergetui.merge.events",
    "ShardWritten": "mergetui.merge.events",
    "Notice": "mergetui.merge.events",
    "Finished": "mergetui.merge.events",
    "Failed": "mergetui.merge.events",
    "Cancelled": "mergetui.merge.events",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

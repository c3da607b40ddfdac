"""Micro-benchmark of the merge methods on single tensors: mergetui against mergekit 0.1.5.

For each method, the same float32 inputs (a base and fine-tunes of it, the shapes of a ~245M
Llama: the 32000x1024 embedding, a 2816x1024 MLP matrix, a 1024-element norm) go through
mergetui's tensor function and mergekit's registered method object (`merge_tensors`), alternating,
several times; the table shows the best time of each and their ratio. With --memory, each
(method, implementation) also runs once in a fresh subprocess that reports the peak RSS added by the
merge over the inputs already in memory.

    python benchmarks/bench_methods.py                       # every method, embedding shape
    python benchmarks/bench_methods.py --methods ties,dare_ties --shape mlp --repeats 5
    python benchmarks/bench_methods.py --threads 1 --memory  # steadier numbers on a busy machine

Timing lives here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

SHAPES = {"embedding": (32000, 1024), "mlp": (2816, 1024), "norm": (1024,)}

TASK = {"weight": 0.5, "density": 0.5}
# method -> (non-base models, uses a base, shared params, per non-base params)
CASES: dict[str, tuple[int, bool, dict[str, Any], dict[str, Any]]] = {
    "linear": (2, True, {}, {"weight": 0.4}),
    "slerp": (1, True, {"t": 0.4}, {}),
    "nuslerp": (2, True, {}, {"weight": 0.5}),
    "multislerp": (2, True, {}, {"weight": 0.5}),
    "karcher": (2, True, {}, {}),
    "task_arithmetic": (2, True, {}, {"weight": 0.5}),
    "ties": (2, True, {}, TASK),
    "dare_ties": (2, True, {}, TASK),
    "dare_linear": (2, True, {}, TASK),
    "breadcrumbs": (2, True, {}, {**TASK, "gamma": 0.01}),
    "breadcrumbs_ties": (2, True, {}, {**TASK, "gamma": 0.01}),
    "della": (2, True, {}, {**TASK, "epsilon": 0.1}),
    "della_linear": (2, True, {}, {**TASK, "epsilon": 0.1}),
    "sce": (2, True, {"select_topk": 0.5}, {}),
    "ram": (2, True, {}, {}),
    "ramplus_tl": (2, True, {}, {}),
    "model_stock": (2, True, {}, {}),
    "nearswap": (1, True, {"t": 0.001}, {}),
    "arcee_fusion": (1, True, {}, {}),
    "passthrough": (0, True, {}, {"scale": 0.5}),
}
# mergekit ignores the base for these: it is just one more input
BASE_IGNORED = {"linear", "karcher", "passthrough"}


def make_inputs(shape: tuple[int, ...], count: int) -> list[Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    base = (torch.randn(shape, generator=g) * 0.02).bfloat16().float()
    tuned = [
        (base + torch.randn(shape, generator=g) * 0.002).bfloat16().float() for _ in range(count)
    ]
    return [base, *tuned]


def runners(method: str, tensors: list[Any]) -> tuple[Any, Any]:
    """(ours, mergekit's) zero-argument callables computing the same merge."""
    from mergekit.merge_methods import merge_tensors

    from mergetui.merge.methods import MethodContext, get_method_function

    _, _, shared, per = CASES[method]
    count = len(tensors)
    ignored = method in BASE_IGNORED
    base_index = None if ignored else 0
    per_model = [dict(per) if (ignored or i > 0) else {} for i in range(count)]
    ctx = MethodContext(method, "model.embed_tokens.weight", base_index, dict(shared), per_model, 1)
    function = get_method_function(method)
    parameters: dict[str, Any] = dict(shared)
    for name in per:
        parameters[name] = {i: per_model[i][name] for i in range(count) if name in per_model[i]}

    def ours() -> Any:
        return function(tensors, ctx)

    def theirs() -> Any:
        return merge_tensors(tensors, method, parameters=parameters, base_index=base_index)

    return ours, theirs


def time_method(method: str, shape: tuple[int, ...], repeats: int) -> tuple[float, float]:
    others, _, _, _ = CASES[method]
    tensors = make_inputs(shape, others)
    if method == "passthrough":
        tensors = tensors[:1]
    ours, theirs = runners(method, tensors)
    best_ours = best_theirs = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        best_ours = min(best_ours, time.perf_counter() - start)
        start = time.perf_counter()
        theirs()
        best_theirs = min(best_theirs, time.perf_counter() - start)
    return best_ours, best_theirs


def peak_memory_child(method: str, shape: tuple[int, ...], which: str, threads: int) -> None:
    """Run one merge and print the peak RSS (bytes) it added over the inputs."""
    import torch

    torch.set_num_threads(threads)
    others = CASES[method][0]
    tensors = make_inputs(shape, others)
    if method == "passthrough":
        tensors = tensors[:1]
    ours, theirs = runners(method, tensors)
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[1]) * resource.getpagesize()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    (ours if which == "ours" else theirs)()
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"added": max(0, peak - current)}))


def peak_memory(method: str, shape_name: str, which: str, threads: int) -> int:
    command = [
        sys.executable,
        __file__,
        "--child",
        f"{method}:{shape_name}:{which}:{threads}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(json.loads(result.stdout.strip().splitlines()[-1])["added"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(CASES))
    parser.add_argument("--shape", choices=sorted(SHAPES), default="embedding")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory", action="store_true", help="also measure peak added RSS")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        method, shape_name, which, threads = args.child.split(":")
        peak_memory_child(method, SHAPES[shape_name], which, int(threads))
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    print(
        f"shape {shape}, float32, torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    header = f"{'method':18s} {'mergetui':>10s} {'mergekit':>10s} {'ratio':>7s}"
    if args.memory:
        header += f" {'+RSS ours':>11s} {'+RSS mk':>11s} {'ratio':>7s}"
    print(header)
    for method in args.methods.split(","):
        ours, theirs = time_method(method, shape, args.repeats)
        line = f"{method:18s} {ours:9.3f}s {theirs:9.3f}s {ours / theirs:7.3f}"
        if args.memory:
            threads = torch.get_num_threads()
            ours_rss = peak_memory(method, args.shape, "ours", threads)
            theirs_rss = peak_memory(method, args.shape, "theirs", threads)
            ratio = ours_rss / theirs_rss if theirs_rss else float("nan")
            line += f" {ours_rss / 2**20:9.1f}MB {theirs_rss / 2**20:9.1f}MB {ratio:7.3f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

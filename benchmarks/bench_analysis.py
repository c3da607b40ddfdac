"""Merge-insight benchmark: the whole analysis against a linear merge of the same models, same run.

Uses bench_merge.py's synthetic checkpoints (a Llama base and two "fine-tunes", ~245M parameters
each in bf16, in benchmarks/_work/models) and times, alternating, several times:

- the engine in-process (torch already imported): a linear merge of base, ft-a and ft-b
  (plan to final rename), and the analysis of ft-a and ft-b against base (cosine, distance and
  sign agreement of every tensor, per layer and block kind), cache disabled;
- both as whole processes with peak RSS: `mergetui merge linear.yml` and
  `mergetui diff ft-a ft-b --base base --json --no-cache`;
- the analysis again from its cache (what reopening a recipe costs).

The target (issue 7) is analysis <= 2x the linear merge.

    python benchmarks/bench_analysis.py                 # 3 repeats, CPU
    python benchmarks/bench_analysis.py --device cuda --repeats 5 --clean

Timing lives here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_merge import (  # noqa: E402
    CONFIGS,
    WORK,
    engine_in_process,
    make_checkpoints_in_child,
    run_measured,
    warm_cache,
)


def analysis_in_process(models: dict[str, Path], device: str) -> float:
    """Plan-to-result seconds of the analysis with torch already imported, cache off."""
    from mergetui.merge.analysis_plan import plan_analysis
    from mergetui.merge.analysis_run import run_analysis

    start = time.perf_counter()
    plan = plan_analysis(
        {"base": models["base"], "ft-a": models["ft-a"], "ft-b": models["ft-b"]}, "base"
    )
    run_analysis(plan, device=device, use_cache=False)
    return time.perf_counter() - start


def cached_in_process(models: dict[str, Path]) -> float:
    from mergetui.merge.analysis_run import analyze

    named = {"base": models["base"], "ft-a": models["ft-a"], "ft-b": models["ft-b"]}
    analyze(named, "base")
    start = time.perf_counter()
    assert analyze(named, "base").cached
    return time.perf_counter() - start


def in_process(config: Path, out: Path, models: dict[str, Path], device: str, repeats: int) -> dict:
    """Alternate the linear merge and the analysis in this process (torch loaded for both)."""
    import torch

    merge_s, analysis_s = [], []
    for rep in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        merge_s.append(engine_in_process(config, out))
        analysis_s.append(analysis_in_process(models, device))
        print(
            f"  run {rep + 1}: linear merge {merge_s[-1]:6.2f} s   analysis {analysis_s[-1]:6.2f} s",
            file=sys.stderr,
            flush=True,
        )
    shutil.rmtree(out, ignore_errors=True)
    return {
        "torch": torch.__version__,
        "merge_s": statistics.median(merge_s),
        "analysis_s": statistics.median(analysis_s),
        "merge_runs": merge_s,
        "analysis_runs": analysis_s,
        "cached_s": cached_in_process(models),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="remove the synthetic checkpoints afterwards (kept by default: bench_merge uses them)",
    )
    parser.add_argument("--no-processes", action="store_true", help="only the in-process timings")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=WORK,
        help="where the linear merge writes (e.g. /dev/shm: the merge without disk write-back, "
        "the hardest comparison for the analysis, which writes nothing)",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    models = {name: WORK / "models" / name for name in ("base", "ft-a", "ft-b")}
    config = WORK / "analysis-linear.yml"
    out = args.out_dir / "out-analysis-linear"
    if args.in_process:  # the child: print the in-process figures as JSON
        print(json.dumps(in_process(config, out, models, args.device, args.repeats)))
        return 0

    # This parent stays a bare Python process (no torch): a child's peak RSS starts from the
    # parent's at fork time (see bench_merge.make_checkpoints_in_child).
    WORK.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="mergetui-bench-cache-"))
    env = {**os.environ, "MERGETUI_CACHE_DIR": str(cache)}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"device {args.device}"
    )
    print("making synthetic checkpoints (once) ...", flush=True)
    models = make_checkpoints_in_child(WORK / "models")
    warm_cache(list(models.values()))
    config.write_text(
        CONFIGS["linear"].format(base=models["base"], a=models["ft-a"], b=models["ft-b"])
    )
    results: dict[str, Any] = {}
    if not args.no_processes:
        mergetui = [sys.executable, "-m", "mergetui"]
        merge_cmd = [
            *mergetui,
            "merge",
            str(config),
            "--out",
            str(out),
            "--force",
            "--device",
            "cpu",
        ]
        diff_cmd = [
            *mergetui,
            "diff",
            str(models["ft-a"]),
            str(models["ft-b"]),
            "--base",
            str(models["base"]),
            "--json",
            "--no-cache",
            "--device",
            args.device,
        ]
        merge_p, diff_p = [], []
        for rep in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            merge_p.append(run_measured(merge_cmd, env))
            diff_p.append(run_measured(diff_cmd, env))
            print(
                f"  process run {rep + 1}: mergetui merge {merge_p[-1][0]:6.2f} s   "
                f"mergetui diff {diff_p[-1][0]:6.2f} s",
                flush=True,
            )
        results["merge_process_s"] = statistics.median(w for w, _ in merge_p)
        results["merge_rss_mib"] = statistics.median(r for _, r in merge_p) / 2**20
        results["diff_process_s"] = statistics.median(w for w, _ in diff_p)
        results["diff_rss_mib"] = statistics.median(r for _, r in diff_p) / 2**20
        results["process_ratio"] = results["diff_process_s"] / results["merge_process_s"]
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--in-process",
            "--repeats",
            str(args.repeats),
            "--device",
            args.device,
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    results.update(json.loads(child.stdout.strip().splitlines()[-1]))
    results["ratio"] = results["analysis_s"] / results["merge_s"]

    print()
    print(f"torch {results['torch']}")
    print(f"linear merge (in-process, median)   {results['merge_s']:7.2f} s")
    print(f"analysis     (in-process, median)   {results['analysis_s']:7.2f} s")
    print(f"analysis / linear merge             {results['ratio']:7.2f}   (target <= 2)")
    print(f"analysis from the cache             {results['cached_s'] * 1000:7.1f} ms")
    if "process_ratio" in results:
        print(
            f"whole processes: merge {results['merge_process_s']:.2f} s "
            f"({results['merge_rss_mib']:.0f} MiB peak), diff {results['diff_process_s']:.2f} s "
            f"({results['diff_rss_mib']:.0f} MiB peak), ratio {results['process_ratio']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    if args.clean:
        shutil.rmtree(WORK / "models", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

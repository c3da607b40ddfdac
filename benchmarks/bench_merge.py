"""Merge benchmark: mergetui against mergekit on the same config, same machine, same run.

Makes synthetic checkpoints of realistic shape (a Llama base and two "fine-tunes", ~245M parameters
each in bf16: hidden 1024, 16 layers, 16 heads / 4 KV heads, intermediate 2816, vocab 32000), then for
each method runs `mergetui merge` and `mergekit-yaml` on the same mergekit YAML, alternating, several
times, and reports the median wall time and peak RSS of each whole process, and their ratios.
It also times the engine in-process (plan to final rename, torch already imported) against the I/O
floor: reading every input byte once plus writing the output's bytes.

    python benchmarks/bench_merge.py                  # all methods, 3 repeats
    python benchmarks/bench_merge.py --methods ties --repeats 5 --keep

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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"

SHAPE = {
    "hidden_size": 1024,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "intermediate_size": 2816,
    "vocab_size": 32000,
}

CONFIGS = {
    "linear": """
models:
  - model: {base}
    parameters: {{weight: 0.4}}
  - model: {a}
    parameters: {{weight: 0.3}}
  - model: {b}
    parameters: {{weight: 0.3}}
merge_method: linear
dtype: bfloat16
""",
    "slerp": """
models:
  - model: {base}
  - model: {a}
merge_method: slerp
base_model: {base}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
""",
    "ties": """
models:
  - model: {base}
  - model: {a}
    parameters: {{density: 0.5, weight: 0.5}}
  - model: {b}
    parameters: {{density: 0.5, weight: 0.5}}
merge_method: ties
base_model: {base}
parameters: {{normalize: true}}
dtype: bfloat16
""",
    "dare_ties": """
models:
  - model: {base}
  - model: {a}
    parameters: {{density: 0.5, weight: 0.5}}
  - model: {b}
    parameters: {{density: 0.5, weight: 0.5}}
merge_method: dare_ties
base_model: {base}
dtype: bfloat16
""",
}


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    h, i, v = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    kv = h // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for layer in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
            }
        )
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def make_checkpoints(root: Path) -> dict[str, Path]:
    """A base and two fine-tunes (base + small seeded noise), bf16, two shards each, with config."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    paths = {name: root / name for name in ("base", "ft-a", "ft-b")}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    shapes = tensor_shapes()
    names = list(shapes)
    half = len(names) // 2
    config = LlamaConfig(
        **SHAPE,
        torch_dtype="bfloat16",
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],  # mergekit 0.1.5 refuses a config without it
    )
    for index, (name, path) in enumerate(paths.items()):
        print(f"  making {name} ...", flush=True)
        path.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for shard_no, shard_names in enumerate((names[:half], names[half:]), start=1):
            gen = torch.Generator().manual_seed(0)
            noise_gen = torch.Generator().manual_seed(100 + index)
            tensors = {}
            for tname in shard_names:
                shape = shapes[tname]
                if len(shape) == 1:
                    t = torch.ones(shape)
                else:
                    t = torch.randn(shape, generator=gen) * 0.02
                if index:
                    t += torch.randn(shape, generator=noise_gen) * 0.002
                tensors[tname] = t.to(torch.bfloat16)
            fname = f"model-{shard_no:05d}-of-00002.safetensors"
            save_file(tensors, str(path / fname), metadata={"format": "pt"})
            weight_map.update({t: fname for t in shard_names})
        total = sum(2 * int(torch.Size(s).numel()) for s in shapes.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
        )
        config.save_pretrained(path)
    return paths


def make_checkpoints_in_child(root: Path) -> dict[str, Path]:
    """`make_checkpoints` in a child process, so this process never holds torch or tensors.

    A child's peak RSS, as wait4 reports it, starts from this process's RSS at fork time (Linux
    keeps the pre-exec high-water mark): a parent bloated by making checkpoints would inflate every
    measured figure to its own size. So the measuring parent stays a bare Python process.
    """
    subprocess.run([sys.executable, __file__, "--make-only", str(root)], check=True)
    return {name: root / name for name in ("base", "ft-a", "ft-b")}


def own_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one whole child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss * 1024


def warm_cache(paths: list[Path]) -> None:
    for folder in paths:
        for f in folder.glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def byte_compile_mergetui() -> None:
    """Compile mergetui's modules once, as pip does for any package it installs (mergekit's
    .pyc files are in site-packages). An editable install is only compiled by its first import,
    and never where PYTHONDONTWRITEBYTECODE is set (as on the development machine): every run
    would compile the CLI and the engine again (~0.1 s)."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("mergetui")
    if spec is not None and spec.origin is not None:
        compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)


def io_floor(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Seconds to read every input byte once and write the output's size: the floor for any merge."""
    buf = bytearray(1 << 24)
    start = time.perf_counter()
    for folder in inputs:
        for f in folder.glob("*.safetensors"):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    with open(scratch, "wb") as fh:
        left = out_bytes
        while left > 0:
            n = min(left, len(buf))
            fh.write(memoryview(buf)[:n])
            left -= n
    elapsed = time.perf_counter() - start
    scratch.unlink()
    return elapsed


def engine_in_child(config_path: Path, out: Path) -> float:
    """`engine_in_process` in a child (torch stays out of the measuring parent)."""
    done = subprocess.run(
        [sys.executable, __file__, "--engine-only", str(config_path), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def engine_in_process(config_path: Path, out: Path) -> float:
    """Plan-to-rename seconds of our engine with torch already imported, the cyclic collector
    paused as `mergetui merge` pauses it."""
    import gc

    import torch  # noqa: F401  # imported before the clock starts: it is not the engine's time

    gc.disable()

    from mergetui.merge.plan import make_plan
    from mergetui.merge.runner import run_merge
    from mergetui.recipe.io import load_recipe

    recipe = load_recipe(config_path)
    # The previous output is removed first: unlinking ~0.5 GB of files is not the engine's work.
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    plan = make_plan(recipe, recipe_dir=config_path.parent, out=out)
    run_merge(plan, force=True)
    return time.perf_counter() - start


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    parser.add_argument("--no-mergekit", action="store_true", help="only run mergetui")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--make-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine-only", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_only:
        make_checkpoints(args.make_only)
        return 0
    if args.engine_only:
        print(engine_in_process(*args.engine_only))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("making synthetic checkpoints (once) ...", flush=True)
    models = make_checkpoints_in_child(WORK / "models")
    warm_cache(list(models.values()))
    byte_compile_mergetui()
    print(f"measuring parent: {own_rss_mib():.0f} MiB resident (children's peaks start near it)")
    mergekit_yaml = shutil.which("mergekit-yaml")
    if mergekit_yaml is None and not args.no_mergekit:
        print("mergekit-yaml not found: pip install mergekit==0.1.5 (or pass --no-mergekit)")
        return 1

    results = {}
    for method in args.methods:
        cfg = WORK / f"{method}.yml"
        cfg.write_text(
            CONFIGS[method].format(base=models["base"], a=models["ft-a"], b=models["ft-b"])
        )
        ours_cmd = [
            sys.executable,
            "-m",
            "mergetui",
            "merge",
            str(cfg),
            "--out",
            str(WORK / "out-ours"),
            "--force",
            "--device",
            "cpu",
        ]
        theirs_cmd = [mergekit_yaml or "mergekit-yaml", str(cfg), str(WORK / "out-mergekit")]
        ours, theirs = [], []
        for rep in range(args.repeats):
            for label, cmd, sink, out in (
                ("mergetui", ours_cmd, ours, WORK / "out-ours"),
                ("mergekit", theirs_cmd, theirs, WORK / "out-mergekit"),
            ):
                if label == "mergekit" and args.no_mergekit:
                    continue
                shutil.rmtree(out, ignore_errors=True)
                wall, rss = run_measured(cmd)
                sink.append((wall, rss))
                print(
                    f"  {method:10s} {label:9s} run {rep + 1}: {wall:6.2f} s  {rss / 2**20:7.0f} MiB",
                    flush=True,
                )
        out_bytes = dir_size(WORK / "out-ours")
        used_inputs = [models["base"], models["ft-a"]] + (
            [models["ft-b"]] if method != "slerp" else []
        )
        floor = statistics.median(
            io_floor(used_inputs, out_bytes, WORK / "floor.bin") for _ in range(3)
        )
        engine = statistics.median(
            engine_in_child(cfg, WORK / "out-ours") for _ in range(max(1, args.repeats))
        )
        row = {
            "ours_s": statistics.median(w for w, _ in ours),
            "ours_rss_mib": statistics.median(r for _, r in ours) / 2**20,
            "engine_s": engine,
            "io_floor_s": floor,
        }
        if theirs:
            row["mergekit_s"] = statistics.median(w for w, _ in theirs)
            row["mergekit_rss_mib"] = statistics.median(r for _, r in theirs) / 2**20
            row["time_ratio"] = row["ours_s"] / row["mergekit_s"]
            row["rss_ratio"] = row["ours_rss_mib"] / row["mergekit_rss_mib"]
        row["engine_over_floor"] = engine / floor
        results[method] = row

    print()
    header = f"{'method':10s} {'ours s':>7s} {'mk s':>7s} {'time x':>7s} {'ours MiB':>9s} {'mk MiB':>8s} {'rss x':>6s} {'engine s':>9s} {'floor s':>8s} {'/floor':>7s}"
    print(header)
    for method, r in results.items():
        print(
            f"{method:10s} {r['ours_s']:7.2f} {r.get('mergekit_s', float('nan')):7.2f} {r.get('time_ratio', float('nan')):7.3f} "
            f"{r['ours_rss_mib']:9.0f} {r.get('mergekit_rss_mib', float('nan')):8.0f} {r.get('rss_ratio', float('nan')):6.3f} "
            f"{r['engine_s']:9.2f} {r['io_floor_s']:8.2f} {r['engine_over_floor']:7.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    for out in ("out-ours", "out-mergekit"):
        shutil.rmtree(WORK / out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(WORK / "models", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

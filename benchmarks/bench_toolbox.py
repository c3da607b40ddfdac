"""The rest of mergekit's toolbox: mergetui against mergekit's own tool, same inputs, same run.

On the ~245M-parameter synthetic Llama family of bench_merge.py (a base and two "fine-tunes", bf16,
two shards each; made once under benchmarks/_work/models, shared with bench_merge.py), for each tool
it runs our command and mergekit's on the same inputs, alternating, and reports the median wall time
and peak RSS (wait4's ru_maxrss of the whole child process) and their ratios. Targets, as for
merges: at most 0.35x mergekit's time and 0.3x its peak memory.

- lora-input: a linear merge where one model carries a rank-64 LoRA adapter on every attention and
  MLP projection (`ft-a+adapter` in the same mergekit YAML); `mergetui merge` against
  `mergekit-yaml` (which first writes the model with the adapter merged into its cache).
- extract-lora: a rank-32 adapter from ft-a over base; `mergetui extract-lora` against
  `mergekit-extract-lora --max-rank 32`.
- moe: a Mixtral-style MoE of ft-a and ft-b over base, gate_mode cheap_embed, two experts per
  token; `mergetui merge moe.yml` against `mergekit-moe`.
- multi: two stages (a linear soup of ft-a and ft-b, then SLERP from base towards it) in one
  mergekit-multi file; `mergetui merge` against `mergekit-multi`.

A tool that this mergetui does not have yet (its command fails on the help check) is reported as
such, not timed.

    python benchmarks/bench_toolbox.py                         # every tool, 2 repeats
    python benchmarks/bench_toolbox.py --tools lora-input multi --repeats 3

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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_merge import (  # noqa: E402  (a sibling script, importable once HERE is on the path)
    SHAPE,
    WORK,
    byte_compile_mergetui,
    make_checkpoints_in_child,
    own_rss_mib,
    run_measured,
    warm_cache,
)

TOOLS = ("lora-input", "extract-lora", "moe", "multi")
LORA_RANK = 64
EXTRACT_RANK = 32
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(folder: Path) -> Path:
    """A PEFT LoRA adapter (rank LORA_RANK, alpha 2 * rank) on every projection, seeded, saved
    as PEFT saves one (adapter_config.json + adapter_model.safetensors)."""
    import torch
    from safetensors.torch import save_file

    if (folder / "adapter_model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    h, i = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    kv = h // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"]
    shapes = {  # (out, in) of each projection
        "q_proj": (h, h),
        "k_proj": (kv, h),
        "v_proj": (kv, h),
        "o_proj": (h, h),
        "gate_proj": (i, h),
        "up_proj": (i, h),
        "down_proj": (h, i),
    }
    generator = torch.Generator().manual_seed(7)
    tensors = {}
    for layer in range(SHAPE["num_hidden_layers"]):
        for proj in PROJECTIONS:
            part = "self_attn" if proj in PROJECTIONS[:4] else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{proj}"
            out_features, in_features = shapes[proj]
            a = torch.randn(LORA_RANK, in_features, generator=generator) * 0.01
            b = torch.randn(out_features, LORA_RANK, generator=generator) * 0.01
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": LORA_RANK,
        "lora_alpha": 2 * LORA_RANK,
        "lora_dropout": 0.0,
        "target_modules": list(PROJECTIONS),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": "ft-a",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def add_tokenizers(models: dict[str, Path]) -> None:
    """The demo's offline tokenizer in each model folder (mergekit-moe tokenizes the prompts)."""
    from mergetui.demo import train_tokenizer

    for folder in models.values():
        if not (folder / "tokenizer.json").exists():
            train_tokenizer(folder)


def write_configs(models: dict[str, Path], adapter: Path) -> dict[str, Path]:
    base, a, b = models["base"], models["ft-a"], models["ft-b"]
    texts = {
        "lora-input": f"""models:
  - model: {base}
    parameters: {{weight: 0.5}}
  - model: {a}+{adapter}
    parameters: {{weight: 0.5}}
merge_method: linear
dtype: bfloat16
""",
        "moe": f"""base_model: {base}
gate_mode: cheap_embed
dtype: bfloat16
experts_per_token: 2
experts:
  - source_model: {a}
    positive_prompts: ["write a story about a dragon", "a poem about the sea"]
  - source_model: {b}
    positive_prompts: ["def parse(line):", "import os"]
""",
        "multi": f"""name: soup
models:
  - model: {a}
    parameters: {{weight: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5}}
merge_method: linear
dtype: bfloat16
---
models:
  - model: {base}
  - model: soup
merge_method: slerp
base_model: {base}
parameters:
  t: 0.5
dtype: bfloat16
""",
    }
    paths = {}
    for tool, text in texts.items():
        paths[tool] = WORK / f"toolbox-{tool}.yml"
        paths[tool].write_text(text, encoding="utf-8")
    return paths


def commands(tool: str, models: dict[str, Path], configs: dict[str, Path]) -> tuple[list, list]:
    """(ours, theirs) command lines; outputs go to WORK/tb-ours and WORK/tb-theirs."""
    ours_out, theirs_out = str(WORK / "tb-ours"), str(WORK / "tb-theirs")
    me = [sys.executable, "-m", "mergetui"]
    if tool == "extract-lora":
        ours = me + ["extract-lora", str(models["ft-a"]), str(models["base"]), "--out", ours_out]
        ours += ["--rank", str(EXTRACT_RANK), "--device", "cpu"]
        theirs = ["mergekit-extract-lora", "--model", str(models["ft-a"])]
        theirs += ["--base-model", str(models["base"]), "--out-path", theirs_out]
        theirs += ["--max-rank", str(EXTRACT_RANK)]
        return ours, theirs
    if tool == "multi":
        ours = me + ["merge", str(configs[tool]), "--out", ours_out, "--device", "cpu"]
        ours += ["--intermediate-dir", str(WORK / "tb-ours-stages")]
        theirs = ["mergekit-multi", str(configs[tool]), "--out-path", theirs_out]
        theirs += ["-I", str(WORK / "tb-theirs-stages")]
        return ours, theirs
    ours = me + ["merge", str(configs[tool]), "--out", ours_out, "--device", "cpu"]
    theirs = ["mergekit-moe" if tool == "moe" else "mergekit-yaml", str(configs[tool]), theirs_out]
    return ours, theirs


def have_tool(ours: list[str], config: Path | None) -> str | None:
    """None when this mergetui can run the tool (its dry run or help succeeds), else why not."""
    probe = ours[:4] + ["--help"] if ours[3] == "extract-lora" else ours + ["--dry-run"]
    done = subprocess.run(probe, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip().splitlines()[-1][:200]


def clean_outputs() -> None:
    for name in ("tb-ours", "tb-theirs", "tb-ours-stages", "tb-theirs-stages", "lora-cache"):
        shutil.rmtree(WORK / name, ignore_errors=True)
    mergekit_lora_cache = Path.home() / ".cache" / "mergekit" / "lora_merge_cache"
    shutil.rmtree(mergekit_lora_cache, ignore_errors=True)  # or mergekit reuses its merged copy


def bench_tool(tool: str, models: dict[str, Path], configs: dict[str, Path], repeats: int) -> dict:
    ours_cmd, theirs_cmd = commands(tool, models, configs)
    missing = have_tool(ours_cmd, configs.get(tool))
    if missing is not None:
        print(f"  {tool}: not in this mergetui yet ({missing})", flush=True)
        return {"missing": missing}
    if tool == "lora-input":  # mergekit merges the adapter into a cache folder first: a fresh one
        theirs_cmd += ["--lora-merge-cache", str(WORK / "lora-cache")]
    ours, theirs = [], []
    for rep in range(repeats):
        for label, cmd, sink in (("mergetui", ours_cmd, ours), ("mergekit", theirs_cmd, theirs)):
            clean_outputs()
            wall, rss = run_measured(cmd)
            sink.append((wall, rss))
            print(f"  {tool:12s} {label:9s} run {rep + 1}: {wall:7.2f} s {rss / 2**20:7.0f} MiB")
    clean_outputs()
    row = {
        "ours_s": statistics.median(w for w, _ in ours),
        "ours_rss_mib": statistics.median(r for _, r in ours) / 2**20,
        "mergekit_s": statistics.median(w for w, _ in theirs),
        "mergekit_rss_mib": statistics.median(r for _, r in theirs) / 2**20,
    }
    row["time_ratio"] = row["ours_s"] / row["mergekit_s"]
    row["rss_ratio"] = row["ours_rss_mib"] / row["mergekit_rss_mib"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    models = {name: WORK / "models" / name for name in ("base", "ft-a", "ft-b")}
    if args.prepare_only:  # in a child: torch never enters the measuring parent
        make_adapter(WORK / "adapter")
        add_tokenizers(models)
        return 0
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("making synthetic checkpoints (once) ...", flush=True)
    models = make_checkpoints_in_child(WORK / "models")
    subprocess.run([sys.executable, __file__, "--prepare-only"], check=True)
    warm_cache(list(models.values()))
    byte_compile_mergetui()
    print(f"measuring parent: {own_rss_mib():.0f} MiB resident")
    configs = write_configs(models, WORK / "adapter")
    results = {tool: bench_tool(tool, models, configs, args.repeats) for tool in args.tools}
    print()
    print(
        f"{'tool':12s} {'ours s':>8s} {'mk s':>8s} {'time x':>7s} {'ours MiB':>9s} {'mk MiB':>8s} {'rss x':>6s}"
    )
    for tool, r in results.items():
        if "missing" in r:
            print(f"{tool:12s} not in this mergetui yet")
            continue
        print(
            f"{tool:12s} {r['ours_s']:8.2f} {r['mergekit_s']:8.2f} {r['time_ratio']:7.3f} "
            f"{r['ours_rss_mib']:9.0f} {r['mergekit_rss_mib']:8.0f} {r['rss_ratio']:6.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

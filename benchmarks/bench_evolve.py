"""Evolve: evaluations per minute against the loop a user scripts by hand, and the search's quality.

Speed. Makes (once, under benchmarks/_work/evolve/) a ~32M-parameter Llama-shaped family: a base
(random init, hidden 512, 8 layers, 8 heads / 4 KV heads, intermediate 1408, vocabulary 8192) and
two "fine-tunes" (base + seeded noise), float32, with the demo's offline byte-level BPE tokenizer, and a ~2K-token
text. The genome: task_arithmetic of the two fine-tunes over the base, `weight` searched in 4 layer
groups per model (8 values), one perplexity objective on that text. Then:

- ours: `mergetui evolve SPEC --budget N --device cpu` in a child process (start-up, loading the
  parents and every candidate included);
- theirs: the loop a user scripts by hand when mergekit-evolve will not run (see docs/benchmarks.md
  for why it does not here), on the SAME candidates ours scored (read back from evaluations.jsonl):
  for each one `mergekit-yaml CANDIDATE.yaml OUT` (the candidate as mergekit YAML, the file our
  best.yaml would be), then transformers loads OUT in float32 and scores the text with the same
  windows as the perplexity objective (lm-eval's rolling windows: 1024 tokens, back to back).

Both report evaluations per minute over the whole run (wall time / N) and peak RSS (wait4's
ru_maxrss of the child and of its own children; the measuring parent stays a bare Python process).
The same candidate's fitness from both must agree within 1%.

Quality. `mergetui demo --no-tui` (the trained prose/code family), `mergetui evolve` on its
`evolve.toml` with budget 48, then the held-out perplexity (the demo's heldout/ texts, never used
for training or calibration) of each parent, of the equal-weight merge of the same method, and of
the best recipe.

    python benchmarks/bench_evolve.py                    # speed (N=12) and quality
    python benchmarks/bench_evolve.py --only speed --budget 16
    python benchmarks/bench_evolve.py --only quality --json out.json

Timing lives here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "evolve"
# A ~32M-parameter Llama: 8 layers of hidden 512 (8 heads of 64, 4 KV heads), intermediate 1408,
# vocabulary 8192 (the demo tokenizer uses its first ~400 ids), a 2048-token context.
SHAPE = dict(
    num_hidden_layers=8,
    hidden_size=512,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=1408,
    vocab_size=8192,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=3,
)
GROUPS = 4
WINDOW = 1024  # the perplexity objective's window (chat.perplexity.MAX_WINDOW)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_measured(cmd: list[str], cwd: Path | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes, stdout.

    The peak is wait4's ru_maxrss for this child, which on Linux covers the child and the
    descendants it waited for (the hand loop's mergekit-yaml runs).
    """
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {code}")
    return wall, usage.ru_maxrss * 1024, out


# ---- the family and the spec (made in a child process, so the parent stays bare)


def make_family(root: Path) -> dict[str, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergetui.demo import train_tokenizer

    paths = {name: root / name for name in ("base", "ft-a", "ft-b")}
    if not all((p / "config.json").exists() for p in paths.values()):
        config = LlamaConfig(**SHAPE, architectures=["LlamaForCausalLM"])
        torch.manual_seed(0)
        base = LlamaForCausalLM(config).eval()
        state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        for index, path in enumerate(paths.values()):
            if index:
                noise = torch.Generator().manual_seed(index)
                with torch.no_grad():
                    for key, param in base.state_dict().items():
                        param.copy_(state[key] + torch.randn(param.shape, generator=noise) * 0.004)
            base.save_pretrained(str(path), safe_serialization=True)
            train_tokenizer(path)
    text = root / "text.txt"
    if not text.exists():
        from mergetui.resources import sample_text

        sample = sample_text()
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(paths["base"]))
        body = sample
        while len(tokenizer(body)["input_ids"]) < 2048:
            body += "\n" + sample
        ids = tokenizer(body)["input_ids"][:2048]
        text.write_text(tokenizer.decode(ids), encoding="utf-8")
    spec = root / "spec.toml"
    spec.write_text(
        f"""[merge]
method = "task_arithmetic"
base = "base"
dtype = "float32"

[models.base]
source = "{paths["base"]}"

[models.ft-a]
source = "{paths["ft-a"]}"
parameters = {{ weight = 0.5 }}

[models.ft-b]
source = "{paths["ft-b"]}"
parameters = {{ weight = 0.5 }}

[search]
parameters = ["weight"]
layer_groups = {GROUPS}
smooth = false
budget = 48
seed = 0

[[search.objective]]
kind = "perplexity"
text = "text.txt"
""",
        encoding="utf-8",
    )
    return paths


# ---- the hand-scripted loop (runs in a child process)


def windowed_nll(model: Any, ids: Any) -> float:
    """Mean NLL per token with back-to-back windows (each starts on the last token of the one
    before, so every token but the first is scored once), as lm-eval's rolling log-likelihood
    and mergetui's perplexity objective do."""
    import torch

    total = int(ids.shape[0])
    size = min(WINDOW, total)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for begin in range(0, total - 1, size - 1):
            chunk = ids[begin : begin + size].unsqueeze(0)
            logits = model(chunk, use_cache=False).logits[0].float()
            token_nll = -torch.log_softmax(logits[:-1], -1).gather(1, chunk[0, 1:, None])[:, 0]
            nll += float(token_nll.double().sum())
            count += int(token_nll.numel())
    return nll / count


def hand_loop(root: Path, out_json: Path, first: int | None = None) -> None:
    """For each candidate ours scored: mergekit-yaml, then transformers perplexity."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergetui.recipe.yaml_export import dumps_yaml
    from mergetui.search.genome import Genome
    from mergetui.search.spec import load_search_spec

    torch.set_num_threads(os.cpu_count() or 1)
    spec = load_search_spec(root / "spec.toml")
    genome = Genome(spec, SHAPE["num_hidden_layers"])
    records = [
        json.loads(line) for line in (root / "ours" / "evaluations.jsonl").read_text().splitlines()
    ][:first]
    text = (root / "text.txt").read_text(encoding="utf-8")
    results = []
    started = time.perf_counter()
    for record in records:
        values = record["values"]
        values = [values[label] for label in genome.labels] if isinstance(values, dict) else values
        t0 = time.perf_counter()
        config = root / "candidate.yaml"
        config.write_text(dumps_yaml(genome.recipe_for(values)), encoding="utf-8")
        out = root / "candidate-out"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            ["mergekit-yaml", str(config), str(out), "--copy-tokenizer"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(out))
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        nll = windowed_nll(model.eval(), ids)
        del model
        results.append(
            {"fitness": nll, "ours": record["fitness"], "seconds": time.perf_counter() - t0}
        )
    out_json.write_text(
        json.dumps({"results": results, "seconds": time.perf_counter() - started}), encoding="utf-8"
    )


def bench_speed(budget: int, population: int | None, theirs_first: int | None) -> dict[str, Any]:
    root = WORK / "speed"
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--make-only", str(root)], check=True)
    ours_dir = root / "ours"
    shutil.rmtree(ours_dir, ignore_errors=True)
    print(f"ours: mergetui evolve, budget {budget} ...", flush=True)
    ours_cmd = [sys.executable, "-m", "mergetui", "evolve", str(root / "spec.toml")]
    ours_cmd += ["--budget", str(budget), "--device", "cpu", "--out", str(ours_dir), "--json"]
    if population:
        ours_cmd += ["--population", str(population)]
    ours_wall, ours_rss, _ = run_measured(ours_cmd)
    print("theirs: mergekit-yaml + transformers perplexity per candidate ...", flush=True)
    theirs_json = root / "theirs.json"
    hand_loop_cmd = [sys.executable, __file__, "--hand-loop", str(root), str(theirs_json)]
    if theirs_first:
        hand_loop_cmd += ["--first", str(theirs_first)]
    theirs_wall, theirs_rss, _ = run_measured(hand_loop_cmd)
    theirs = json.loads(theirs_json.read_text())
    worst = max(abs(r["fitness"] - r["ours"]) / abs(r["fitness"]) for r in theirs["results"])
    ours_rate = budget / ours_wall * 60
    # Theirs pays the same per candidate however many it scores; its rate counts only the
    # candidates' own seconds (its one start-up left out, in its favour).
    per_candidate = [r["seconds"] for r in theirs["results"]]
    theirs_rate = len(per_candidate) / sum(per_candidate) * 60
    return {
        "budget": budget,
        "theirs_candidates": len(per_candidate),
        "theirs_per_candidate_s": [round(x, 2) for x in per_candidate],
        "ours_seconds": ours_wall,
        "theirs_seconds": theirs_wall,
        "ours_evals_per_min": ours_rate,
        "theirs_evals_per_min": theirs_rate,
        "speedup": ours_rate / theirs_rate,
        "ours_peak_rss_mib": ours_rss / 2**20,
        "theirs_peak_rss_mib": theirs_rss / 2**20,
        "worst_fitness_rel_diff": worst,
    }


# ---- quality on the demo family


def heldout_nll(model_dir: Path, texts: list[Path]) -> list[float]:
    """Mean NLL on each held-out text, as `mergetui eval --text` computes it (log perplexity)."""
    from mergetui.chat.loader import load_for_chat
    from mergetui.chat.perplexity import perplexity, read_text

    loaded = load_for_chat(model_dir, device="cpu", dtype="float32")
    try:
        return [math.log(perplexity(loaded, read_text(text)[0]).perplexity) for text in texts]
    finally:
        loaded.unload()


def merge(recipe: Path, out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mergetui",
            "merge",
            str(recipe),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


def bench_quality(budget: int) -> dict[str, Any]:
    root = WORK / "quality"
    demo = root / "demo"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "mergetui", "demo", "--no-tui", "--dir", str(demo)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    texts = sorted((demo / "heldout").glob("*.txt"))
    if not texts or not (demo / "recipes" / "evolve.toml").is_file():
        raise SystemExit(
            "the quality run needs the trained demo family (held-out texts and recipes/evolve.toml)"
            f" in {demo}: `mergetui demo` did not write them (docs/evolve.md, 'The demo family')"
        )
    spec = demo / "recipes" / "evolve.toml"
    out = root / "search"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mergetui", "evolve", str(spec), "--budget", str(budget)]
        + ["--out", str(out), "--device", "cpu", "--json"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    equal = spec.parent / "equal.toml"  # beside the spec: its model paths are relative to it
    equal_text = spec.read_text(encoding="utf-8").split("[search]")[0]
    equal.write_text(equal_text, encoding="utf-8")
    rows = {
        "prose": demo / "prose",
        "code": demo / "code",
        "equal-weight merge": merge(equal, root / "equal-out"),
        "best found": merge(out / "best.toml", root / "best-out"),
    }
    table = {}
    for name, folder in rows.items():
        nll = heldout_nll(folder, texts)
        table[name] = {"nll": dict(zip([t.stem for t in texts], nll, strict=True))}
        table[name]["mean_ppl"] = math.exp(sum(nll) / len(nll))
    return {"budget": budget, "search_seconds": seconds, "heldout": table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=12, help="candidates in the speed run")
    parser.add_argument("--population", type=int, help="candidates per generation (speed run)")
    parser.add_argument("--quality-budget", type=int, default=48)
    parser.add_argument("--only", choices=("speed", "quality"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--make-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--theirs-first",
        type=int,
        help="the hand loop scores only ours' first N candidates (its cost per candidate does "
        "not change; default: all of them)",
    )
    parser.add_argument("--hand-loop", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_only:
        make_family(args.make_only)
        return 0
    if args.hand_loop:
        hand_loop(*args.hand_loop, first=args.first)
        return 0
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    report: dict[str, Any] = {}
    if args.only in (None, "speed"):
        report["speed"] = speed = bench_speed(args.budget, args.population, args.theirs_first)
        print(
            f"speed: ours {speed['ours_evals_per_min']:.2f} evals/min "
            f"({speed['ours_seconds']:.1f} s, peak {speed['ours_peak_rss_mib']:.0f} MiB), "
            f"hand loop {speed['theirs_evals_per_min']:.2f} evals/min "
            f"({speed['theirs_candidates']} candidates in {speed['theirs_seconds']:.1f} s, peak {speed['theirs_peak_rss_mib']:.0f} MiB): "
            f"{speed['speedup']:.1f}x (target >= 5x); "
            f"worst fitness difference {speed['worst_fitness_rel_diff']:.2e} (target < 1e-2)"
        )
    if args.only in (None, "quality"):
        report["quality"] = quality = bench_quality(args.quality_budget)
        print(f"quality: budget {quality['budget']}, search {quality['search_seconds']:.0f} s")
        for name, row in quality["heldout"].items():
            per = ", ".join(f"{k} {math.exp(v):.2f}" for k, v in row["nll"].items())
            print(f"  {name:20s} mean ppl {row['mean_ppl']:.3f}  ({per})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

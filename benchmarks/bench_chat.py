"""Chat and eval speed: mergetui against plain transformers on the same model, text and machine.

Makes (once, under benchmarks/_work/) a synthetic checkpoint of a real small model's shape, a
SmolLM-135M-like Llama (hidden 576, 30 layers, 9 heads / 3 KV heads, intermediate 1536, vocab
49152, tied embeddings, 135M parameters), random weights saved in bf16 as most checkpoints are,
with a byte-level BPE tokenizer trained offline as `mergetui.demo` does. Then, in one process:

- eval: `mergetui eval MODEL --text T.txt` (an in-process `mergetui.cli.main` call: load with
  `--dtype auto`, then the windowed perplexity) against plain transformers loading the same
  checkpoint in float32 and scoring the same ~900-token text (`model(ids, labels=ids).loss`);
  plain transformers in bf16 (transformers' own `dtype="auto"`) is timed once for reference;
- chat: a 32-token greedy reply by `mergetui.chat.generate.generate_reply` on the model as
  `load_for_chat` loads it (`--dtype auto`) against `model.generate` on the same prompt ids in bf16
  and in float32, after a one-line prompt (decoding dominates) and after a ~400-token one (a
  longer conversation: reading the prompt dominates).

Medians of --repeats rounds; each round runs every contender once, in a rotating order, so a busy
spell on a shared machine falls on all of them alike (one warm-up generation each first). Ratios
below 1 mean mergetui is faster. Targets (issue 13): eval no slower than plain transformers in float32; a chat reply no slower
than plain transformers in its faster dtype.

    python benchmarks/bench_chat.py                 # 3 repeats
    python benchmarks/bench_chat.py --repeats 5 --json out.json

Timing lives here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
TEXT_TOKENS = 913
REPLY_TOKENS = 32
LONG_PROMPT_TOKENS = 400
PROMPT = "Tell me about the lighthouse keeper and the gulls."

SHAPE = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def make_checkpoint(folder: Path) -> Path:
    """The SmolLM-135M-shaped checkpoint (bf16 safetensors + tokenizer); reused if present."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    import transformers

    from mergetui.demo import BOS_TOKEN, EOS_TOKEN, train_tokenizer

    train_tokenizer(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    config = transformers.LlamaConfig(
        **SHAPE,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TOKEN),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    return folder


def make_text(folder: Path, path: Path) -> Path:
    """The first TEXT_TOKENS tokens of the bundled sample, as text."""
    import transformers

    from mergetui.resources import sample_text

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(sample_text(), verbose=False)["input_ids"][:TEXT_TOKENS]
    path.write_text(tokenizer.decode(ids), encoding="utf-8")
    return path


RUNS: dict[str, list[float]] = {}  # every run's seconds, by "part.contender"


def alternating(
    part: str, contenders: dict[str, Callable[[], Any]], repeats: int
) -> dict[str, tuple[float, Any]]:
    """Median seconds of each contender over `repeats` rounds, and its last result. Each round
    runs every contender once, starting with a different one, so a busy spell on the (shared)
    machine falls on all of them alike."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            results[name] = contenders[name]()
            times[name].append(time.perf_counter() - started)
    RUNS.update({f"{part}.{name}": runs for name, runs in times.items()})
    return {name: (statistics.median(times[name]), results[name]) for name in names}


def plain_load(folder: Path, dtype: Any) -> Any:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return model.eval()


def plain_eval(folder: Path, text: str, dtype: Any) -> float:
    """What a person would write: load, tokenize, one forward pass with labels."""
    import math

    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = plain_load(folder, dtype)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return math.exp(model(ids, labels=ids).loss.item())


def bench_eval(folder: Path, text_path: Path, repeats: int) -> dict[str, Any]:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    import torch

    from mergetui.cli import main as cli_main

    text = text_path.read_text(encoding="utf-8")
    os.chdir(folder.parent)  # the table names the model as typed: one short row
    args = ["eval", folder.name, "--text", str(text_path), "--device", "cpu"]

    def ours() -> str:
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(io.StringIO()):
            assert cli_main(args) == 0
        return out.getvalue()

    figures = alternating(
        "eval", {"ours": ours, "float32": lambda: plain_eval(folder, text, torch.float32)}, repeats
    )
    (ours_s, table), (f32_s, f32_ppl) = figures["ours"], figures["float32"]
    bf16_s, bf16_ppl = alternating("eval", {"bf16": lambda: plain_eval(folder, text, "auto")}, 1)[
        "bf16"
    ]
    row = next(line for line in table.splitlines() if folder.name in line)
    return {
        "mergetui_eval_s": ours_s,
        "mergetui_row": " ".join(row.replace("│", " ").split()),
        "plain_float32_s": f32_s,
        "plain_float32_perplexity": f32_ppl,
        "plain_bf16_s": bf16_s,
        "plain_bf16_perplexity": bf16_ppl,
        "ratio_vs_float32": ours_s / f32_s,
    }


def bench_chat(folder: Path, text: str, repeats: int) -> dict[str, Any]:
    """A short prompt (decoding dominates) and a long one (reading the prompt dominates)."""
    import torch

    from mergetui.chat.generate import GenerationSettings, generate_reply
    from mergetui.chat.loader import load_for_chat
    from mergetui.chat.prompt import conversation, format_prompt

    loaded = load_for_chat(folder, device="cpu")
    tokenizer = loaded.tokenizer
    long_text = tokenizer.decode(tokenizer(text)["input_ids"][:LONG_PROMPT_TOKENS])
    cases = {
        "short": conversation([], PROMPT),
        "long": conversation([], long_text + "\n\nWhat happened next?"),
    }
    settings = GenerationSettings(temperature=0, max_new_tokens=REPLY_TOKENS)
    plain = {
        "bf16": plain_load(folder, torch.bfloat16),
        "float32": plain_load(folder, torch.float32),
    }

    def generate(model: Any, ids: Any, tokens: int = REPLY_TOKENS) -> int:
        with torch.inference_mode():
            output = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return int(output.shape[1] - ids.shape[1])

    result: dict[str, Any] = {
        "mergetui_dtype": loaded.dtype,
        "mergetui_dtype_reason": loaded.dtype_reason,
    }
    for case, messages in cases.items():
        prompt = format_prompt(tokenizer, messages)
        ids = tokenizer(prompt.text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        # One short warm-up each (first-call set-up is not what a reply costs).
        generate_reply(loaded, messages, GenerationSettings(temperature=0, max_new_tokens=2))
        for model in plain.values():
            generate(model, ids, 2)
        contenders: dict[str, Callable[[], Any]] = {
            "ours": lambda messages=messages: generate_reply(loaded, messages, settings).tokens,
            **{name: partial(generate, model, ids) for name, model in plain.items()},
        }
        figures = alternating(f"chat-{case}", contenders, repeats)
        row: dict[str, Any] = {"prompt_tokens": int(ids.shape[1])}
        for name, (seconds, tokens) in figures.items():
            key = "mergetui" if name == "ours" else f"plain_{name}"
            row[f"{key}_s"] = seconds
            row[f"{key}_tokens"] = tokens
            row[f"{key}_s_per_token"] = seconds / max(1, tokens)
        faster = min(row["plain_bf16_s_per_token"], row["plain_float32_s_per_token"])
        row["ratio_vs_faster_plain"] = row["mergetui_s_per_token"] / faster
        row["ratio_vs_plain_float32"] = (
            row["mergetui_s_per_token"] / row["plain_float32_s_per_token"]
        )
        result[case] = row
    return result


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import torch
    import transformers

    from mergetui.chat.dtype import FAST_CPU_FLAGS, cpu_flags

    transformers.utils.logging.disable_progress_bar()

    WORK.mkdir(parents=True, exist_ok=True)
    folder = make_checkpoint(WORK / "chat-smollm-135m")
    text_path = make_text(folder, WORK / "chat-text.txt")
    fast = sorted(cpu_flags() & FAST_CPU_FLAGS["bfloat16"])
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores "
        f"(torch uses {torch.get_num_threads()} threads), bf16 CPU flags: {fast or 'none'}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"command: python benchmarks/bench_chat.py --repeats {args.repeats}")
    figures = {"eval": bench_eval(folder, text_path, args.repeats)}
    e = figures["eval"]
    print(
        f"eval ({TEXT_TOKENS} tokens, load + score): mergetui {e['mergetui_eval_s']:.2f} s "
        f"[{e['mergetui_row']}], plain transformers float32 {e['plain_float32_s']:.2f} s "
        f"(ppl {e['plain_float32_perplexity']:.2f}), bf16 {e['plain_bf16_s']:.2f} s "
        f"(ppl {e['plain_bf16_perplexity']:.2f}); ratio vs float32 {e['ratio_vs_float32']:.3f} "
        "(target <= 1)"
    )
    text = text_path.read_text(encoding="utf-8")
    figures["chat"] = chat = bench_chat(folder, text, args.repeats)
    print(f"chat: mergetui loads in {chat['mergetui_dtype']} ({chat['mergetui_dtype_reason']})")
    for case in ("short", "long"):
        c = chat[case]
        print(
            f"chat, {case} prompt ({c['prompt_tokens']} tokens), {REPLY_TOKENS}-token greedy reply: "
            f"mergetui {c['mergetui_s']:.2f} s / {c['mergetui_tokens']} tokens, plain bf16 "
            f"{c['plain_bf16_s']:.2f} s / {c['plain_bf16_tokens']}, plain float32 "
            f"{c['plain_float32_s']:.2f} s / {c['plain_float32_tokens']}; per-token ratio vs the "
            f"faster plain {c['ratio_vs_faster_plain']:.3f} (target <= 1), vs plain float32 "
            f"{c['ratio_vs_plain_float32']:.3f}"
        )
    for name, runs in RUNS.items():
        print(f"  {name}: " + ", ".join(f"{seconds:.2f}" for seconds in runs) + " s")
    if args.json:
        figures["runs"] = RUNS
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

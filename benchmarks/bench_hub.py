"""What reading a Hub model's headers costs against downloading it, on the tests' Hub stand-in.

    python benchmarks/bench_hub.py [--megabytes 256] [--shards 4]

Builds a sharded safetensors model of the given size in memory (F16 tensors shaped like a small
Llama), serves it from tests/hub_server.py on 127.0.0.1, and times, with the real huggingface_hub
client: `read_remote_checkpoint` (Range requests for the headers), and `download_repo` into a
temporary HF cache. Reports seconds and bytes transferred for each. Loopback only: the figures are
the client's own overhead, an upper bound on throughput, not a network measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def shard(names_shapes: list[tuple[str, list[int]]]) -> bytes:
    header: dict = {}
    offset = 0
    for name, shape in names_shapes:
        size = 2
        for d in shape:
            size *= d
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def build(megabytes: int, shards: int) -> dict[str, bytes]:
    hidden = 1024
    per_layer = [
        ("self_attn.q_proj.weight", [hidden, hidden]),
        ("self_attn.k_proj.weight", [hidden, hidden]),
        ("self_attn.v_proj.weight", [hidden, hidden]),
        ("self_attn.o_proj.weight", [hidden, hidden]),
        ("mlp.gate_proj.weight", [2 * hidden, hidden]),
        ("mlp.up_proj.weight", [2 * hidden, hidden]),
        ("mlp.down_proj.weight", [hidden, 2 * hidden]),
    ]
    layer_bytes = sum(2 * a * b for _, (a, b) in per_layer)
    layers = max(1, megabytes * 1_000_000 // layer_bytes)
    per_shard = -(-layers // shards)
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        tensors = []
        for layer in range(index * per_shard, min(layers, (index + 1) * per_shard)):
            for suffix, shape in per_layer:
                tensor = f"model.layers.{layer}.{suffix}"
                tensors.append((tensor, shape))
                weight_map[tensor] = name
        files[name] = shard(tensors)
    files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    files["config.json"] = json.dumps(
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers}
    ).encode()
    return files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()

    from hub_server import HubServer

    files = build(args.megabytes, args.shards)
    total = sum(len(v) for v in files.values())
    with tempfile.TemporaryDirectory() as tmp, HubServer() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        os.environ["HF_HUB_CACHE"] = str(Path(tmp) / "cache")
        os.environ.pop("HF_HUB_OFFLINE", None)
        hub.add_repo("bench/model", files=files)
        from mergetui.checkpoints.hub import download_repo, read_remote_checkpoint

        def served() -> int:
            # bytes the server was asked for: Range sizes, or whole files
            count = 0
            for r in hub.log("GET", "/resolve/"):
                wanted = r.headers.get("range")
                path = r.path.split("/resolve/", 1)[1].split("/", 1)[1]
                if wanted:
                    start, _, end = wanted.removeprefix("bytes=").partition("-")
                    count += int(end) - int(start) + 1
                else:
                    count += len(files[path])
            return count

        start = time.perf_counter()
        read_remote_checkpoint(
            "bench/model"
        )  # the first call also imports huggingface_hub and warms the stand-in
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        remote = read_remote_checkpoint("bench/model")
        headers_s = time.perf_counter() - start
        headers_bytes = served() // 2
        start = time.perf_counter()
        download_repo("bench/model")
        download_s = time.perf_counter() - start
        download_bytes = served() - 2 * headers_bytes
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"model: {len(remote.tensors)} tensors, {remote.num_layers} layers, {total / 1e6:.0f} MB in {args.shards} shards"
    )
    print(
        f"remote headers: {headers_s * 1000:.0f} ms ({first_s * 1000:.0f} ms for the first call: imports, stand-in warm-up), "
        f"{headers_bytes / 1e3:.0f} KB fetched"
    )
    print(
        f"download:       {download_s:.2f} s, {download_bytes / 1e6:.0f} MB ({download_bytes / 1e6 / download_s:.0f} MB/s)"
    )


if __name__ == "__main__":
    main()

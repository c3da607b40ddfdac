"""The engine's byte-level parts: the streaming shard writer and the pread tensor reader."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergetui.checkpoints.safetensors_io import read_header
from mergetui.errors import UserError
from mergetui.merge import writer as writer_module
from mergetui.merge.reader import TensorReader
from mergetui.merge.writer import ShardSetWriter, layout_output, parse_size


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(50, 8, generator=gen).to(torch.bfloat16),
        "layers.0.w": torch.randn(8, 8, generator=gen),
        "layers.0.norm": torch.randn(8, generator=gen).to(torch.float16),
        "layers.1.w": torch.randn(8, 8, generator=gen),
        "position_ids": torch.arange(7, dtype=torch.int64),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "head.weight": torch.randn(50, 8, generator=gen).to(torch.bfloat16),
    }


def _dtype_code(t: torch.Tensor) -> str:
    return {
        torch.float32: "F32",
        torch.bfloat16: "BF16",
        torch.float16: "F16",
        torch.int64: "I64",
        torch.bool: "BOOL",
    }[t.dtype]


def _write_all(folder: Path, tensors: dict[str, torch.Tensor], shard_size: int) -> list[str]:
    layout = layout_output(
        [(n, _dtype_code(t), tuple(t.shape)) for n, t in tensors.items()], shard_size
    )
    writer = ShardSetWriter(folder, layout)
    order = list(tensors)
    random.Random(1).shuffle(order)  # the writer must not care about order
    completed = []
    for name in order:
        done = writer.write(name, tensors[name].contiguous())
        if done is not None:
            completed.append(done.filename)
    writer.finish()
    assert sorted(completed) == sorted(layout.filenames)
    return layout.filenames


def test_single_shard_is_valid_safetensors(tmp_path: Path) -> None:
    tensors = _tensors()
    files = _write_all(tmp_path, tensors, 10**9)
    assert files == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(tensors)
        assert handle.metadata() == {"format": "pt"}
        for name, expected in tensors.items():
            got = handle.get_tensor(name)
            assert got.dtype == expected.dtype
            assert got.shape == expected.shape
            assert torch.equal(got, expected), name


def test_tensors_are_aligned_to_their_element_size(tmp_path: Path) -> None:
    _write_all(tmp_path, _tensors(), 10**9)
    infos, _ = read_header(tmp_path / "model.safetensors")
    for info in infos.values():
        size = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "BOOL": 1}[info.dtype]
        if info.nbytes:  # an empty tensor has no bytes to align
            assert info.offset % size == 0, info.name


def test_sharded_output_matches_transformers_naming(tmp_path: Path) -> None:
    tensors = _tensors()
    files = _write_all(tmp_path, tensors, 600)
    assert len(files) > 2
    assert files == [
        f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)
    ]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == total
    for name, file in index["weight_map"].items():
        with safe_open(str(tmp_path / file), "pt") as handle:
            assert torch.equal(handle.get_tensor(name), tensors[name])


def test_shards_fill_in_plan_order_and_respect_the_limit() -> None:
    specs = [(f"t{i}", "F32", (100,)) for i in range(10)]  # 400 bytes each
    layout = layout_output(specs, 1000)
    assert [[s.name for s in shard.slots] for shard in layout.shards] == [
        ["t0", "t1"],
        ["t2", "t3"],
        ["t4", "t5"],
        ["t6", "t7"],
        ["t8", "t9"],
    ]
    # A tensor larger than the limit gets a shard of its own.
    big = layout_output([("a", "F32", (10,)), ("big", "F32", (1000,)), ("c", "F32", (10,))], 1000)
    assert [[s.name for s in shard.slots] for shard in big.shards] == [["a"], ["big"], ["c"]]


def test_full_disk_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = _tensors()
    layout = layout_output([(n, _dtype_code(t), tuple(t.shape)) for n, t in tensors.items()], 10**9)
    writer = ShardSetWriter(tmp_path, layout)
    real = writer_module.write_at
    calls = {"n": 0}

    def failing(fd: int, data: memoryview, offset: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(writer_module, "write_at", failing)
    with pytest.raises(UserError) as info:
        for name, tensor in tensors.items():
            writer.write(name, tensor.contiguous())
    writer.close()
    assert "disk is full" in info.value.message
    assert "model.safetensors" in (info.value.where or "")


def test_parse_size() -> None:
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1e9") == 1_000_000_000
    assert parse_size(1234) == 1234
    with pytest.raises(UserError):
        parse_size("lots")
    with pytest.raises(UserError):
        parse_size("0")


def test_reader_returns_exact_tensors(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    infos, _ = read_header(path)
    with TensorReader() as reader:
        for name, info in infos.items():
            got = reader.read(info.file, info.offset, info.nbytes, info.dtype, info.shape, name)
            assert got.dtype == tensors[name].dtype
            assert torch.equal(got, tensors[name]), name


def test_reader_names_a_truncated_file(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    infos, _ = read_header(path)
    last = max(infos.values(), key=lambda i: i.offset)
    with open(path, "r+b") as handle:
        handle.truncate(last.offset + 2)
    with TensorReader() as reader, pytest.raises(UserError) as info:
        reader.read(last.file, last.offset, last.nbytes, last.dtype, last.shape, last.name)
    assert "truncated" in info.value.message
    assert last.name in info.value.message
    assert info.value.where == str(path)

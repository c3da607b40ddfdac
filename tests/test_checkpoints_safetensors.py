"""Hand-parsed safetensors headers agree with the safetensors library and catch broken files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergetui.checkpoints.safetensors_io import TensorInfo, read_header, read_header_bytes
from mergetui.dtypes import dtype_from_torch, dtype_nbytes, torch_dtype
from mergetui.errors import UserError


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _write_raw(path: Path, header: dict, data: bytes) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_header_matches_safetensors_library_and_offsets_point_at_data(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "model.embed_tokens.weight": (torch.randn(7, 5, generator=generator) * 100).to(dtype),
        "model.layers.0.mlp.up_proj.weight": (torch.randn(3, 4, generator=generator) * 100).to(
            dtype
        ),
        "scalar": torch.tensor(3).to(dtype),
        "empty": torch.zeros(0, 4, dtype=dtype),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})

    infos, metadata = read_header(path)
    assert metadata == {"format": "pt", "note": "x"}
    assert set(infos) == set(tensors)
    raw = path.read_bytes()
    with safe_open(str(path), "pt") as handle:
        for name, info in infos.items():
            loaded = handle.get_tensor(name)
            assert info.name == name and info.file == path
            assert info.shape == tuple(loaded.shape)
            assert torch_dtype(info.dtype) == loaded.dtype == dtype
            assert info.numel == loaded.numel()
            assert info.nbytes == loaded.numel() * loaded.element_size()
            assert raw[info.offset : info.offset + info.nbytes] == _raw_bytes(loaded)
    # File order: offsets strictly increase.
    offsets = [info.offset for info in infos.values()]
    assert offsets == sorted(offsets)


def test_real_checkpoint_header(llama_family: dict[str, Path]) -> None:
    path = llama_family["base"] / "model.safetensors"
    infos, _ = read_header(path)
    assert infos["model.embed_tokens.weight"].shape == (384, 64)
    assert infos["model.layers.3.mlp.down_proj.weight"].dtype == "F32"
    last = max(infos.values(), key=lambda info: info.offset)
    assert last.offset + last.nbytes == path.stat().st_size


def test_read_header_bytes_parses_a_prefix_for_remote_files(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4)}, str(path))
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    infos, _ = read_header_bytes(
        raw[: 8 + header_len], "remote/model.safetensors", file_size=len(raw)
    )
    assert infos == read_header_bytes(raw[: 8 + header_len + 5], "remote/model.safetensors")[0]
    remote = Path("remote/model.safetensors")
    assert infos["a"] == TensorInfo("a", (2, 3), "F32", remote, 8 + header_len, 24)
    with pytest.raises(UserError, match="only 3 were given"):
        read_header_bytes(raw[:11], "remote/model.safetensors")
    with pytest.raises(UserError, match="truncated"):
        read_header_bytes(raw[: 8 + header_len], "remote/model.safetensors", file_size=len(raw) - 1)


def test_truncated_file_names_file_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"first": torch.ones(10), "second.weight": torch.ones(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError) as caught:
        read_header(path)
    assert caught.value.where == str(path)
    assert "truncated" in caught.value.message and "second.weight" in caught.value.message
    assert caught.value.fix


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 5000) + b'{"a": 1}')
    with pytest.raises(UserError, match="runs past the end of the file") as caught:
        read_header(path)
    assert caught.value.where == str(path)


def test_tiny_and_absurd_files(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(UserError, match="only 3 bytes"):
        read_header(tiny)
    # A text file read as a header length gives an absurd number.
    text = tmp_path / "text.safetensors"
    text.write_text("this is not a safetensors file at all")
    with pytest.raises(UserError, match="not a safetensors file"):
        read_header(text)
    with pytest.raises(UserError, match="file not found"):
        read_header(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="is a folder"):
        read_header(tmp_path)


def test_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    body = b'{"a": {"dtype": "F32", '
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 16)
    with pytest.raises(UserError, match="not valid JSON"):
        read_header(path)
    array = _write_raw(tmp_path / "array.safetensors", [], b"")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="not a JSON object"):
        read_header(array)


def test_nbytes_must_match_shape_and_dtype(tmp_path: Path) -> None:
    header = {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 24]}}
    path = _write_raw(tmp_path / "m.safetensors", header, b"\0" * 24)
    with pytest.raises(UserError) as caught:
        read_header(path)
    assert "w spans 24 bytes" in caught.value.message and "needs 12" in caught.value.message
    assert caught.value.where == str(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "invalid shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "invalid data_offsets"),
        ({"dtype": "F32", "shape": [1]}, "invalid data_offsets"),
        ("nonsense", "not an object"),
    ],
)
def test_malformed_entries_name_the_tensor(tmp_path: Path, entry: object, message: str) -> None:
    path = _write_raw(tmp_path / "m.safetensors", {"layer.w": entry}, b"\0" * 4)
    with pytest.raises(UserError, match=message) as caught:
        read_header(path)
    assert "layer.w" in caught.value.message


def test_overlapping_tensors_are_corrupt(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = _write_raw(tmp_path / "m.safetensors", header, b"\0" * 12)
    with pytest.raises(UserError, match="b overlaps a"):
        read_header(path)


def test_dtype_helpers() -> None:
    assert dtype_nbytes("BF16", 10) == 20
    assert dtype_nbytes("F4", 3) == 2
    assert dtype_from_torch(torch.bfloat16) == "BF16"
    assert dtype_from_torch(torch.float8_e4m3fn) == "F8_E4M3"
    assert torch_dtype("F8_E4M3") == torch.float8_e4m3fn
    with pytest.raises(ValueError):
        dtype_from_torch(torch.complex64)

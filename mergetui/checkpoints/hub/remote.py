"""A Hub model read from its headers alone: config, tensor map and parameter count, no weights.

Each safetensors file's header is read with two HTTP Range requests (its length, then the header),
under HF_HUB_DOWNLOAD_TIMEOUT and `hub.net`'s retries; the shard index is checked as a local one is
(`files.index_shards`: no name outside the repo). huggingface_hub's `get_safetensors_metadata` does
the same reads but cannot be bounded the same way, fetches the index through `hf_hub_download`, and
skips those checks: docs/checkpoints.md says why mergetui keeps its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergetui.checkpoints.files import index_shards
from mergetui.checkpoints.hub.client import check_online, file_url, request_headers
from mergetui.checkpoints.hub.errors import hub_error
from mergetui.checkpoints.hub.net import DOWNLOAD_TIMEOUT_VAR, download_timeout, with_retries
from mergetui.checkpoints.hub.search import model_info
from mergetui.checkpoints.inspect import TOKENIZER_FILES, Checkpoint, has_chat_template
from mergetui.checkpoints.safetensors_io import TensorInfo
from mergetui.checkpoints.weights import NOT_MODEL_WEIGHTS, SAFETENSORS_INDEX
from mergetui.errors import UserError


@dataclass
class RemoteCheckpoint(Checkpoint):
    """A checkpoint read from the Hub: config and safetensors headers, no weights downloaded."""

    repo_id: str = ""
    revision: str | None = None
    file_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def size_on_disk(self) -> int:
        """Bytes of the weight files on the Hub (what a download would take)."""
        return sum(self.file_sizes.get(str(f), 0) for f in self.weight_files)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.update(
            path=None,
            repo_id=self.repo_id,
            revision=self.revision,
            weight_files=[str(f) for f in self.weight_files],
            remote=True,
        )
        for name, item in data["tensors"].items():
            item["file"] = str(self.tensors[name].file)
        return data


def fetch_bytes(
    repo_id: str,
    filename: str,
    revision: str | None = None,
    *,
    start: int = 0,
    end: int | None = None,
) -> bytes:
    """Bytes [start, end] (inclusive) of a remote file, by an HTTP Range request; the whole file
    when `end` is None and `start` is 0. Used for small files and safetensors headers.
    Each try gives up after HF_HUB_DOWNLOAD_TIMEOUT seconds without a byte; a timeout or a
    dropped connection is tried again (`hub_net.with_retries`)."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    check_online()
    seconds = download_timeout()
    extra = {}
    if start or end is not None:
        extra["Range"] = f"bytes={start}-{'' if end is None else end}"
    want = None if end is None else end - start + 1

    def read() -> bytes:
        with get_session().stream(
            "GET",
            file_url(repo_id, filename, revision),
            headers=request_headers(extra),
            follow_redirects=True,
            timeout=seconds,
        ) as response:
            if response.status_code >= 400:
                response.read()
                hf_raise_for_status(response)
            ignored_range = bool(extra) and response.status_code == 200
            chunks: list[bytes] = []
            got = 0
            skip = start if ignored_range else 0
            for chunk in response.iter_bytes():
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                chunks.append(chunk)
                got += len(chunk)
                if want is not None and got >= want:
                    break
        return b"".join(chunks)

    try:
        data = with_retries(read)
    except Exception as exc:
        raise hub_error(
            exc, repo_id, file=filename, timeout_variable=DOWNLOAD_TIMEOUT_VAR
        ) from None
    return data if want is None else data[:want]


def read_remote_header(
    repo_id: str, filename: str, revision: str | None = None, file_size: int | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors of one remote safetensors file: 8 bytes for the length, then the header."""
    import struct

    from mergetui.checkpoints.safetensors_io import MAX_HEADER_BYTES, read_header_bytes

    prefix = fetch_bytes(repo_id, filename, revision, start=0, end=7)
    if len(prefix) < 8:
        raise UserError(
            f"not a safetensors file: only {len(prefix)} bytes long", where=f"{repo_id}/{filename}"
        )
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise UserError(
            f"not a safetensors file: its header length ({length} bytes) is implausible",
            where=f"{repo_id}/{filename}",
        )
    header = fetch_bytes(repo_id, filename, revision, start=8, end=8 + length - 1)
    return read_header_bytes(prefix + header, filename, file_size=file_size)


def read_remote_checkpoint(repo_id: str, revision: str | None = None) -> RemoteCheckpoint:
    """A Hub model's config, tensor map and parameter count from its headers alone."""
    info = model_info(repo_id, revision)
    commit = info.sha or revision
    sizes = {f.path: f.size or 0 for f in info.files or []}
    names = set(sizes)
    warnings: list[str] = []
    config = _remote_config(repo_id, commit, names, warnings)
    shards, weight_map = _remote_shards(repo_id, commit, names)
    raw = _remote_tensors(repo_id, commit, shards, sizes)
    if weight_map:  # the index's order, as a local open does
        raw = {
            **{name: raw[name] for name in weight_map if name in raw},
            **{name: tensor for name, tensor in raw.items() if name not in weight_map},
        }
    return RemoteCheckpoint.from_tensors(
        raw,
        path=Path(repo_id),
        config=config,
        weight_files=[Path(s) for s in shards],
        files=sorted(names),
        format="safetensors",
        has_tokenizer=any(n in names for n in TOKENIZER_FILES),
        has_chat_template=has_chat_template(names, lambda name: fetch_bytes(repo_id, name, commit)),
        warnings=warnings,
        repo_id=repo_id,
        revision=commit,
        file_sizes=sizes,
    )


def _remote_config(
    repo_id: str, commit: str | None, names: set[str], warnings: list[str]
) -> dict[str, Any]:
    """config.json from the Hub ({} with a warning when it is missing or not JSON)."""
    if "config.json" not in names:
        warnings.append("no config.json: architecture and layer count come from tensor names")
        return {}
    try:
        loaded = json.loads(fetch_bytes(repo_id, "config.json", commit))
    except (ValueError, UnicodeDecodeError):
        warnings.append("config.json on the Hub is not valid JSON")
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _remote_shards(
    repo_id: str, commit: str | None, names: set[str]
) -> tuple[list[str], dict[str, str]]:
    """The repo's weight files (from its shard index when it has one) and the index's map."""
    weight_map: dict[str, str] = {}
    if SAFETENSORS_INDEX in names:
        try:
            index = json.loads(fetch_bytes(repo_id, SAFETENSORS_INDEX, commit))
            weight_map = dict(index["weight_map"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(
                f"broken shard index {SAFETENSORS_INDEX} on the Hub", where=repo_id
            ) from None
        # A name such as ../other/model.safetensors would be fetched from outside this repo.
        shards = index_shards(weight_map, f"{SAFETENSORS_INDEX} on the Hub", repo_id)
    else:
        shards = sorted(
            n
            for n in names
            if n.endswith(".safetensors") and "/" not in n and n not in NOT_MODEL_WEIGHTS
        )
    if not shards:
        bins = sorted(n for n in names if n.endswith(".bin") and n.startswith("pytorch_model"))
        raise UserError(
            "no safetensors weights in this repo"
            + (" (only pytorch_model.bin, which cannot be read remotely)" if bins else ""),
            where=repo_id,
            fix="pick a repo with .safetensors files, or download it and use --allow-bin",
        )
    return shards, weight_map


def _remote_tensors(
    repo_id: str, commit: str | None, shards: list[str], sizes: dict[str, int]
) -> dict[str, TensorInfo]:
    """Every shard's tensors, from its header; a tensor in two shards is an error."""
    raw: dict[str, TensorInfo] = {}
    for shard in shards:
        tensors, _meta = read_remote_header(repo_id, shard, commit, sizes.get(shard))
        for name, tensor in tensors.items():
            if name in raw:
                raise UserError(
                    f"tensor {name} appears in both {raw[name].file} and {shard}", where=repo_id
                )
            raw[name] = tensor
    return raw

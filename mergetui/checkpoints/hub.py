"""The Hugging Face Hub: search, model info, remote safetensors headers, download and upload.

Everything goes through the real `huggingface_hub` client (imported inside the functions, so
importing this module stays light). Its settings are read here at call time rather than trusted
from `huggingface_hub.constants`, which freezes some of them when the library is first imported:

- `HF_ENDPOINT` (default https://huggingface.co) is passed explicitly to every call;
- `HF_TOKEN` (or a token saved by `hf auth login`) is sent, but never shown: every message that
  leaves this module goes through `redact`;
- `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) makes every remote call raise `HubOffline` before
  any connection is tried, so callers can say "offline" and carry on with local sources;
- `HF_HUB_ETAG_TIMEOUT` / `HF_HUB_DOWNLOAD_TIMEOUT` bound every wait (`hub_net`): a server that
  never answers ends in a `HubTimeout` after a few tries, never in a hang.

Failures a person can act on (401, gated, 404, rate limited, no network, a download cut short)
become `UserError`s that say what to do. Downloads land in the Hugging Face cache (the layout
`huggingface_hub` and transformers use), one file at a time: each file is written to a temporary
name and moved into place when complete, so a cancel or a broken connection never leaves a partial
file. A snapshot is marked incomplete until its last file is in, and `locate.find_local` ignores a
marked snapshot, so a cancelled download is never mistaken for a model; pulling again resumes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergetui.checkpoints.hub_net import (
    DOWNLOAD_TIMEOUT_VAR,
    ETAG_TIMEOUT_VAR,
    HubOffline,
    download_timeout,
    fetch_file,
    is_timeout,
    link_into_snapshot,
    metadata_timeout,
    timeout_error,
    with_retries,
)
from mergetui.checkpoints.hub_net import HubTimeout as HubTimeout  # re-exported
from mergetui.checkpoints.inspect import Checkpoint
from mergetui.checkpoints.locate import INCOMPLETE_MARKER
from mergetui.errors import CancelledError, UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
# What a merge needs: weights, configs and index, tokenizer files and chat templates.
DEFAULT_INCLUDE: tuple[str, ...] = (
    "*.safetensors",
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    "*.jinja",
)
SORTS: dict[str, str] = {
    # what mergetui calls it -> what the Hub's /api/models calls it
    "downloads": "downloads",
    "likes": "likes",
    "trending": "trendingScore",
    "created": "createdAt",
}
TAG_FILTERS = ("text-generation", "merge")
# What a search asks the Hub to include per result (parameter counts come with "safetensors").
SEARCH_EXPAND = (
    "downloads",
    "likes",
    "trendingScore",
    "createdAt",
    "lastModified",
    "tags",
    "pipeline_tag",
    "library_name",
    "gated",
    "private",
    "safetensors",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

# -- settings, read at call time --------------------------------------------------------------


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1/true/yes/on."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if (os.environ.get(variable) or "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_token() -> str | None:
    """HF_TOKEN, else a token saved by `hf auth login`; None when there is none."""
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (os.environ.get(variable) or "").strip()
        if value:
            return value
    try:
        from huggingface_hub import get_token

        return get_token() or None
    except Exception:  # a broken token file is the same as no token
        return None


def offline_reason() -> str | None:
    """Why the Hub is off (for a status line), or None when it may be used."""
    if is_offline():
        return "offline mode (HF_HUB_OFFLINE=1): the Hub is not contacted; local folders and the cache still work"
    return None


_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{6,}")
_BEARER_RE = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


def redact(text: str, token: str | None = None) -> str:
    """`text` with the Hub token (and anything shaped like one) blanked out."""
    secret = token if token is not None else hub_token()
    if secret:
        text = text.replace(secret, "hf_***")
    text = _BEARER_RE.sub(r"\1***", text)
    return _TOKEN_RE.sub("hf_***", text)


def check_online() -> None:
    """Raise `HubOffline` in offline mode, and a `UserError` for a timeout setting that cannot be
    used (before huggingface_hub is imported: it would fail on it with a traceback)."""
    if is_offline():
        raise HubOffline(
            "the Hub is not available: offline mode is on (HF_HUB_OFFLINE=1)",
            fix="unset HF_HUB_OFFLINE to use the Hub; local folders and the HF cache still work",
        )
    metadata_timeout()
    download_timeout()


def _api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint(), token=hub_token() or False)


# -- errors --------------------------------------------------------------------------------------


def hub_error(
    exc: BaseException,
    repo_id: str | None = None,
    action: str = "reach",
    file: str | None = None,
    timeout_variable: str = ETAG_TIMEOUT_VAR,
) -> UserError:
    """A `UserError` that says what went wrong with the Hub and what to do about it.
    `timeout_variable` is the setting that bounded the request, named when it timed out."""
    if isinstance(exc, UserError):
        return exc
    from huggingface_hub import errors as hf_errors

    endpoint = hub_endpoint()
    where = f"{repo_id}/{file}" if repo_id and file else repo_id
    if is_timeout(exc):
        return timeout_error(exc, timeout_variable, endpoint, where)
    page = f"{endpoint}/{repo_id}" if repo_id else endpoint
    has_token = bool(hub_token())
    status = getattr(getattr(exc, "response", None), "status_code", None)

    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return HubOffline(
            "the Hub is not available: offline mode is on (HF_HUB_OFFLINE=1)",
            where=where,
            fix="unset HF_HUB_OFFLINE to use the Hub; local folders and the HF cache still work",
        )
    if isinstance(exc, hf_errors.GatedRepoError):
        return UserError(
            "this model is gated: its files are only for accounts that accepted its conditions",
            where=where,
            fix=(
                f"the token in HF_TOKEN has no access yet: request it at {page}"
                if has_token
                else f"request access at {page}, then export HF_TOKEN=<a token of that account>"
            ),
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return UserError(
            "no such revision (branch, tag or commit) in this repo",
            where=where,
            fix=f"check the revision; the branches are listed at {page}/tree/main",
        )
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
        return UserError(
            "the file is not in this repo", where=where, fix=f"see the repo's files at {page}"
        )
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        if status == 401 and not has_token:
            return UserError(
                "the Hub has no public model with this id (it may be private)",
                where=where,
                fix="check the id (org/name; `mergetui hub search NAME` finds it); for a "
                "private repo export HF_TOKEN=<a token with read access>",
            )
        return UserError(
            "no model with this id on the Hub"
            + (", or the token in HF_TOKEN cannot see it" if has_token else ""),
            where=where,
            fix="check the id (org/name); `mergetui hub search NAME` finds it",
        )
    if isinstance(exc, hf_errors.HfHubHTTPError) or status is not None:
        if status == 429:
            return UserError(
                "the Hub is rate-limiting requests (429 Too Many Requests)",
                where=where,
                fix="wait a minute and try again"
                + ("" if has_token else "; with HF_TOKEN set the limits are higher"),
            )
        if status == 401:
            return UserError(
                "the Hub refused the credentials (401)",
                where=where,
                fix=f"export HF_TOKEN=<a valid token> (create one at {endpoint}/settings/tokens)",
            )
        if status == 403:
            return UserError(
                f"the Hub refused to {action} this repo (403 Forbidden)",
                where=where,
                fix="use a token with write access (a 'write' token from "
                f"{endpoint}/settings/tokens) in HF_TOKEN",
            )
        if status == 404:
            return UserError(
                "not found on the Hub (404)", where=where, fix="check the id and the revision"
            )
        if status is not None and status >= 500:
            return UserError(
                f"the Hub had a problem ({status}); it is not you",
                where=where,
                fix="try again in a few minutes",
            )
        first = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
        return UserError(f"the Hub answered: {first}", where=where)
    if isinstance(exc, hf_errors.LocalEntryNotFoundError) or _is_connection_error(exc):
        return HubOffline(
            f"cannot reach the Hub at {endpoint}",
            where=where,
            fix="check the network connection (or HF_ENDPOINT); set HF_HUB_OFFLINE=1 to work "
            "offline with local folders and the cache",
        )
    text = redact(str(exc))
    if "Consistency check failed" in text or isinstance(exc, EOFError):
        return UserError(
            "the download broke off before the file was complete",
            where=where,
            fix="run the download again: finished files are kept, the broken one is fetched anew",
        )
    first = text.splitlines()[0] if text else type(exc).__name__
    return UserError(f"Hub request failed: {first}", where=where)


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import httpx2 as httpx  # the HTTP library huggingface_hub 1.x+ uses
    except ImportError:  # pragma: no cover - older stacks
        try:
            import httpx
        except ImportError:
            httpx = None
    if httpx is not None and isinstance(exc, (httpx.TransportError, httpx.TimeoutException)):
        return not isinstance(exc, getattr(httpx, "ProtocolError", ()))
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def _protocol_error(exc: BaseException) -> bool:
    """The server closed the connection mid-body (a broken download)."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx
    return isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError))


# -- search and info -----------------------------------------------------------------------------


@dataclass
class HubFile:
    path: str
    size: int | None = None
    lfs: bool = False
    etag: str | None = None


@dataclass
class HubModel:
    """A model repo as the Hub describes it (search gives the first half, info the rest)."""

    repo_id: str
    downloads: int | None = None
    likes: int | None = None
    trending: float | None = None
    created_at: str | None = None
    last_modified: str | None = None
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = None
    library: str | None = None
    gated: bool | str = False
    private: bool = False
    license: str | None = None
    sha: str | None = None
    architecture: str | None = None
    model_type: str | None = None
    parameters: dict[str, int] | None = None  # per dtype, from the Hub's safetensors summary
    files: list[HubFile] | None = None

    @property
    def total_parameters(self) -> int | None:
        return sum(self.parameters.values()) if self.parameters else None

    @property
    def dtype(self) -> str | None:
        if not self.parameters:
            return None
        return max(self.parameters.items(), key=lambda item: item[1])[0]

    @property
    def size(self) -> int | None:
        if not self.files or any(f.size is None for f in self.files):
            return None
        return sum(f.size or 0 for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "downloads": self.downloads,
            "likes": self.likes,
            "trending": self.trending,
            "created_at": self.created_at,
            "last_modified": self.last_modified,
            "tags": self.tags,
            "pipeline_tag": self.pipeline_tag,
            "library": self.library,
            "gated": self.gated,
            "private": self.private,
            "license": self.license,
            "sha": self.sha,
            "architecture": self.architecture,
            "model_type": self.model_type,
            "parameters": self.parameters,
            "total_parameters": self.total_parameters,
            "size": self.size,
            "files": None
            if self.files is None
            else [{"path": f.path, "size": f.size, "lfs": f.lfs} for f in self.files],
        }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _from_info(info: Any) -> HubModel:
    card = getattr(info, "card_data", None)
    license_ = None
    if card is not None:
        license_ = getattr(card, "license", None) or (
            card.get("license") if isinstance(card, dict) else None
        )
    tags = list(getattr(info, "tags", None) or [])
    if license_ is None:
        license_ = next((t.split(":", 1)[1] for t in tags if t.startswith("license:")), None)
    config = getattr(info, "config", None) or {}
    architectures = config.get("architectures") if isinstance(config, dict) else None
    safetensors = getattr(info, "safetensors", None)
    files = None
    if getattr(info, "siblings", None) is not None:
        files = []
        for sibling in info.siblings:
            lfs = getattr(sibling, "lfs", None)
            size = sibling.size if sibling.size is not None else getattr(lfs, "size", None)
            etag = getattr(lfs, "sha256", None) if lfs else getattr(sibling, "blob_id", None)
            files.append(HubFile(sibling.rfilename, size, lfs is not None, etag))
    return HubModel(
        repo_id=info.id,
        downloads=getattr(info, "downloads", None),
        likes=getattr(info, "likes", None),
        trending=getattr(info, "trending_score", None),
        created_at=_iso(getattr(info, "created_at", None)),
        last_modified=_iso(getattr(info, "last_modified", None)),
        tags=tags,
        pipeline_tag=getattr(info, "pipeline_tag", None),
        library=getattr(info, "library_name", None),
        gated=getattr(info, "gated", None) or False,
        private=bool(getattr(info, "private", False)),
        license=str(license_) if license_ else None,
        sha=getattr(info, "sha", None),
        architecture=architectures[0] if architectures else None,
        model_type=config.get("model_type") if isinstance(config, dict) else None,
        parameters=dict(safetensors.parameters) if safetensors is not None else None,
        files=files,
    )


def search_models(
    query: str = "",
    *,
    sort: str = "downloads",
    limit: int = 50,
    filters: Sequence[str] = (),
) -> list[HubModel]:
    """Models whose id contains `query`, most downloaded (liked, trending, newest) first."""
    if sort not in SORTS:
        raise UserError(f"unknown sort {sort!r}", fix=f"use one of {', '.join(SORTS)}")
    if limit < 1:
        raise UserError("the limit must be at least 1", where=str(limit))
    check_online()
    timeout = metadata_timeout()
    # One request, as HfApi.list_models would send it, but with our bounded retries rather than
    # its loop (that backs off for about 23 s when the network is down).
    from huggingface_hub.hf_api import ModelInfo
    from huggingface_hub.utils import get_session, hf_raise_for_status

    params: dict[str, Any] = {"sort": SORTS[sort], "limit": limit, "expand": list(SEARCH_EXPAND)}
    if query:
        params["search"] = query
    if filters:
        params["filter"] = list(filters)

    def ask() -> Any:
        response = get_session().get(
            f"{hub_endpoint()}/api/models", params=params, headers=_headers(), timeout=timeout
        )
        hf_raise_for_status(response)
        return response.json()

    try:
        items = with_retries(ask)
        models = []
        for item in items[:limit]:
            item.setdefault("siblings", None)
            models.append(_from_info(ModelInfo(**item)))
        return models
    except Exception as exc:
        raise hub_error(exc, action="search") from None


def model_info(repo_id: str, revision: str | None = None) -> HubModel:
    """Everything the Hub says about one model, with the size of every file."""
    check_online()
    timeout = metadata_timeout()
    api = _api()
    try:
        info = with_retries(
            lambda: api.model_info(repo_id, revision=revision, files_metadata=True, timeout=timeout)
        )
    except Exception as exc:
        raise hub_error(exc, repo_id) from None
    return _from_info(info)


# -- remote headers ------------------------------------------------------------------------------


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


def _url(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, revision=revision or "main", endpoint=hub_endpoint())


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=hub_token() or False, library_name="mergetui")
    headers.update(extra or {})
    return headers


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
            _url(repo_id, filename, revision),
            headers=_headers(extra),
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
    from mergetui.checkpoints.files import index_shards
    from mergetui.checkpoints.inspect import SAFETENSORS_INDEX, _layer_map

    info = model_info(repo_id, revision)
    commit = info.sha or revision
    sizes = {f.path: f.size or 0 for f in info.files or []}
    names = set(sizes)
    warnings: list[str] = []
    config: dict[str, Any] = {}
    if "config.json" in names:
        try:
            loaded = json.loads(fetch_bytes(repo_id, "config.json", commit))
            config = loaded if isinstance(loaded, dict) else {}
        except (ValueError, UnicodeDecodeError):
            warnings.append("config.json on the Hub is not valid JSON")
    else:
        warnings.append("no config.json: architecture and layer count come from tensor names")

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
            if n.endswith(".safetensors") and "/" not in n and n != "adapter_model.safetensors"
        )
    if not shards:
        bins = sorted(n for n in names if n.endswith(".bin") and n.startswith("pytorch_model"))
        raise UserError(
            "no safetensors weights in this repo"
            + (" (only pytorch_model.bin, which cannot be read remotely)" if bins else ""),
            where=repo_id,
            fix="pick a repo with .safetensors files, or download it and use --allow-bin",
        )
    raw: dict[str, Any] = {}
    for shard in shards:
        tensors, _meta = read_remote_header(repo_id, shard, commit, sizes.get(shard))
        for name, tensor in tensors.items():
            if name in raw:
                raise UserError(
                    f"tensor {name} appears in both {raw[name].file} and {shard}", where=repo_id
                )
            raw[name] = tensor
    if weight_map:  # the index's order, as a local open does
        raw = {
            **{name: raw[name] for name in weight_map if name in raw},
            **{name: info for name, info in raw.items() if name not in weight_map},
        }
    tensors_map, layers, pre_layer, post_layer = _layer_map(raw)
    has_template = "chat_template.jinja" in names or "chat_template.json" in names
    if not has_template and "tokenizer_config.json" in names:
        try:
            tokenizer_config = json.loads(fetch_bytes(repo_id, "tokenizer_config.json", commit))
            has_template = isinstance(tokenizer_config, dict) and bool(
                tokenizer_config.get("chat_template")
            )
        except (ValueError, UnicodeDecodeError, UserError):
            pass
    return RemoteCheckpoint(
        path=Path(repo_id),
        config=config,
        tensors=tensors_map,
        weight_files=[Path(s) for s in shards],
        files=sorted(names),
        format="safetensors",
        layers=layers,
        pre_layer=pre_layer,
        post_layer=post_layer,
        has_tokenizer=any(n in names for n in _TOKENIZER_FILES),
        has_chat_template=has_template,
        warnings=warnings,
        repo_id=repo_id,
        revision=commit,
        file_sizes=sizes,
    )


# -- download ------------------------------------------------------------------------------------


@dataclass
class DownloadProgress:
    """Where a download stands: `file` is the one being fetched (or the last one, when done)."""

    repo_id: str
    file: str
    files_done: int
    file_count: int
    bytes_done: int
    bytes_total: int
    done: bool = False


ProgressCallback = Callable[[DownloadProgress], None]


def safe_repo_path(name: str) -> str:
    """A repo file name that stays inside the download folder, or a `UserError`."""
    bad = (
        not name
        or name.startswith(("/", "\\", "~"))
        or "\\" in name
        or "\0" in name
        or re.match(r"^[A-Za-z]:", name) is not None
        or any(part in ("", ".", "..") for part in name.split("/"))
    )
    if bad:
        raise UserError(
            f"refused the repo file name {name!r}: it would be written outside the model's folder",
            fix="this repo is malformed or hostile; do not download it",
        )
    return name


def select_files(
    files: Iterable[HubFile], include: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> list[HubFile]:
    """Files matching any of `include` (default: weights, configs, tokenizer) and none of `exclude`.
    Patterns match the whole path or the file name. Order: small metadata first, weights last, so
    an interrupted download has its index (naming every shard) before any shard."""
    patterns = list(include) if include else list(DEFAULT_INCLUDE)

    def matches(path: str, wanted: Sequence[str]) -> bool:
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in wanted)

    chosen = [f for f in files if matches(f.path, patterns) and not matches(f.path, exclude)]
    return sorted(chosen, key=lambda f: (f.path.endswith(".safetensors") or f.lfs, f.path))


def download_repo(
    repo_id: str,
    *,
    revision: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    cache_dir: Path | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Download a model's files into the HF cache; returns its snapshot folder.

    Files already there are skipped, so a second pull resumes. `cancel` is checked between chunks;
    a cancelled download raises `CancelledError` and leaves no partial file. Every request is
    bounded by HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT and tried again when that is safe.
    """
    from mergetui.checkpoints.locate import cached_repo_dir, hub_cache_dir

    check_online()
    info = model_info(repo_id, revision)
    if not info.sha:
        raise UserError("the Hub gave no commit for this revision", where=repo_id)
    for item in info.files or []:
        safe_repo_path(item.path)
    chosen = select_files(info.files or [], include, exclude)
    if not chosen:
        raise UserError(
            "no file in the repo matches what was asked for",
            where=repo_id,
            fix="check --include (default: "
            + ", ".join(DEFAULT_INCLUDE)
            + "); the repo's files are listed by `mergetui hub info`",
        )
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    repo_dir = cached_repo_dir(repo_id, cache)
    snapshot = repo_dir / "snapshots" / info.sha
    marker = repo_dir / f"{INCOMPLETE_MARKER}-{info.sha}"
    total = sum(f.size or 0 for f in chosen)
    state = {"bytes": 0, "files": 0, "file": chosen[0].path}

    def report(done: bool = False) -> None:
        if on_progress is not None:
            on_progress(
                DownloadProgress(
                    repo_id, state["file"], state["files"], len(chosen), state["bytes"], total, done
                )
            )

    def on_bytes(count: int) -> None:
        state["bytes"] += count
        report()

    missing = []
    for item in chosen:
        target = snapshot / item.path
        if target.is_file() and (item.size is None or target.stat().st_size == item.size):
            state["bytes"] += item.size or target.stat().st_size
            state["files"] += 1
        else:
            missing.append(item)
    if missing:
        repo_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"mergetui download of {repo_id} at {info.sha} in progress\n")
    report()
    for item in missing:
        if cancel is not None and cancel.is_set():
            raise CancelledError("download cancelled")
        state["file"] = item.path
        before = state["bytes"]
        report()
        _fetch_into_cache(repo_id, item, info.sha, repo_dir, on_bytes, cancel)
        # A blob already in the cache (another revision has it) reports no bytes: count it now.
        state["bytes"] = before + (item.size or 0)
        state["files"] += 1
        report()
    _write_ref(repo_dir, revision or "main", info.sha)
    marker.unlink(missing_ok=True)
    report(done=True)
    return snapshot


def _fetch_into_cache(
    repo_id: str,
    item: HubFile,
    sha: str,
    repo_dir: Path,
    on_bytes: Callable[[int], None],
    cancel: threading.Event | None,
) -> None:
    """One file into huggingface_hub's cache layout: the blob named by its etag (what the Hub
    lists: the LFS sha256, else the git blob id), then the snapshot's link to it. A blob already
    there is only linked; without a usable etag the file goes into the snapshot itself."""
    pointer = repo_dir / "snapshots" / sha / item.path
    etag = item.etag if item.etag and re.fullmatch(r"[0-9A-Za-z_-]{1,128}", item.etag) else None
    target = repo_dir / "blobs" / etag if etag else pointer
    if etag and target.is_file() and (item.size is None or target.stat().st_size == item.size):
        link_into_snapshot(target, pointer)
        return
    try:
        fetch_file(
            _url(repo_id, item.path, sha),
            target,
            headers=_headers(),
            size=item.size,
            on_bytes=on_bytes,
            cancel=cancel,
        )
    except CancelledError:
        raise
    except Exception as exc:
        if cancel is not None and cancel.is_set():
            raise CancelledError("download cancelled") from None
        if isinstance(exc, EOFError) or _protocol_error(exc):
            raise UserError(
                f"the download of {item.path} broke off before the file was complete",
                where=repo_id,
                fix="run the download again: finished files are kept, the broken one is "
                "fetched anew",
            ) from None
        raise hub_error(exc, repo_id, timeout_variable=DOWNLOAD_TIMEOUT_VAR) from None
    if etag:
        link_into_snapshot(target, pointer)


def _write_ref(repo_dir: Path, revision: str, sha: str) -> None:
    """Point refs/<revision> at the snapshot, as huggingface_hub does, once it is complete."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(ref.name + ".tmp")
    tmp.write_text(sha)
    os.replace(tmp, ref)


# -- upload --------------------------------------------------------------------------------------


@dataclass
class UploadProgress:
    repo_id: str
    stage: str  # "preparing", "uploading", "done"
    files: int
    bytes_done: int
    bytes_total: int
    url: str | None = None


def _counting_file(
    path: Path,
    seen: dict[str, int],
    key: str,
    notify: Callable[[], None],
    cancel: threading.Event | None,
) -> Any:
    """A file object for the uploader that records how far it has been read and checks cancel.
    (A file object also keeps huggingface_hub on its plain HTTP upload path, whose reads we see.)"""
    import io

    class CountingFile(io.BufferedReader):
        counting = False

        def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
            if cancel is not None and cancel.is_set():
                raise CancelledError("upload cancelled")
            data = super().read(-1 if size is None else size)
            if CountingFile.counting:
                position = self.tell()
                if position > seen.get(key, 0):
                    seen[key] = position
                    notify()
            return data

    return CountingFile(io.FileIO(str(path), "rb"))


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    message: str | None = None,
    on_progress: Callable[[UploadProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Create the repo if needed and upload every file of `folder` in one commit; returns its URL.

    The model card (README.md) goes with it; a card without `base_model` in its front matter gets
    the parents from the folder's recipe, so the Hub draws the model tree. One commit means a
    cancelled or failed upload changes nothing on the Hub.
    """
    import logging

    from huggingface_hub import CommitOperationAdd

    from mergetui.checkpoints.locate import looks_like_hub_id

    source = Path(folder).expanduser()
    if not source.is_dir():
        raise UserError("no such folder", where=str(source), fix="give the merged model's folder")
    if "/" not in repo_id or not looks_like_hub_id(repo_id):
        raise UserError(
            "a Hub repo id is org/name (or user/name)",
            where=repo_id,
            fix="e.g. mergetui push merges/out your-name/my-merge",
        )
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )
    if not files:
        raise UserError("the folder is empty", where=str(source))
    check_online()
    if not hub_token():
        raise UserError(
            "uploading needs a Hub token with write access",
            fix=f"create a 'write' token at {hub_endpoint()}/settings/tokens and export HF_TOKEN=<it>",
        )
    total = sum(p.stat().st_size for p in files)
    seen: dict[str, int] = {}

    def report(stage: str, url: str | None = None) -> None:
        if on_progress is not None:
            on_progress(
                UploadProgress(
                    repo_id, stage, len(files), min(sum(seen.values()), total), total, url
                )
            )

    report("preparing")
    card = card_with_parents(source)
    api = _api()
    hf_logger = logging.getLogger("huggingface_hub")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)  # it warns about file objects falling back from Xet to HTTP
    opened: list[Any] = []
    try:
        api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model")
        operations = []
        for path in files:
            relative = path.relative_to(source).as_posix()
            if relative == "README.md" and card is not None:
                seen[relative] = 0
                operations.append(
                    CommitOperationAdd(path_in_repo=relative, path_or_fileobj=card.encode())
                )
                continue
            handle = _counting_file(path, seen, relative, lambda: report("uploading"), cancel)
            opened.append(handle)
            operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=handle))
        if card is not None and not (source / "README.md").is_file():
            operations.append(
                CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode())
            )
        for handle in opened:
            type(handle).counting = True
        report("uploading")
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=message or f"Upload {source.name} with mergetui",
            repo_type="model",
        )
    except CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc.__cause__, CancelledError) or isinstance(exc.__context__, CancelledError):
            raise CancelledError("upload cancelled") from None
        raise hub_error(exc, repo_id, action="upload to") from None
    finally:
        hf_logger.setLevel(level)
        for handle in opened:
            handle.close()
    seen.clear()
    seen["all"] = total
    url = f"{hub_endpoint()}/{repo_id}"
    report("done", url)
    return str(getattr(commit, "repo_url", None) or url)


def card_with_parents(folder: Path) -> str | None:
    """The model card to upload when the folder's own needs `base_model` added (or is missing);
    None when the folder's README.md can go as it is."""
    import yaml

    from mergetui.bounded_yaml import LimitExceeded, bounded_loader

    readme = folder / "README.md"
    parents = recipe_parents(folder)
    text = readme.read_text(encoding="utf-8") if readme.is_file() else None
    front: dict[str, Any] = {}
    body = text or ""
    if text is not None and text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            try:
                loaded = yaml.load(text[4:end], Loader=bounded_loader(yaml.SafeLoader)) or {}
                front = loaded if isinstance(loaded, dict) else {}
            except LimitExceeded as exc:
                raise exc.located(str(readme)) from None
            except yaml.YAMLError:
                front = {}
            body = text[end + 4 :].lstrip("\n")
    if text is not None and (front.get("base_model") or not parents):
        return None
    if parents:
        front["base_model"] = parents
        front.setdefault("base_model_relation", "merge")
    front.setdefault("library_name", "transformers")
    tags = list(front.get("tags") or [])
    for tag in ("merge", "mergetui"):
        if tag not in tags:
            tags.append(tag)
    front["tags"] = tags
    if not body:
        body = f"# {folder.name}\n\nA merge of pre-trained language models made with mergetui.\n"
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n" + body


def recipe_parents(folder: Path) -> list[str]:
    """Hub ids of the models named by the recipe saved in a merged folder (empty if none)."""
    from mergetui.checkpoints.locate import looks_like_hub_id

    for name in ("mergetui.toml", "recipe.toml", "mergekit_config.yml"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            from mergetui.recipe.io import load_recipe

            recipe = load_recipe(path)
        except (UserError, OSError, ValueError):
            continue
        return [
            entry.source
            for entry in recipe.models.values()
            if "/" in entry.source
            and looks_like_hub_id(entry.source)
            and not Path(entry.source).exists()
        ]
    return []

"""Finding models on the Hub: search, and everything the Hub says about one model.

`search_models` sends one request, as `HfApi.list_models` would, but with mergetui's bounded retries
(its own loop backs off for about 23 s when the network is down); `model_info` is `HfApi.model_info`
with every file's size, under the same timeout and retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mergetui.checkpoints.hub.client import check_online, hf_api, hub_endpoint, request_headers
from mergetui.checkpoints.hub.errors import hub_error
from mergetui.checkpoints.hub.net import metadata_timeout, with_retries
from mergetui.errors import UserError

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
            f"{hub_endpoint()}/api/models",
            params=params,
            headers=request_headers(),
            timeout=timeout,
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
    api = hf_api()
    try:
        info = with_retries(
            lambda: api.model_info(repo_id, revision=revision, files_metadata=True, timeout=timeout)
        )
    except Exception as exc:
        raise hub_error(exc, repo_id) from None
    return _from_info(info)

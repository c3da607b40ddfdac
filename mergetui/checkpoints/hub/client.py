"""The Hub client's settings, read at call time, and the pieces every request is built from.

Settings are read here rather than trusted from `huggingface_hub.constants`, which freezes some of
them when the library is first imported:

- `HF_ENDPOINT` (default https://huggingface.co) is passed explicitly to every call;
- `HF_TOKEN` (or a token saved by `hf auth login`) is sent, but never shown: every message that
  leaves the hub package goes through `redact`;
- `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) makes every remote call raise `HubOffline` before
  any connection is tried, so callers can say "offline" and carry on with local sources;
- `HF_HUB_ETAG_TIMEOUT` / `HF_HUB_DOWNLOAD_TIMEOUT` bound every wait (`hub.net`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from mergetui.checkpoints.hub.net import HubOffline, download_timeout, metadata_timeout

DEFAULT_ENDPOINT = "https://huggingface.co"
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{6,}")
_BEARER_RE = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


def hub_endpoint() -> str:
    """HF_ENDPOINT without a trailing slash, else the public Hub."""
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


def redact(text: str, token: str | None = None) -> str:
    """`text` with the Hub token (and anything shaped like one) blanked out."""
    secret = token if token is not None else hub_token()
    if secret:
        text = text.replace(secret, "hf_***")
    text = _BEARER_RE.sub(r"\1***", text)
    return _TOKEN_RE.sub("hf_***", text)


def offline_error(where: str | None = None) -> HubOffline:
    """What every Hub call says in offline mode."""
    return HubOffline(
        "the Hub is not available: offline mode is on (HF_HUB_OFFLINE=1)",
        where=where,
        fix="unset HF_HUB_OFFLINE to use the Hub; local folders and the HF cache still work",
    )


def check_online() -> None:
    """Raise `HubOffline` in offline mode, and a `UserError` for a timeout setting that cannot be
    used (before huggingface_hub is imported: it would fail on it with a traceback)."""
    if is_offline():
        raise offline_error()
    metadata_timeout()
    download_timeout()


def hf_api() -> Any:
    """An `HfApi` for the endpoint and token of this moment."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint(), token=hub_token() or False)


def file_url(repo_id: str, filename: str, revision: str | None) -> str:
    """Where a repo file is downloaded from (its `resolve` URL at `revision`, default main)."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, revision=revision or "main", endpoint=hub_endpoint())


def request_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """huggingface_hub's headers (user agent, the token when there is one), plus `extra`."""
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=hub_token() or False, library_name="mergetui")
    headers.update(extra or {})
    return headers

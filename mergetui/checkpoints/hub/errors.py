"""What went wrong with the Hub, said so a person can act on it.

`hub_error` turns whatever huggingface_hub or the network raised into a `UserError` (a `HubOffline`
when the Hub cannot be reached, a `HubTimeout` when it did not answer in time) that names the repo
and says what to do: request access to a gated model, set HF_TOKEN, check the id or the revision,
wait out a rate limit, retry a broken download. The token never appears in a message (`redact`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mergetui.checkpoints.hub.client import hub_endpoint, hub_token, offline_error, redact
from mergetui.checkpoints.hub.net import (
    ETAG_TIMEOUT_VAR,
    HubOffline,
    httpx_module,
    is_timeout,
    timeout_error,
)
from mergetui.errors import UserError

RETRY_DOWNLOAD_FIX = (
    "run the download again: finished files are kept, the broken one is fetched anew"
)


@dataclass(frozen=True)
class _Context:
    """What every message about one failed request needs."""

    endpoint: str
    where: str | None
    page: str  # the repo's page on the Hub (or the Hub itself)
    has_token: bool
    action: str  # "reach", "search", "upload to": what was refused


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
    endpoint = hub_endpoint()
    where = f"{repo_id}/{file}" if repo_id and file else repo_id
    if is_timeout(exc):
        return timeout_error(exc, timeout_variable, endpoint, where)
    page = f"{endpoint}/{repo_id}" if repo_id else endpoint
    context = _Context(endpoint, where, page, bool(hub_token()), action)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    found = _repo_error(exc, status, context)
    if found is not None:
        return found
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, hf_errors.HfHubHTTPError) or status is not None:
        return _status_error(exc, status, context)
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
            fix=RETRY_DOWNLOAD_FIX,
        )
    first = text.splitlines()[0] if text else type(exc).__name__
    return UserError(f"Hub request failed: {first}", where=where)


def _repo_error(exc: BaseException, status: int | None, context: _Context) -> UserError | None:
    """huggingface_hub's own verdicts: offline, gated, no such revision, file or repo."""
    from huggingface_hub import errors as hf_errors

    where, page = context.where, context.page
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return offline_error(where)
    if isinstance(exc, hf_errors.GatedRepoError):
        return UserError(
            "this model is gated: its files are only for accounts that accepted its conditions",
            where=where,
            fix=(
                f"the token in HF_TOKEN has no access yet: request it at {page}"
                if context.has_token
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
    if not isinstance(exc, hf_errors.RepositoryNotFoundError):
        return None
    if status == 401 and not context.has_token:
        return UserError(
            "the Hub has no public model with this id (it may be private)",
            where=where,
            fix="check the id (org/name; `mergetui hub search NAME` finds it); for a "
            "private repo export HF_TOKEN=<a token with read access>",
        )
    return UserError(
        "no model with this id on the Hub"
        + (", or the token in HF_TOKEN cannot see it" if context.has_token else ""),
        where=where,
        fix="check the id (org/name); `mergetui hub search NAME` finds it",
    )


def _status_error(exc: BaseException, status: int | None, context: _Context) -> UserError:
    """An HTTP answer the Hub gave, by its status."""
    where, endpoint = context.where, context.endpoint
    if status == 429:
        return UserError(
            "the Hub is rate-limiting requests (429 Too Many Requests)",
            where=where,
            fix="wait a minute and try again"
            + ("" if context.has_token else "; with HF_TOKEN set the limits are higher"),
        )
    if status == 401:
        return UserError(
            "the Hub refused the credentials (401)",
            where=where,
            fix=f"export HF_TOKEN=<a valid token> (create one at {endpoint}/settings/tokens)",
        )
    if status == 403:
        return UserError(
            f"the Hub refused to {context.action} this repo (403 Forbidden)",
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


def _is_connection_error(exc: BaseException) -> bool:
    httpx = httpx_module()
    if isinstance(exc, (httpx.TransportError, httpx.TimeoutException)):
        return not isinstance(exc, httpx.ProtocolError)
    try:
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def is_broken_transfer(exc: BaseException) -> bool:
    """The server closed the connection mid-body (a broken download)."""
    httpx = httpx_module()
    return isinstance(exc, (EOFError, httpx.RemoteProtocolError, httpx.ReadError))

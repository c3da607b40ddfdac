"""Timeouts, retries and file transfers for every request mergetui sends the Hub.

A server that accepts the connection and never answers must not hang a command, so every request
has a timeout, set the way huggingface_hub sets its own (read here at call time, because
huggingface_hub copies them into `huggingface_hub.constants` once, when first imported):

- `HF_HUB_ETAG_TIMEOUT`: seconds to wait for a metadata answer (model info, search); default 10.
- `HF_HUB_DOWNLOAD_TIMEOUT`: seconds a file transfer (a download, a safetensors header read by a
  Range request) may go without a byte; default 10.

Both are whole seconds, as huggingface_hub reads them (0 or unset: the default). Every request here
is an idempotent GET, so a timeout, a dropped connection or a 5xx answer is tried again, `RETRIES`
times with a growing pause; a 4xx answer never is. What still fails is a `HubTimeout` that names
the server, the wait and the two ways out (a longer timeout, or offline mode).

Files are fetched here rather than with `hf_hub_download`, whose waits cannot be bounded from
outside in huggingface_hub 2.4: it reads the download timeout from its frozen constants, resumes a
stalled body 5 times and, when a file's HEAD request times out, asks again with a 60 s timeout and
5 more tries. The result is the same cache layout (blobs named by their etag, snapshot links).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mergetui.errors import CancelledError, UserError

ETAG_TIMEOUT_VAR = "HF_HUB_ETAG_TIMEOUT"
DOWNLOAD_TIMEOUT_VAR = "HF_HUB_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 10  # huggingface_hub's DEFAULT_ETAG_TIMEOUT and DEFAULT_DOWNLOAD_TIMEOUT
MAX_TIMEOUT_S = 3600
RETRIES = 2  # after the first try: 3 tries in all
BACKOFF_S = 0.5  # pause before the first retry; doubled before each next one
_REPORT_BYTES = 1 << 20  # progress is reported at most every MiB ...
_REPORT_S = 0.2  # ... or every 0.2 s, whichever comes first

T = TypeVar("T")


class HubOffline(UserError):
    """The Hub cannot be used right now (offline mode or no network); local sources still work."""


class HubTimeout(HubOffline):
    """The Hub (or the network on the way to it) did not answer within the timeout."""


# -- settings ------------------------------------------------------------------------------------


def timeout_seconds(variable: str) -> int:
    """The timeout `variable` sets (HF_HUB_ETAG_TIMEOUT or HF_HUB_DOWNLOAD_TIMEOUT), checked."""
    raw = (os.environ.get(variable) or "").strip()
    try:
        seconds = int(raw) if raw else 0
    except ValueError:
        seconds = -1
    if seconds == 0:  # as huggingface_hub: unset or 0 means the default
        return DEFAULT_TIMEOUT_S
    if not 1 <= seconds <= MAX_TIMEOUT_S:
        raise UserError(
            f"{raw!r} is not a timeout mergetui can use",
            where=variable,
            fix=f"set it to a whole number of seconds from 1 to {MAX_TIMEOUT_S} "
            f"(default {DEFAULT_TIMEOUT_S}), or unset it",
        )
    return seconds


def metadata_timeout() -> int:
    """Seconds to wait for the Hub's answer to a metadata request (HF_HUB_ETAG_TIMEOUT)."""
    return timeout_seconds(ETAG_TIMEOUT_VAR)


def download_timeout() -> int:
    """Seconds a file transfer may go without a byte (HF_HUB_DOWNLOAD_TIMEOUT)."""
    return timeout_seconds(DOWNLOAD_TIMEOUT_VAR)


# -- what went wrong -----------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def httpx_module() -> Any:
    """The HTTP library huggingface_hub sends requests with (httpx2, or httpx on older stacks)."""
    try:
        import httpx2 as httpx  # the HTTP library huggingface_hub 1.x+ uses
    except ImportError:  # pragma: no cover - older stacks
        import httpx
    return httpx


def is_timeout(exc: BaseException) -> bool:
    """The request (or something it waited on) timed out."""
    httpx = httpx_module()
    return any(isinstance(e, (httpx.TimeoutException, TimeoutError)) for e in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Worth asking again: a timeout, a dropped or refused connection, a 5xx answer (never 4xx)."""
    httpx = httpx_module()
    if isinstance(exc, (CancelledError, UserError)):
        return False
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return status >= 500
    return isinstance(exc, (httpx.TransportError, TimeoutError, ConnectionError))


def with_retries(call: Callable[[], T], *, cancel: threading.Event | None = None) -> T:
    """`call()`, tried again after a transient failure (RETRIES times, pausing BACKOFF_S, then
    twice that): for idempotent requests only. A set `cancel` stops the pauses at once."""
    for attempt in range(RETRIES + 1):
        try:
            return call()
        except Exception as exc:
            if cancel is not None and cancel.is_set():
                raise CancelledError("download cancelled") from None
            if attempt == RETRIES or not is_transient(exc):
                raise
        pause = BACKOFF_S * 2**attempt
        if cancel is not None:
            if cancel.wait(pause):
                raise CancelledError("download cancelled")
        else:
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _failed_request(exc: BaseException) -> tuple[str, str]:
    """(server, 'METHOD /path') of the request that failed, as far as the exception says."""
    for item in _chain(exc):
        try:
            request = item.request  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):
            continue
        if request is None:
            continue
        url = request.url
        port = f":{url.port}" if url.port else ""
        return f"{url.scheme}://{url.host}{port}", f"{request.method} {url.path}"
    return "", ""


def timeout_error(
    exc: BaseException, variable: str, endpoint: str, where: str | None
) -> HubTimeout:
    """One line: which server did not answer, within how long, and how to wait longer or stop."""
    seconds = timeout_seconds(variable)
    server, request = _failed_request(exc)
    who = "the Hub" if not server or server == endpoint else "the server"
    tries = f"{RETRIES + 1} tries" if RETRIES else "1 try"
    detail = f"{request}, {tries}" if request else tries
    return HubTimeout(
        f"{who} at {server or endpoint} did not answer within {seconds} s ({detail})",
        where=where,
        fix=f"try again later; on a slow connection wait longer with {variable}=<seconds> "
        f"(now {seconds}); or set HF_HUB_OFFLINE=1 to work offline with local folders and the cache",
    )


# -- file transfers ------------------------------------------------------------------------------


class _Reporter:
    """Hands byte counts to `on_bytes` in batches (each MiB or 0.2 s), not per network read."""

    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self.on_bytes = on_bytes
        self.pending = 0
        self.last = time.monotonic()

    def add(self, count: int) -> None:
        self.pending += count
        now = time.monotonic()
        if abs(self.pending) >= _REPORT_BYTES or now - self.last >= _REPORT_S:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.pending:
            self.on_bytes(self.pending)
            self.pending = 0
        self.last = time.monotonic() if now is None else now


def _stream_into(
    out: Any,
    url: str,
    headers: dict[str, str],
    timeout: float,
    report: _Reporter,
    cancel: threading.Event | None,
) -> None:
    """One try: GET `url` into `out`, from where the last try stopped (a Range request)."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    offset = out.tell()
    extra = {"Range": f"bytes={offset}-"} if offset else {}
    with get_session().stream(
        "GET", url, headers={**headers, **extra}, timeout=timeout, follow_redirects=True
    ) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        if offset and response.status_code == 200:  # the server ignored the Range: start over
            out.seek(0)
            out.truncate()
            report.add(-offset)
        for chunk in response.iter_bytes():
            if cancel is not None and cancel.is_set():
                raise CancelledError("download cancelled")
            out.write(chunk)
            report.add(len(chunk))


def fetch_file(
    url: str,
    target: Path,
    *,
    headers: dict[str, str],
    size: int | None,
    on_bytes: Callable[[int], None],
    cancel: threading.Event | None = None,
) -> None:
    """Download `url` to `target`: into a temporary name beside it, moved into place only when
    complete (a cancel or failure removes it). A try that breaks off is resumed where it stopped.
    Raises the last transfer error (timeouts after HF_HUB_DOWNLOAD_TIMEOUT without a byte)."""
    timeout = download_timeout()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.incomplete")
    report = _Reporter(on_bytes)
    try:
        with tmp.open("wb") as out:
            with_retries(
                lambda: _stream_into(out, url, headers, timeout, report, cancel), cancel=cancel
            )
        report.flush()
        got = tmp.stat().st_size
        if size is not None and got != size:
            raise EOFError(f"got {got} of {size} bytes")
        os.replace(tmp, target)
    finally:
        report.flush()
        tmp.unlink(missing_ok=True)


def link_into_snapshot(blob: Path, pointer: Path) -> None:
    """Point a snapshot's file at its blob with a relative link, as huggingface_hub does; where
    links are not allowed, the blob itself moves there (huggingface_hub's fallback too)."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        os.replace(blob, pointer)

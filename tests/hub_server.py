"""A small Hugging Face Hub stand-in for the tests: stdlib http.server on 127.0.0.1, in a thread.

It answers the routes the real `huggingface_hub` client uses for what mergetui does: model search
(`/api/models`), model and revision info with file sizes, tree listing, file resolution (HEAD and
GET, with Range requests so safetensors headers are read without the weights), repository creation,
preupload, the LFS batch API and its upload target, and commits. Failure modes a user meets are
switchable: 401 for a private repo without the right token, 403 for a gated one, 404, 429 (rate
limited), a download cut short (every time, or only the next few times), 503 for the next few
requests, and a file whose headers come but whose body never does. Every request is logged (method,
path, Range, Authorization) so tests can check what was fetched and that the token was sent.

`BlackHole` is the other kind of broken server: it accepts connections and never answers.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
REPO_ID = rf"{REPO_PART}/{REPO_PART}"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = ""
    downloads: int = 0
    likes: int = 0
    trending: float = 0.0
    created_at: str = "2024-01-01T00:00:00.000Z"
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = "text-generation"
    gated: bool | str = False
    private: bool = False
    license: str | None = None
    commits: int = 0

    def __post_init__(self) -> None:
        if not self.sha:
            self.bump()

    def bump(self) -> None:
        self.commits += 1
        self.sha = hashlib.sha1(f"{self.repo_id}:{self.commits}".encode()).hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES) or len(self.files[path]) > 10_000_000

    def entry(self, path: str) -> dict[str, Any]:
        data = self.files[path]
        cache = self.__dict__.setdefault("_hashes", {})
        key = (path, id(data), len(data))
        if key not in cache:  # hashing a large file on every request would dominate timings
            cache[key] = (git_blob_sha1(data), hashlib.sha256(data).hexdigest())
        sha1, sha256 = cache[key]
        item: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": sha1}
        if self.is_lfs(path):
            item["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
        return item

    def parameters(self) -> dict[str, int]:
        from mergetui.checkpoints.safetensors_io import read_header_bytes

        counts: dict[str, int] = {}
        for path, data in self.files.items():
            if path.endswith(".safetensors"):
                tensors, _ = read_header_bytes(data, path, file_size=len(data))
                for info in tensors.values():
                    counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
        return counts

    def summary(self) -> dict[str, Any]:
        return {
            "_id": self.sha[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "likes": self.likes,
            "downloads": self.downloads,
            "trendingScore": self.trending,
            "tags": list(self.tags),
            "pipeline_tag": self.pipeline_tag,
            "library_name": "transformers",
            "createdAt": self.created_at,
            "lastModified": self.created_at,
            "private": self.private,
            "gated": self.gated,
        }

    def info(self, with_sizes: bool) -> dict[str, Any]:
        result = self.summary()
        result["sha"] = self.sha
        result["disabled"] = False
        siblings = []
        for path in sorted(self.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_sizes:
                entry = self.entry(path)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {
                        "sha256": entry["lfs"]["oid"],
                        "size": entry["size"],
                        "pointerSize": 134,
                    }
            siblings.append(sibling)
        result["siblings"] = siblings
        if self.license:
            result["cardData"] = {"license": self.license}
        if "config.json" in self.files:
            try:
                config = json.loads(self.files["config.json"])
                result["config"] = {
                    "architectures": config.get("architectures"),
                    "model_type": config.get("model_type"),
                }
            except ValueError:
                pass
        params = self.parameters()
        if params:
            result["safetensors"] = {"parameters": params, "total": sum(params.values())}
        return result


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class HubServer:
    """Start with `with HubServer() as hub:`; `hub.url` is the endpoint to point the client at."""

    def __init__(self, token: str | None = None) -> None:
        self.repos: dict[str, Repo] = {}
        self.token = token  # the one token that opens private and gated repos and allows uploads
        self.requests: list[Request] = []
        self.rate_limited = False
        self.truncate: set[str] = set()  # file paths always served cut short (a broken download)
        self.cut_next: dict[str, int] = {}  # file path -> how many more GETs to cut short
        self.fail_next: dict[str, int] = {}  # text in a path -> how many more requests get a 503
        self.stall: set[str] = set()  # file paths whose GET sends headers, then never the body
        self.stopping = threading.Event()
        self.lfs_store: dict[str, bytes] = {}
        self.chunk_delay = 0.0  # seconds between 64 KiB chunks of a download (for cancel tests)
        self.commits: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up --------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, folder: Path | None = None, **kwargs: Any) -> Repo:
        files: dict[str, bytes] = {}
        if folder is not None:
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    files[str(path.relative_to(folder))] = path.read_bytes()
        files.update(kwargs.pop("files", {}) or {})  # given files replace the folder's
        repo = Repo(repo_id, files=files, **kwargs)
        self.repos[repo_id] = repo
        return repo

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # frees the handlers that stall
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries for the tests -----------------------------------------------------------------

    def log(self, method: str | None = None, contains: str = "") -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and contains in r.path
            ]

    def downloaded(self, repo_id: str) -> list[str]:
        """Files fetched whole (GET without Range) from a repo."""
        prefix = f"/{repo_id}/resolve/"
        paths = []
        for r in self.log("GET", prefix):
            if "range" not in r.headers:
                paths.append(r.path.split(prefix, 1)[1].split("/", 1)[1])
        return paths


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-download (a cancel) is normal here, not worth a traceback."""
        return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    # -- plumbing ------------------------------------------------------------------------------

    def _record(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.server_hub._lock:
            self.server_hub.requests.append(Request(self.command, path, query, headers))
        return path, query

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return data

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        head: bool = False,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _error(
        self, status: int, message: str, code: str | None = None, head: bool = False
    ) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if status == 429:
            headers["Retry-After"] = "0"
        body = json.dumps({"error": message}).encode()
        self._send(status, body, headers=headers, head=head)

    def _authorized(self) -> bool:
        token = self.server_hub.token
        return token is not None and self.headers.get("Authorization") == f"Bearer {token}"

    def _repo(self, repo_id: str, *, files: bool = False, head: bool = False) -> Repo | None:
        """The repo, or None after answering 404 / 401 / 403 as the Hub does."""
        repo = self.server_hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            if self.headers.get("Authorization"):
                self._error(404, "Repository not found", "RepoNotFound", head=head)
            else:
                self._error(401, "Invalid username or password.", "RepoNotFound", head=head)
            return None
        if files and repo.gated and not self._authorized():
            self._error(
                403,
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
                "GatedRepo",
                head=head,
            )
            return None
        return repo

    def _revision_ok(self, repo: Repo, revision: str, head: bool = False) -> bool:
        if revision in ("main", repo.sha):
            return True
        self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        return False

    # -- GET / HEAD ----------------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802
        self._get(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._get(head=False)

    def _take(self, faults: dict[str, int], key: str) -> bool:
        """Use up one of the faults counted under a key found in `key` (the path)."""
        with self.server_hub._lock:
            for text, left in faults.items():
                if left > 0 and text in key:
                    faults[text] = left - 1
                    return True
        return False

    def _get(self, head: bool) -> None:
        path, query = self._record()
        hub = self.server_hub
        if hub.rate_limited:
            self._error(429, "You have been rate-limited; try again later.", head=head)
            return
        if self._take(hub.fail_next, path):
            self._error(503, "Service temporarily unavailable", head=head)
            return
        if path == "/api/models":
            self._search(query)
            return
        if path == "/api/whoami-v2":
            if self._authorized():
                self._json(200, {"type": "user", "name": "tester", "orgs": []})
            else:
                self._error(401, "Invalid credentials in Authorization header")
            return
        match = re.fullmatch(rf"/api/models/({REPO_ID})(?:/revision/([^/]+))?", path)
        if match:
            repo = self._repo(match.group(1))
            if repo is None or not self._revision_ok(repo, match.group(2) or "main"):
                return
            with_sizes = "true" in query.get("blobs", []) or "blobs" in query.get("expand", [])
            self._json(200, repo.info(with_sizes))
            return
        match = re.fullmatch(rf"/api/models/({REPO_ID})/tree/([^/]+)(?:/(.*))?", path)
        if match:
            repo = self._repo(match.group(1))
            if repo is None or not self._revision_ok(repo, match.group(2)):
                return
            prefix = (match.group(3) or "").strip("/")
            entries = [
                repo.entry(p)
                for p in sorted(repo.files)
                if not prefix or p == prefix or p.startswith(prefix + "/")
            ]
            self._json(200, entries)
            return
        match = re.fullmatch(rf"/({REPO_ID})/resolve/([^/]+)/(.+)", path)
        if match:
            self._resolve(match.group(1), match.group(2), match.group(3), head)
            return
        self._error(404, f"no route {path}", head=head)

    def _search(self, query: dict[str, list[str]]) -> None:
        hub = self.server_hub
        text = (query.get("search") or [""])[0].lower()
        filters = query.get("filter", [])
        pipeline = (query.get("pipeline_tag") or [None])[0]
        found = []
        for repo in hub.repos.values():
            if repo.private and not self._authorized():
                continue
            if text and text not in repo.repo_id.lower():
                continue
            labels = set(repo.tags) | ({repo.pipeline_tag} if repo.pipeline_tag else set())
            if any(f not in labels for f in filters):
                continue
            if pipeline and repo.pipeline_tag != pipeline:
                continue
            found.append(repo)
        sort = (query.get("sort") or ["downloads"])[0]
        key = {
            "downloads": lambda r: r.downloads,
            "likes": lambda r: r.likes,
            "trendingScore": lambda r: r.trending,
            "createdAt": lambda r: r.created_at,
            "lastModified": lambda r: r.created_at,
        }.get(sort, lambda r: r.downloads)
        found.sort(key=key, reverse=(query.get("direction") or ["-1"])[0] == "-1")
        limit = int((query.get("limit") or ["1000"])[0])
        results = []
        for repo in found[:limit]:
            item = repo.summary()
            params = repo.parameters() if "safetensors" in query.get("expand", []) else {}
            if params:
                item["safetensors"] = {"parameters": params, "total": sum(params.values())}
            results.append(item)
        self._json(200, results)

    def _resolve(self, repo_id: str, revision: str, file: str, head: bool) -> None:
        hub = self.server_hub
        repo = self._repo(repo_id, files=True, head=head)
        if repo is None or not self._revision_ok(repo, revision, head=head):
            return
        if file not in repo.files:
            self._error(404, "Entry not found", "EntryNotFound", head=head)
            return
        data = repo.files[file]
        entry = repo.entry(file)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {
            "ETag": f'"{etag}"',
            "X-Repo-Commit": repo.sha,
            "Accept-Ranges": "bytes",
        }
        if "lfs" in entry:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        status = 200
        body = data
        wanted = self.headers.get("Range")
        if wanted:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if not match:
                self._error(416, "bad range", head=head)
                return
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data):
                self._send(416, b"", headers={"Content-Range": f"bytes */{len(data)}"}, head=head)
                return
            body = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if head:
            self._send(
                status, b"", "application/octet-stream", headers, head=True, length=len(body)
            )
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if file in hub.stall:  # headers sent, the body never comes
            self.wfile.flush()
            hub.stopping.wait(60)
            self.close_connection = True
            return
        if file in hub.truncate or self._take(hub.cut_next, file):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        step = 65536
        for start in range(0, len(body), step):
            self.wfile.write(body[start : start + step])
            if hub.chunk_delay:
                self.wfile.flush()
                time.sleep(hub.chunk_delay)

    # -- POST / PUT: repositories and uploads --------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802
        path, query = self._record()
        hub = self.server_hub
        body = self._body()
        if hub.rate_limited:
            self._error(429, "You have been rate-limited; try again later.")
            return
        if not self._authorized():
            self._error(401, "Invalid credentials in Authorization header")
            return
        if path == "/api/validate-yaml":  # the client checks a model card's front matter
            data = json.loads(body or b"{}")
            try:
                import yaml

                content = data.get("content", "")
                if content.startswith("---\n"):
                    yaml.safe_load(content[4 : content.find("\n---", 4)])
                self._json(200, {"errors": [], "warnings": []})
            except yaml.YAMLError as exc:
                self._json(400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
            return
        if path == "/api/repos/create":
            data = json.loads(body or b"{}")
            repo_id = f"{data.get('organization') or 'tester'}/{data['name']}"
            if repo_id in hub.repos:
                self._json(
                    409,
                    {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"},
                )
                return
            private = bool(data.get("private")) or data.get("visibility") == "private"
            hub.add_repo(repo_id, private=private, pipeline_tag=None)
            self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            return
        match = re.fullmatch(rf"/api/models/({REPO_ID})/preupload/([^/]+)", path)
        if match:
            repo = self._repo(match.group(1))
            if repo is None:
                return
            files = json.loads(body)["files"]
            self._json(
                200,
                {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "lfs"
                            if f["path"].endswith(LFS_SUFFIXES) or f.get("size", 0) > 10_000_000
                            else "regular",
                            "shouldIgnore": False,
                            "oid": None,
                        }
                        for f in files
                    ]
                },
            )
            return
        match = re.fullmatch(rf"/({REPO_ID})\.git/info/lfs/objects/batch", path)
        if match:
            objects = []
            for item in json.loads(body)["objects"]:
                entry: dict[str, Any] = {"oid": item["oid"], "size": item["size"]}
                if item["oid"] not in hub.lfs_store:
                    entry["authenticated"] = True
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{item['oid']}"}}
                objects.append(entry)
            self._json(200, {"transfer": "basic", "objects": objects})
            return
        match = re.fullmatch(rf"/api/models/({REPO_ID})/commit/([^/]+)", path)
        if match:
            repo = self._repo(match.group(1))
            if repo is None:
                return
            self._commit(repo, body)
            return
        self._error(404, f"no route {path}")

    def _commit(self, repo: Repo, body: bytes) -> None:
        hub = self.server_hub
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header: dict[str, Any] = {}
        changes: dict[str, bytes] = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = hub.lfs_store.get(value["oid"])
                if data is None:
                    self._error(422, f"LFS object {value['oid']} was never uploaded")
                    return
                changes[value["path"]] = data
        repo.files.update(changes)
        repo.bump()
        hub.commits.append({"repo_id": repo.repo_id, "header": header, "files": sorted(changes)})
        self._json(
            200,
            {
                "commitUrl": f"{hub.url}/{repo.repo_id}/commit/{repo.sha}",
                "commitOid": repo.sha,
                "success": True,
            },
        )

    def do_PUT(self) -> None:  # noqa: N802
        path, _ = self._record()
        body = self._body()
        match = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if not match:
            self._error(404, f"no route {path}")
            return
        if hashlib.sha256(body).hexdigest() != match.group(1):
            self._error(400, "sha256 mismatch")
            return
        self.server_hub.lfs_store[match.group(1)] = body
        self._send(200, b"")


class BlackHole:
    """A server that accepts TCP connections on 127.0.0.1 and never answers (nor closes them):
    what a client meets behind a broken proxy or a hung server. `url` is its endpoint."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop sees stop() soon
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.connections = 0

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)
            self.connections += 1

    def __enter__(self) -> BlackHole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self._held:
            conn.close()


# -- for the tests' fixtures -------------------------------------------------------------------

TEST_TOKEN = "hf_TestToken1234567890abcdef"


def serve_for_test(tmp_path: Path, monkeypatch: Any) -> Any:
    """Generator for a pytest fixture: a running stand-in with the client pointed at it
    (HF_ENDPOINT), an empty HF cache under tmp_path, no token and no offline mode.

        @pytest.fixture
        def hub(tmp_path, monkeypatch):
            yield from serve_for_test(tmp_path, monkeypatch)
    """
    for variable in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    server = HubServer(token=TEST_TOKEN).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        yield server
    finally:
        server.stop()


def merged_folder(tmp_path: Path, source: Path, card: str | None) -> Path:
    """A copy of the model `source` as a merge leaves it: a recipe naming two Hub parents, and
    `card` as README.md (none when None)."""
    import shutil

    folder = tmp_path / "merged"
    shutil.copytree(source, folder)
    (folder / "mergetui.toml").write_text(
        '[merge]\nmethod = "linear"\n\n[models.a]\nsource = "org/parent-a"\n\n[models.b]\n'
        'source = "org/parent-b"\n',
        encoding="utf-8",
    )
    if card is not None:
        (folder / "README.md").write_text(card, encoding="utf-8")
    return folder

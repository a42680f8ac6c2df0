"""An in-memory Hugging Face Hub for tests.

`HubServer` runs a small HTTP server on 127.0.0.1 (stdlib `http.server`) that speaks the part
of the Hub API the real `huggingface_hub` client uses to create repos, commit files (inline
base64 or through the Git LFS "basic" transfer), list and download them. timm's `hf-hub:`
loading, `ModelCard.push_to_hub`/`load` and `datasets.Dataset.push_to_hub`/`load_dataset`
work against it. State is versioned: every commit gets a new 40-hex id and moves its branch.

    with HubServer() as hub:
        env = {**os.environ, **hub_env(hub, tmp_path)}
        subprocess.run([sys.executable, "-c", script], env=env, check=True)
        assert "model.safetensors" in hub.repos["org/name"]

`huggingface_hub` reads `HF_ENDPOINT` when it is imported, so client code must run in a
process that gets the environment from `hub_env` before that import (a subprocess).

Not served: Xet storage (set `HF_HUB_DISABLE_XET=1`, `hub_env` does), pull requests,
tags, gated/private access control, pagination (every listing comes in one page), `cardData`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Blob", "Commit", "HubError", "HubServer", "Repo", "hub_env"]

# URL segment of `/api/{kind}/...` -> repo type, and repo type -> prefix of web/resolve URLs.
KINDS: dict[str, str] = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX: dict[str, str] = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# Suffixes the Hub's default `.gitattributes` stores with LFS whatever their size.
DEFAULT_LFS_SUFFIXES: tuple[str, ...] = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth",
    ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
)  # fmt: skip
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in DEFAULT_LFS_SUFFIXES).encode()

FailMode = int | Literal["disconnect"]
_DISCONNECT = object()  # a handler result meaning "drop the connection without answering"


def _now() -> str:
    """The current time in the Hub's format (`2024-01-02T03:04:05.678Z`)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_id(data: bytes) -> str:
    """The git object id (sha1) of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _truthy(values: list[str] | None) -> bool:
    """A query/form flag as the client sends it (`true`, `True`, `1`)."""
    return bool(values) and values[0].lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------------------------
# Versioned state
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """One file's content and how it is stored (inline in git, or as an LFS object)."""

    data: bytes
    lfs: bool
    sha256: str
    oid: str  # git blob id: of the content, or of the LFS pointer file for LFS blobs

    @classmethod
    def of(cls, data: bytes, lfs: bool) -> Blob:
        """Build a blob and its hashes."""
        sha = hashlib.sha256(data).hexdigest()
        oid = _git_blob_id(cls.pointer_for(sha, len(data)) if lfs else data)
        return cls(data=data, lfs=lfs, sha256=sha, oid=oid)

    @staticmethod
    def pointer_for(sha256: str, size: int) -> bytes:
        """The Git LFS pointer file that git stores in place of an LFS blob."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag: the sha256 for LFS blobs, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.oid


@dataclass(frozen=True)
class Commit:
    """A snapshot of a repo: every file at this commit, and the commit that last changed each."""

    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    author: str
    files: dict[str, Blob]
    changed_in: dict[str, str]  # path -> oid of the commit that last wrote it

    def folders(self) -> set[str]:
        """Every folder that holds at least one file."""
        return {"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)}


@dataclass
class Repo:
    """A repository: its commits, its branches, and the LFS objects uploaded to it."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content

    @property
    def key(self) -> str:
        """`org/name` for models, `datasets/org/name` for datasets (as in web URLs)."""
        return URL_PREFIX[self.repo_type] + self.repo_id

    def resolve(self, revision: str) -> Commit | None:
        """The commit a branch name, `refs/heads/` name or full commit id points to."""
        revision = revision.removeprefix("refs/heads/")
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)

    def history(self, commit: Commit) -> list[Commit]:
        """`commit` and its ancestors, newest first."""
        out = [commit]
        while out[-1].parent is not None:
            out.append(self.commits[out[-1].parent])
        return out


class HubError(Exception):
    """An error answer: status, message, and the `X-Error-Code` the client maps to an exception."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


@dataclass
class Request:
    """What a route handler sees of a request."""

    method: str
    path: str  # raw (still percent-encoded) path
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (400 when it is not)."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from exc

    def form(self) -> dict[str, list[str]]:
        """The body as form fields (or JSON, each value made a list)."""
        if self.headers.get("content-type", "").startswith("application/json"):
            data = self.json() or {}
            return {k: v if isinstance(v, list) else [str(v)] for k, v in data.items()}
        return parse_qs(self.body.decode(), keep_blank_values=True)


@dataclass
class Response:
    """What a route handler answers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    return Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclass(frozen=True)
class Route:
    """One row of the route table: method, full-match path regex, handler name."""

    method: str
    pattern: re.Pattern[str]
    name: str


_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+?)"
_API = rf"/api/(?P<kind>models|datasets|spaces)/{_REPO}"
_WEB = rf"/(?:(?P<prefix>datasets|spaces)/)?{_REPO}"
_LFS = rf"/_lfs/(?P<kind>models|datasets|spaces)/{_REPO}/(?P<oid>[0-9a-f]{{64}})"

ROUTES: tuple[Route, ...] = tuple(
    Route(method, re.compile(pattern), name)
    for method, pattern, name in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"{_API}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", rf"{_API}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", rf"{_API}/refs", "refs"),
        ("GET", rf"{_API}/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", rf"{_API}/branch/(?P<branch>[^/]+)", "create_branch"),
        ("DELETE", rf"{_API}/branch/(?P<branch>[^/]+)", "delete_branch"),
        ("POST", rf"{_API}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"{_API}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"{_WEB}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", _LFS, "lfs_upload"),
        ("POST", rf"{_LFS}/verify", "lfs_verify"),
        ("HEAD", rf"{_WEB}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("GET", rf"{_WEB}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
)


class _HTTPServer(ThreadingHTTPServer):
    """The socket server; `hub` is the `HubServer` that answers."""

    daemon_threads = True
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    """Reads a whole request, hands it to the `HubServer`, writes the answer (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the per-request stderr log (see `HubServer.requests`)."""

    def _read_body(self) -> bytes:
        """The whole body, plain or chunked: leftovers would corrupt the next keep-alive request."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        result = self.server.hub._handle(self.command, self.path, headers, body)
        if result is _DISCONNECT:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        assert isinstance(result, Response)
        self.send_response(result.status)
        for name, value in result.headers.items():
            self.send_header(name, value)
        if "Content-Length" not in result.headers:
            self.send_header("Content-Length", str(len(result.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(result.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class HubServer:
    """An in-memory Hub on `http://127.0.0.1:PORT` (see the module docstring).

    Args:
        lfs_threshold: files of at least this many bytes are answered `lfs` by preupload.
        lfs_suffixes: files whose name ends with one of these are `lfs` whatever their size.
        user: the account name `whoami-v2` reports and repos without a namespace go to.
        token: if set, write calls must carry exactly this token; else any bearer token does.
        lfs_verify: whether LFS batch answers ask the client to call a verify URL after upload.
        gitattributes: whether a new repo starts with an initial commit holding `.gitattributes`
            (as on the Hub). Without it the initial commit is empty.
    """

    def __init__(
        self,
        *,
        lfs_threshold: int = 10 * 1024 * 1024,
        lfs_suffixes: Iterable[str] = DEFAULT_LFS_SUFFIXES,
        user: str = "hub-tester",
        token: str | None = None,
        lfs_verify: bool = True,
        gitattributes: bool = True,
    ) -> None:
        self.lfs_threshold = lfs_threshold
        self.lfs_suffixes = tuple(lfs_suffixes)
        self.user = user
        self.token = token
        self.lfs_verify = lfs_verify
        self.gitattributes = gitattributes
        self.requests: list[tuple[str, str, int]] = []  # (method, raw path, status) of every request
        self.errors: list[str] = []  # tracebacks of unexpected exceptions in handlers (answered 500)
        self._repos: dict[tuple[str, str], Repo] = {}
        self._failures: dict[str, list[FailMode]] = {}
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Start serving in a background thread (again on the same port after `stop`)."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", self._port), _Handler)
        httpd.hub = self
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name=f"hubserver:{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections; the state is kept."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint to use as `HF_ENDPOINT`."""
        if not self._port:
            raise RuntimeError("HubServer is not started")
        return f"http://127.0.0.1:{self._port}"

    # ---- inspection and fault injection ----------------------------------------------------

    @property
    def repos(self) -> dict[str, dict[str, bytes]]:
        """Files at `main` of every repo, keyed `org/name` (models) or `datasets/org/name`."""
        with self._lock:
            return {
                repo.key: {p: b.data for p, b in head.files.items()}
                for repo in self._repos.values()
                if (head := repo.resolve("main")) is not None
            }

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """The full state of one repo (commits, branches, LFS objects); KeyError if missing."""
        with self._lock:
            return self._repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, Blob]:
        """The blobs of a repo at a revision."""
        commit = self.repo(repo_id, repo_type).resolve(revision)
        if commit is None:
            raise KeyError(revision)
        return dict(commit.files)

    def fail_next(self, route: str, status: FailMode = 500, times: int = 1) -> None:
        """Make the next `times` requests to `route` (a name from `ROUTES`, e.g. `commit`,
        `preupload`, `lfs_batch`, `lfs_upload`, `resolve`) fail with `status`, or drop the
        connection unanswered with `"disconnect"`. The request body is still read in full and
        nothing is changed. Note the client retries 429/5xx on preupload, LFS and downloads
        (up to 5 times, with back-off), but not on commit."""
        if route not in {r.name for r in ROUTES}:
            raise ValueError(f"unknown route {route!r}")
        with self._lock:
            self._failures.setdefault(route, []).extend([status] * times)

    @property
    def fail_next_commit(self) -> bool:
        """Whether the next commit is set to fail."""
        with self._lock:
            return bool(self._failures.get("commit"))

    @fail_next_commit.setter
    def fail_next_commit(self, value: bool | FailMode) -> None:
        """`True` (500), a status code or `"disconnect"`: fail the next commit; `False`: don't."""
        with self._lock:
            self._failures.pop("commit", None)
        if value is not False:
            self.fail_next("commit", 500 if value is True else value)

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repo directly (as `POST /api/repos/create` does); ValueError if it exists."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id} exists")
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            files = {".gitattributes": Blob.of(GITATTRIBUTES, lfs=False)} if self.gitattributes else {}
            self._new_commit(repo, "main", "initial commit", "", files, changed=files)
            self._repos[(repo_type, repo_id)] = repo
            return repo

    def seed(
        self,
        repo_id: str,
        files: dict[str, bytes | str],
        repo_type: str = "model",
        message: str = "Seed files",
        branch: str = "main",
    ) -> Commit:
        """Commit files straight into a repo (created if missing), with the storage preupload
        would pick; for tests that need a Hub with content but do not test the upload."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id)) or self.create_repo(repo_id, repo_type)
            head = repo.resolve(branch)
            if head is None:
                raise KeyError(branch)
            blobs = {
                path: Blob.of(raw, self._wants_lfs(path, len(raw)))
                for path, data in files.items()
                for raw in [data.encode() if isinstance(data, str) else data]
            }
            for blob in blobs.values():
                if blob.lfs:
                    repo.lfs_objects[blob.sha256] = blob.data
            return self._new_commit(repo, branch, message, "", head.files | blobs, changed=blobs)

    # ---- internals -------------------------------------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response | object:
        """Route one request, apply fault injection, turn `HubError` into an error answer."""
        parts = urlsplit(raw_path)
        request = Request(method, parts.path, parse_qs(parts.query, keep_blank_values=True), headers, body)
        result: Response | object
        for route in ROUTES:
            match = route.pattern.fullmatch(parts.path) if route.method == method else None
            if match is None:
                continue
            with self._lock:
                queue = self._failures.get(route.name)
                failure = queue.pop(0) if queue else None
            if failure == "disconnect":
                result = _DISCONNECT
            elif failure is not None:
                result = self._error(HubError(int(failure), f"Injected failure of {route.name}"))
            else:
                try:
                    handler: Callable[..., Response] = getattr(self, f"_r_{route.name}")
                    result = handler(request, **{k: v for k, v in match.groupdict().items() if v is not None})
                except HubError as exc:
                    result = self._error(exc)
                except Exception as exc:  # a malformed request or a server bug: answer, keep serving
                    with self._lock:
                        self.errors.append(traceback.format_exc())
                    result = self._error(HubError(500, f"{type(exc).__name__}: {exc}"))
            break
        else:
            result = self._error(HubError(404, f"No route for {method} {parts.path}"))
        status = result.status if isinstance(result, Response) else 0
        with self._lock:
            self.requests.append((method, raw_path, status))
        return result

    @staticmethod
    def _error(exc: HubError) -> Response:
        headers = {"X-Error-Message": exc.message, **exc.headers}
        if exc.code:
            headers["X-Error-Code"] = exc.code
        return json_response({"error": exc.message}, exc.status, headers)

    def _check_token(self, request: Request) -> str:
        """The bearer token of a write call (401 when missing or not the configured one)."""
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token or (self.token is not None and token != self.token):
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _get_repo(self, kind: str, ns: str, name: str) -> Repo:
        repo = self._repos.get((KINDS.get(kind, kind), f"{ns}/{name}"))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _get_commit(repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(unquote(rev))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
        return commit

    def _new_commit(
        self,
        repo: Repo,
        branch: str,
        title: str,
        message: str,
        files: dict[str, Blob],
        changed: Iterable[str],
    ) -> Commit:
        """Record a snapshot as a new commit on `branch` (caller holds the lock)."""
        parent = repo.branches.get(branch)
        seed = json.dumps(
            [repo.key, parent, title, next(self._counter), sorted((p, b.oid) for p, b in files.items())]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        previous = repo.commits[parent].changed_in if parent else {}
        changed_in = {p: previous[p] for p in files if p in previous} | {
            p: oid for p in changed if p in files
        }
        commit = Commit(oid, parent, title, message, _now(), self.user, dict(files), changed_in)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def _web_url(self, repo: Repo) -> str:
        return f"{self.url}/{repo.key}"

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        """A tree / paths-info item for a file or folder."""
        blob = commit.files.get(path)
        if blob is None:  # a folder
            inner = sorted((p, b.oid) for p, b in commit.files.items() if p.startswith(path + "/"))
            entry: dict[str, Any] = {
                "type": "directory",
                "oid": hashlib.sha1(json.dumps(inner).encode()).hexdigest(),
                "size": 0,
                "path": path,
            }
            order = {oid: i for i, oid in enumerate(repo.commits)}  # commits are kept in creation order
            last = max((commit.changed_in[p] for p, _ in inner), key=order.__getitem__, default=None)
        else:
            entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
            if blob.lfs:
                pointer = Blob.pointer_for(blob.sha256, len(blob.data))
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(pointer)}
            last = commit.changed_in.get(path)
        if expand and last is not None:
            c = repo.commits[last]
            entry["lastCommit"] = {"id": c.oid, "title": c.title, "date": c.date}
        return entry

    def _wants_lfs(self, path: str, size: int) -> bool:
        return size >= self.lfs_threshold or path.lower().endswith(self.lfs_suffixes)

    # ---- route handlers (`_r_<route name>`) ------------------------------------------------

    def _r_whoami(self, request: Request) -> Response:
        """`GET /api/whoami-v2`: the account behind the token."""
        self._check_token(request)
        return json_response(
            {
                "type": "user",
                "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                "name": self.user,
                "fullname": self.user,
                "email": f"{self.user}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _r_create_repo(self, request: Request) -> Response:
        """`POST /api/repos/create`: 200 with the URL, or 409 (also with the URL) when it exists."""
        self._check_token(request)
        payload = request.json() or {}
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX or not payload.get("name"):
            raise HubError(400, f"Bad repo type or name: {repo_type!r} {payload.get('name')!r}")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        with self._lock:
            url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"
            if (repo_type, repo_id) in self._repos:
                return json_response({"error": f"You already created this {repo_type} repo", "url": url}, 409)
            repo = self.create_repo(repo_id, repo_type, private)
        return json_response(
            {"url": url, "name": repo_id, "id": repo.commits[repo.branches["main"]].oid[:24]}
        )

    def _r_delete_repo(self, request: Request) -> Response:
        """`DELETE /api/repos/delete`."""
        self._check_token(request)
        payload = request.json() or {}
        key = (
            payload.get("type") or "model",
            f"{payload.get('organization') or self.user}/{payload.get('name')}",
        )
        with self._lock:
            if self._repos.pop(key, None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
        return json_response({})

    def _r_validate_yaml(self, request: Request) -> Response:
        """`POST /api/validate-yaml`: 400 with `errors` when the card's YAML header does not parse."""
        content = str((request.json() or {}).get("content", ""))
        errors: list[dict[str, str]] = []
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        if match:
            try:
                import yaml
            except ImportError:  # pragma: no cover - pyyaml is a dependency of the project
                yaml = None
            if yaml is not None:
                try:
                    meta = yaml.safe_load(match.group(1))
                    if meta is not None and not isinstance(meta, dict):
                        errors.append({"message": "metadata must be a YAML mapping"})
                except yaml.YAMLError as exc:
                    errors.append({"message": f"invalid YAML: {exc}"})
        return json_response({"errors": errors, "warnings": []}, 400 if errors else 200)

    def _r_repo_info(self, request: Request, kind: str, ns: str, name: str, rev: str = "main") -> Response:
        """`GET /api/{kind}/{repo}[/revision/{rev}]`: `sha`, `siblings` and some metadata."""
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            commit = self._get_commit(repo, rev)
            siblings = []
            for path, blob in sorted(commit.files.items()):
                sibling: dict[str, Any] = {"rfilename": path, "size": len(blob.data), "blobId": blob.oid}
                if blob.lfs:
                    pointer = Blob.pointer_for(blob.sha256, len(blob.data))
                    sibling["lfs"] = {
                        "size": len(blob.data),
                        "sha256": blob.sha256,
                        "pointerSize": len(pointer),
                    }
                siblings.append(sibling)
            return json_response(
                {
                    "_id": hashlib.sha1(repo.key.encode()).hexdigest()[:24],
                    "id": repo.repo_id,
                    "author": repo.repo_id.split("/")[0],
                    "sha": commit.oid,
                    "private": repo.private,
                    "gated": False,
                    "disabled": False,
                    "createdAt": repo.created_at,
                    "lastModified": repo.commits[repo.branches["main"]].date,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "siblings": siblings,
                }
            )

    def _r_tree(self, request: Request, kind: str, ns: str, name: str, rev: str, path: str = "") -> Response:
        """`GET /api/{kind}/{repo}/tree/{rev}[/{path}]?recursive=&expand=`: one page, all items."""
        recursive = _truthy(request.query.get("recursive"))
        expand = _truthy(request.query.get("expand"))
        base = unquote(path).strip("/")
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            commit = self._get_commit(repo, rev)
            folders = commit.folders()
            if base and base not in folders:
                raise HubError(404, f"{base} does not exist on {rev}", "EntryNotFound")
            prefix = base + "/" if base else ""
            items = [
                p
                for p in sorted(folders | set(commit.files))
                if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])
            ]
            return json_response([self._entry(repo, commit, p, expand) for p in items])

    def _r_paths_info(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        """`POST /api/{kind}/{repo}/paths-info/{rev}` (form or JSON `paths`, `expand`): known paths only."""
        form = request.form()
        expand = _truthy(form.get("expand"))
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            commit = self._get_commit(repo, rev)
            known = commit.folders() | set(commit.files)
            paths = [p.strip("/") for p in form.get("paths", [])]
            return json_response([self._entry(repo, commit, p, expand) for p in paths if p in known])

    def _r_refs(self, request: Request, kind: str, ns: str, name: str) -> Response:
        """`GET /api/{kind}/{repo}/refs`: branches (no tags, converts or PRs)."""
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()
            ]
        return json_response({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def _r_commits(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        """`GET /api/{kind}/{repo}/commits/{rev}`: the history, newest first, one page."""
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            history = repo.history(self._get_commit(repo, rev))
        return json_response(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": c.author}],
                }
                for c in history
            ]
        )

    def _r_create_branch(self, request: Request, kind: str, ns: str, name: str, branch: str) -> Response:
        """`POST /api/{kind}/{repo}/branch/{branch}` (optional `startingPoint`): 409 when it exists."""
        self._check_token(request)
        branch = unquote(branch)
        start = (request.json() or {}).get("startingPoint") or "main"
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            if branch in repo.branches:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            repo.branches[branch] = self._get_commit(repo, start).oid
        return json_response({})

    def _r_delete_branch(self, request: Request, kind: str, ns: str, name: str, branch: str) -> Response:
        """`DELETE /api/{kind}/{repo}/branch/{branch}`."""
        self._check_token(request)
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            if repo.branches.pop(unquote(branch), None) is None:
                raise HubError(404, f"Invalid rev id: {unquote(branch)}", "RevisionNotFound")
        return json_response({})

    def _r_preupload(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        """`POST /api/{kind}/{repo}/preupload/{rev}`: `uploadMode` per file, and the remote `oid`
        of an unchanged-mode file that exists (the client skips files whose oid did not change)."""
        self._check_token(request)
        files = (request.json() or {}).get("files") or []
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            commit = self._get_commit(repo, rev)
            answer = []
            for item in files:
                path, size = str(item["path"]), int(item.get("size", 0))
                mode = "lfs" if self._wants_lfs(path, size) else "regular"
                old = commit.files.get(path)
                oid = (
                    None
                    if old is None or old.lfs != (mode == "lfs")
                    else (old.sha256 if old.lfs else old.oid)
                )
                answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return json_response({"files": answer, "commitOid": commit.oid})

    def _r_commit(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        """`POST /api/{kind}/{repo}/commit/{rev}` (NDJSON): all-or-nothing on a branch.

        Lines: `header` (`summary`, `description`, optional `parentCommit` -> 412 if stale),
        then `file` (base64 or utf-8 `content`), `lfsFile` (`oid` of an uploaded LFS object),
        `deletedFile`, `deletedFolder` (404 `EntryNotFound` when nothing is there)."""
        self._check_token(request)
        if _truthy(request.query.get("create_pr")):
            raise HubError(400, "Pull requests are not supported by this test server")
        try:
            lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        except ValueError as exc:
            raise HubError(400, f"Invalid NDJSON: {exc}") from exc
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line must be the commit header")
        header = lines[0].get("value") or {}
        branch = unquote(rev).removeprefix("refs/heads/")
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to branches)", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent = header.get("parentCommit")
            if parent and parent != head.oid:
                raise HubError(412, f"Parent commit {parent} is not the head of {branch} ({head.oid})")
            files, changed = dict(head.files), set()
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = str(value.get("path", "")).strip("/")
                if key == "file":
                    raw = value.get("content", "")
                    data = base64.b64decode(raw) if value.get("encoding") == "base64" else str(raw).encode()
                    files[path] = Blob.of(data, lfs=False)
                    changed.add(path)
                elif key == "lfsFile":
                    data = repo.lfs_objects.get(str(value.get("oid")))
                    if data is None:
                        raise HubError(422, f"LFS object {value.get('oid')} for {path} was never uploaded")
                    files[path] = Blob.of(data, lfs=True)
                    changed.add(path)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    inside = [p for p in files if p.startswith(path + "/")]
                    if not inside:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in inside:
                        del files[p]
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            title = str(header.get("summary") or "Commit")
            commit = self._new_commit(
                repo, branch, title, str(header.get("description") or ""), files, changed
            )
            url = f"{self._web_url(repo)}/commit/{commit.oid}"
        return json_response(
            {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}
        )

    def _r_lfs_batch(self, request: Request, ns: str, name: str, prefix: str = "") -> Response:
        """`POST /{repo}.git/info/lfs/objects/batch`: "basic" upload actions (upload PUT URL,
        optional verify URL) for objects not stored yet; none for objects already there."""
        self._check_token(request)
        payload = request.json() or {}
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the LFS upload operation is supported")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "Only the basic LFS transfer is supported")
        kind = prefix or "models"
        with self._lock:
            repo = self._get_repo(kind, ns, name)
            objects = []
            for obj in payload.get("objects", []):
                oid, size = str(obj["oid"]), int(obj["size"])
                item: dict[str, Any] = {"oid": oid, "size": size}
                if not re.fullmatch(r"[0-9a-f]{64}", oid):
                    item["error"] = {"code": 422, "message": "oid must be a sha256 hex digest"}
                elif oid not in repo.lfs_objects:
                    href = f"{self.url}/_lfs/{kind}/{repo.repo_id}/{oid}"
                    item["authenticated"] = True
                    item["actions"] = {"upload": {"href": f"{href}?size={size}"}}
                    if self.lfs_verify:
                        item["actions"]["verify"] = {"href": f"{href}/verify"}
                objects.append(item)
        return json_response(
            {"transfer": "basic", "objects": objects},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _r_lfs_upload(self, request: Request, kind: str, ns: str, name: str, oid: str) -> Response:
        """`PUT /_lfs/{kind}/{repo}/{oid}`: store an LFS object (400 if sha256 or size mismatch).
        Like a presigned storage URL, it needs no token."""
        if hashlib.sha256(request.body).hexdigest() != oid:
            raise HubError(400, f"Content does not match sha256 {oid}")
        size = request.query.get("size")
        if size and int(size[0]) != len(request.body):
            raise HubError(400, f"Content has {len(request.body)} bytes, announced {size[0]}")
        with self._lock:
            self._get_repo(kind, ns, name).lfs_objects[oid] = request.body
        return Response(200, headers={"ETag": f'"{hashlib.md5(request.body).hexdigest()}"'})

    def _r_lfs_verify(self, request: Request, kind: str, ns: str, name: str, oid: str) -> Response:
        """`POST /_lfs/{kind}/{repo}/{oid}/verify` (`oid`, `size`): 404 unless stored with that size."""
        self._check_token(request)
        size = (request.json() or {}).get("size")
        with self._lock:
            data = self._get_repo(kind, ns, name).lfs_objects.get(oid)
        if data is None or (size is not None and int(size) != len(data)):
            raise HubError(404, f"LFS object {oid} not found")
        return json_response({"message": "ok"})

    def _r_resolve(
        self, request: Request, ns: str, name: str, rev: str, path: str, prefix: str = ""
    ) -> Response:
        """`HEAD`/`GET /[datasets/]{repo}/resolve/{rev}/{path}`: the file, served directly (no
        CDN redirect), with `ETag`, `X-Repo-Commit`, and `X-Linked-Etag`/`X-Linked-Size` for LFS
        blobs; single `Range: bytes=` requests answer 206."""
        with self._lock:
            repo = self._get_repo(prefix or "models", ns, name)
            commit = self._get_commit(repo, rev)
            blob = commit.files.get(unquote(path))
        commit_header = {"X-Repo-Commit": commit.oid}
        if blob is None:
            raise HubError(404, f"Entry not found: {unquote(path)}", "EntryNotFound", commit_header)
        headers = {
            **commit_header,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if blob.lfs:
            headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))}
        data, status = blob.data, 200
        spec = request.headers.get("range", "")
        if spec and request.method == "GET":
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
            total = len(data)
            if match is None or match.groups() == ("", ""):
                raise HubError(
                    416, f"Unsupported range {spec!r}", headers={"Content-Range": f"bytes */{total}"}
                )
            first, last = match.groups()
            start = int(first) if first else max(total - int(last), 0)
            end = min(int(last), total - 1) if first and last else total - 1
            if start >= total or start > end:
                raise HubError(
                    416, f"Range {spec!r} not satisfiable", headers={"Content-Range": f"bytes */{total}"}
                )
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        headers["Content-Length"] = str(len(data))
        return Response(status, data, headers)


def hub_env(server: HubServer, tmp_path: str | Path) -> dict[str, str]:
    """Environment variables that point a fresh process's `huggingface_hub` (and timm, datasets)
    at `server`, with caches under `tmp_path/hf_home`. Merge them into `os.environ` for a
    subprocess: `HF_ENDPOINT` is read when `huggingface_hub` is imported."""
    home = Path(tmp_path) / "hf_home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "HF_ENDPOINT": server.url,
        "HF_TOKEN": server.token or "hf_test_token",
        "HF_HOME": str(home),
        # explicit, so that cache variables inherited from the parent cannot point elsewhere
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }


def run_client(server: HubServer, tmp_path: str | Path, script: str, timeout: float = 300, **env: str) -> Any:
    """Run ``script`` in a fresh interpreter pointed at ``server`` (see :func:`hub_env`), from the repository
    root with ``WORK`` = ``tmp_path``; its last stdout line parsed as JSON (None when it printed nothing)."""
    import os
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=root, capture_output=True, text=True,
                          env={**os.environ, **hub_env(server, tmp_path), "WORK": str(tmp_path), **env}, timeout=timeout)
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None


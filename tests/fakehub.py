"""A loopback Hugging Face Hub for tests: the real huggingface_hub client talks to it over HTTP.

Serves what `angel pull` asks for:
  GET /api/models/{org}/{name}[/revision/{rev}]?blobs=true  -> {"id", "sha", "siblings": [{rfilename, size, blobId,
                                                               lfs: {size, sha256, pointerSize}}]}
  GET /api/models/{org}/{name}/tree/{rev}?recursive=true -> [{type, path, size, oid, lfs: {oid, size, pointerSize}}]
  GET|HEAD /{org}/{name}/resolve/{rev}/{path}                -> file bytes, ETag (sha256 for LFS, git sha1
                                                               otherwise), X-Repo-Commit, Accept-Ranges, Range
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) as the real hub does.

Fault injection per file path: `hub.script[path] = [action, ...]`, one action consumed per GET of that file:
  ("cut", n)        send headers for the whole body, then n bytes, then drop the connection
  ("status", code)  answer with that HTTP status
  ("corrupt",)      send the body with one byte flipped
  ("ignore_range",) answer 200 with the whole file even when a Range was asked
Every request is logged in `hub.log` as (method, path, range header or None). Binds 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo -> {"refs": {name: commit}, "commits": {commit: {path: bytes}}}
        self.script: dict[str, list[tuple]] = {}
        self.omit_sizes = False
        self.throttle = 0  # bytes per second per download; 0 = unlimited
        self.log: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ content

    def add_commit(self, repo: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> None:
        r = self.repos.setdefault(repo, {"refs": {}, "commits": {}})
        r["commits"][commit] = dict(files)
        for ref in refs:
            r["refs"][ref] = commit

    def gets(self, path: str) -> list[str | None]:
        """Range headers of every GET of a file path (None: no Range)."""
        with self.lock:
            return [rng for method, p, rng in self.log if method == "GET" and p.endswith("/" + path)
                    and "/resolve/" in p]

    def resolve_gets(self) -> list[str]:
        with self.lock:
            return [p for method, p, _ in self.log if method == "GET" and "/resolve/" in p]

    def api_calls(self) -> int:
        with self.lock:
            return sum(1 for _, p, _ in self.log if p.startswith("/api/"))

    # ------------------------------------------------------------ HTTP

    def _commit(self, repo: str, rev: str) -> str | None:
        r = self.repos[repo]
        if rev in r["commits"]:
            return rev
        return r["refs"].get(rev)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None) -> None:
        body = json.dumps({"error": code or "error"}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self.lock:
            self.log.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            rev = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
            if repo not in self.repos:
                return self._error(h, 404, "RepoNotFound")
            if len(parts) >= 6 and parts[4] == "tree":  # /api/models/{repo}/tree/{rev}: flat file list
                commit = self._commit(repo, parts[5])
                if commit is None:
                    return self._error(h, 404, "RevisionNotFound")
                return self._send_json(h, self._tree(repo, commit))
            commit = self._commit(repo, rev)
            if commit is None:
                return self._error(h, 404, "RevisionNotFound")
            info = self._info(repo, commit)
            if self.omit_sizes:  # like a mirror that drops file metadata from model_info
                info["siblings"] = [{"rfilename": s["rfilename"]} for s in info["siblings"]]
            return self._send_json(h, info)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, rel = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo not in self.repos:
                return self._error(h, 404, "RepoNotFound")
            commit = self._commit(repo, rev)
            if commit is None:
                return self._error(h, 404, "RevisionNotFound")
            files = self.repos[repo]["commits"][commit]
            if rel not in files:
                return self._error(h, 404, "EntryNotFound")
            return self._send_file(h, head, commit, rel, files[rel])
        return self._error(h, 404, None)

    def _info(self, repo: str, commit: str) -> dict:
        siblings = []
        for rel, data in sorted(self.repos[repo]["commits"][commit].items()):
            s = {"rfilename": rel, "size": len(data), "blobId": git_sha1(data)}
            if rel.endswith(LFS_SUFFIXES):
                s["lfs"] = {"size": len(data), "sha256": sha256(data), "pointerSize": 134}
            siblings.append(s)
        return {"id": repo, "modelId": repo, "sha": commit, "private": False, "siblings": siblings}

    def _tree(self, repo: str, commit: str) -> list[dict]:
        out = []
        for s in self._info(repo, commit)["siblings"]:
            entry = {"type": "file", "path": s["rfilename"], "size": s["size"], "oid": s["blobId"]}
            if "lfs" in s:
                entry["lfs"] = {"oid": s["lfs"]["sha256"], "size": s["size"], "pointerSize": 134}
            out.append(entry)
        return out

    def _send_json(self, h: BaseHTTPRequestHandler, obj: dict | list) -> None:
        body = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _send_file(self, h: BaseHTTPRequestHandler, head: bool, commit: str, rel: str, data: bytes) -> None:
        action: tuple = ()
        if not head:
            with self.lock:
                queue = self.script.get(rel)
                if queue:
                    action = queue.pop(0)
        if action and action[0] == "status":
            return self._error(h, action[1], None)
        etag = sha256(data) if rel.endswith(LFS_SUFFIXES) else git_sha1(data)
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and action[:1] != ("ignore_range",):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status = 206
        body = data[start:]
        if action[:1] == ("corrupt",) and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        h.send_response(status)
        h.send_header("ETag", f'"{etag}"')
        h.send_header("X-Repo-Commit", commit)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        if action[:1] == ("cut",):
            h.wfile.write(body[: action[1]])
            h.wfile.flush()
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        step = 65536
        for i in range(0, len(body), step):
            try:
                h.wfile.write(body[i:i + step])
            except OSError:  # the client went away (e.g. interrupted)
                return
            if self.throttle:
                time.sleep(step / self.throttle)


def closed_port_url() -> str:
    """An http://127.0.0.1:PORT URL where nothing listens (connection refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"

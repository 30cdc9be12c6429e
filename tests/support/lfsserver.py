"""A git + Git LFS server on loopback for codebase tests.

    repo = lfs_repo(factory, {"model.bin": weights})    # objects land in <name>.git/lfs/objects
    with GitLfsHttpServer(factory.root) as server:
        url = server.url("lfs")                          # http://127.0.0.1:<port>/lfs.git
        server.href = lambda oid: f"http://127.0.0.2:{port}/{oid}"   # send downloads elsewhere

Smart git http as in `GitHttpServer`, plus the LFS batch API at `<repo>.git/info/lfs/objects/
batch` (basic transfer, download only) and the objects at `/lfs-objects/<repo>/<oid>`.
`batch_requests` counts batch calls; `body_override` replaces every object's bytes (a server
that serves something other than what the pointer names).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path

from tests.support.gitserver import LOOPBACK, GitHttpServer, _GitHttpHandler

BATCH_SUFFIX = ".git/info/lfs/objects/batch"
OBJECTS_PREFIX = "/lfs-objects/"


class GitLfsHttpServer(GitHttpServer):
    def __init__(self, root: Path) -> None:
        super().__init__(root, smart=True)
        self.href: Callable[[str], str] | None = None
        self.body_override: bytes | None = None
        self.batch_requests = 0
        self.object_requests = 0

    def store(self, repo: str, oid: str) -> Path:
        return self.root / f"{repo}.git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def start(self) -> None:
        server = self

        class Handler(_GitHttpHandler):
            project_root = server.root
            smart_http = True

            def do_POST(self) -> None:
                if self.path.endswith(BATCH_SUFFIX):
                    server._batch(self)
                else:
                    super().do_POST()

            def do_GET(self) -> None:
                if self.path.startswith(OBJECTS_PREFIX):
                    server._object(self)
                else:
                    super().do_GET()

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _batch(self, handler: _GitHttpHandler) -> None:
        self.batch_requests += 1
        repo = handler.path.lstrip("/")[: -len(BATCH_SUFFIX)]
        request = json.loads(handler._body())
        objects = []
        for obj in request.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            if not self.store(repo, oid).is_file():
                objects.append(
                    {"oid": oid, "size": size, "error": {"code": 404, "message": "not found"}}
                )
                continue
            href = self.href(oid) if self.href else self.url_of(repo, oid)
            objects.append({"oid": oid, "size": size, "actions": {"download": {"href": href}}})
        _reply(handler, 200, json.dumps({"transfer": "basic", "objects": objects}).encode())

    def url_of(self, repo: str, oid: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{OBJECTS_PREFIX}{repo}/{oid}"

    def _object(self, handler: _GitHttpHandler) -> None:
        self.object_requests += 1
        repo, _, oid = handler.path[len(OBJECTS_PREFIX) :].partition("/")
        path = self.store(repo, oid)
        if not path.is_file():
            _reply(handler, 404, b"")
            return
        data = self.body_override if self.body_override is not None else path.read_bytes()
        _reply(handler, 200, data, "application/octet-stream")


def _reply(
    handler: _GitHttpHandler,
    status: int,
    body: bytes,
    content_type: str = "application/vnd.git-lfs+json",
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)

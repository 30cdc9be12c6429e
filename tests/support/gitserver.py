"""Real git repositories and servers on loopback for codebase (T3) tests.

    factory = RepoFactory(tmp_path)
    repo = factory.create("demo")
    sha = repo.commit({"training/Dockerfile": "FROM heldout/base:bookworm\\n"})
    repo.tag("v1")
    with GitDaemon(factory.root) as daemon:
        url = daemon.url("demo")          # git://127.0.0.1:<port>/demo.git
    with GitHttpServer(factory.root) as http:
        url = http.url("demo")            # http://127.0.0.1:<port>/demo.git (smart)

Repositories are bare (`<root>/<name>.git`), filled from a scratch work tree and pushed with
`--mirror` after each change. Servers listen on 127.0.0.1 only. git runs with an isolated
HOME and no system config, so a developer's own git settings cannot change what is built.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.workers import free_port

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Link:
    """A symlink to commit: `repo.commit({"a": Link("../x")})`."""

    target: str


@dataclass(frozen=True)
class Executable:
    """A file committed with mode 100755."""

    content: str | bytes


FileSpec = str | bytes | Link | Executable | None  # None deletes the path


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout_s} s")


class RepoFactory:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._scratch = self.root.parent / f".{self.root.name}-work"
        self._home = self.root.parent / f".{self.root.name}-home"
        self._scratch.mkdir(exist_ok=True)
        self._home.mkdir(exist_ok=True)
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self._home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "LC_ALL": "C",
            "GIT_AUTHOR_NAME": "Test Team",
            "GIT_AUTHOR_EMAIL": "team@example.org",
            "GIT_COMMITTER_NAME": "Test Team",
            "GIT_COMMITTER_EMAIL": "team@example.org",
        }

    def git(self, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run(
            ["git", "-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def create(self, name: str) -> Repo:
        bare = self.root / f"{name}.git"
        work = self._scratch / name
        self.git("init", "-q", "--bare", str(bare))
        self.git("init", "-q", str(work))
        self.git("remote", "add", "origin", str(bare), cwd=work)
        return Repo(self, name, bare, work)


class Repo:
    def __init__(self, factory: RepoFactory, name: str, bare: Path, work: Path) -> None:
        self.factory = factory
        self.name = name
        self.path = bare
        self.work = work

    @property
    def file_url(self) -> str:
        return f"file://{self.path}"

    def git(self, *args: str) -> str:
        return self.factory.git(*args, cwd=self.work)

    def commit(
        self, files: Mapping[str, FileSpec], message: str = "change", *, push: bool = True
    ) -> str:
        for rel, spec in files.items():
            target = self.work / rel
            if spec is None:
                self.git("rm", "-q", "-r", "--", rel)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_file():
                target.unlink()
            if isinstance(spec, Link):
                os.symlink(spec.target, target)
            else:
                content = spec.content if isinstance(spec, Executable) else spec
                data = content.encode() if isinstance(content, str) else content
                target.write_bytes(data)
                target.chmod(0o755 if isinstance(spec, Executable) else 0o644)
            self.git("add", "--", rel)
        self.git("commit", "-q", "--allow-empty", "-m", message)
        if push:
            self.push()
        return self.sha("HEAD")

    def branch(self, name: str, at: str = "HEAD", *, checkout: bool = False) -> None:
        self.git("branch", "-f", name, at)
        if checkout:
            self.git("checkout", "-q", name)
        self.push()

    def checkout(self, name: str) -> None:
        self.git("checkout", "-q", name)

    def tag(self, name: str, at: str = "HEAD", *, message: str | None = None) -> None:
        """A lightweight tag, or an annotated one when `message` is given."""
        if message is None:
            self.git("tag", "-f", name, at)
        else:
            self.git("tag", "-f", "-a", "-m", message, name, at)
        self.push()

    def sha(self, ref: str) -> str:
        return self.git("rev-parse", f"{ref}^{{commit}}")

    def push(self) -> None:
        self.git("push", "-q", "--mirror", "origin")
        # Dumb http serves files as they are; it needs info/refs and objects/info/packs.
        self.factory.git("update-server-info", cwd=self.path)


# ---------------------------------------------------------------------------------------------
# Ready-made repositories for the intake tests


def codebase_repo(factory: RepoFactory, name: str = "codebase") -> Repo:
    """STOIC final-phase layout: training/ and inference/, each with a Dockerfile."""
    repo = factory.create(name)
    repo.commit(
        {
            "README.md": "a codebase\n",
            "training/Dockerfile": "FROM heldout/base:bookworm\nCOPY train.py /opt/\n",
            "training/train.py": "print('training')\n",
            "inference/Dockerfile": "FROM heldout/base:bookworm\nCOPY . /opt/algorithm/\n",
            "inference/process.py": "print('inference')\n",
        },
        "initial layout",
    )
    return repo


def big_file_repo(factory: RepoFactory, size_bytes: int, name: str = "big") -> Repo:
    """A repository with one incompressible file of `size_bytes` (random data)."""
    repo = factory.create(name)
    repo.commit({"training/weights.bin": os.urandom(size_bytes)}, "add weights")
    return repo


def compressible_bomb_repo(factory: RepoFactory, size_bytes: int, name: str = "bomb") -> Repo:
    """A tiny pack that checks out to `size_bytes` of zeros."""
    repo = factory.create(name)
    repo.commit({"zeros.bin": bytes(size_bytes)}, "add zeros")
    return repo


def hook_repo(factory: RepoFactory, marker: Path, name: str = "hooks") -> Repo:
    """Hooks that would `touch marker` if any git step on the cloning side ran them.

    The scripts are committed under the names a careless setup would run (`.githooks/`,
    `hooks/`, `.husky/`), and also installed in the served repository's own hooks directory.
    """
    script = f"#!/bin/sh\ntouch '{marker}'\n"
    repo = factory.create(name)
    hook_names = ("post-checkout", "post-merge", "post-rewrite", "reference-transaction")
    files: dict[str, FileSpec] = {"README.md": "hooks\n"}
    for directory in (".githooks", "hooks", ".husky"):
        for hook in hook_names:
            files[f"{directory}/{hook}"] = Executable(script)
    repo.commit(files, "add hooks")
    server_hooks = repo.path / "hooks"
    server_hooks.mkdir(exist_ok=True)
    for hook in (*hook_names, "pre-upload-pack", "post-upload-pack"):
        (server_hooks / hook).write_text(script)
        (server_hooks / hook).chmod(0o755)
    return repo


def outside_symlink_repo(factory: RepoFactory, target: str, name: str = "outlink") -> Repo:
    repo = factory.create(name)
    repo.commit({"README.md": "links\n", "training/data": Link(target)}, "add link")
    return repo


def chained_symlink_repo(factory: RepoFactory, name: str = "chain") -> Repo:
    """`sub/up -> ..` stays inside; `sub/escape -> up/../etc` looks inside but is not."""
    repo = factory.create(name)
    repo.commit(
        {
            "sub/file.txt": "x\n",
            "sub/up": Link(".."),
            "sub/escape": Link("up/../etc"),
        },
        "links",
    )
    return repo


def git_lfs_installed() -> bool:
    return shutil.which("git-lfs") is not None


def lfs_repo(factory: RepoFactory, files: Mapping[str, bytes], name: str = "lfs") -> Repo:
    """`*.bin` tracked by Git LFS; the objects are pushed into the bare repository's own LFS
    store, which git-lfs reads directly for file:// remotes. Needs git-lfs installed."""
    repo = factory.create(name)
    repo.git("lfs", "install", "--local")
    repo.commit({".gitattributes": "*.bin filter=lfs diff=lfs merge=lfs -text\n", **files})
    return repo


# ---------------------------------------------------------------------------------------------
# Servers


class _Server:
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class GitDaemon(_Server):
    """`git daemon --export-all` over `root`, on 127.0.0.1 and a free port."""

    def __init__(self, root: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"git://{LOOPBACK}:{self.port}/{name}.git"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                f"--base-path={self.root}",
                f"--listen={LOOPBACK}",
                f"--port={self.port}",
                *self.extra_args,
                str(self.root),
            ],
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1",
                 "HOME": str(self.root)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None


class GitHttpServer(_Server):
    """Serves `root` over http on 127.0.0.1: smart (git http-backend as CGI) or dumb (files).

    Dumb http cannot fetch shallow or by sha, which exercises the clone's full-fetch fallback.
    """

    def __init__(self, root: Path, *, smart: bool = True) -> None:
        self.root = Path(root)
        self.smart = smart
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{name}.git"

    def start(self) -> None:
        root, smart = self.root, self.smart

        class Handler(_GitHttpHandler):
            project_root = root
            smart_http = smart

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class _GitHttpHandler(BaseHTTPRequestHandler):
    project_root: Path
    smart_http: bool

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        path = urllib.parse.unquote(path)
        if self.smart_http:
            self._cgi(path, query)
        else:
            self._static(path)

    def _static(self, path: str) -> None:
        file = (self.project_root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.project_root.resolve()) or not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _cgi(self, path: str, query: str) -> None:
        body = self._body()
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.project_root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["HTTP_GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        proc = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        out = proc.stdout
        sep = out.find(b"\r\n\r\n")
        head, payload = (out[:sep], out[sep + 4 :]) if sep >= 0 else out.split(b"\n\n", 1)
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            if key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class SilentServer(_Server):
    """Accepts TCP connections on 127.0.0.1 and never answers: a hung git host."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self.port = 0

    def url(self, name: str) -> str:
        return f"git://{LOOPBACK}:{self.port}/{name}.git"

    def start(self) -> None:
        self._sock = socket.socket()
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(16)  # the kernel completes handshakes; nobody ever reads
        self.port = int(self._sock.getsockname()[1])

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class RedirectServer(_Server):
    """Redirects every request to `location` + its path: a moved or hostile repository.

    `location` is a base URL ending in "/" (e.g. another server's http://127.0.0.1:PORT/)."""

    def __init__(self, location: str, status: int = 301) -> None:
        self.location = location
        self.status = status
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{name}.git"

    def start(self) -> None:
        location, status = self.location, self.status

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Location", location + self.path.lstrip("/"))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = int(self._httpd.server_address[1])
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

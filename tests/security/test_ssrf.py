"""Hole 3, SSRF: a participant's repository URL (and its LFS objects) must not make the server
or a worker connect to anything but globally routable addresses (or networks an organizer
allowed), the address checked must be the address connected to, and what a server answers
never comes back to the participant verbatim.

Only loopback is ever reached: real `git daemon` / git http servers on 127.0.0.1, listeners
that count connections, and names under `.example` (reserved: the system never resolves them)
answered by an injected resolver. Where a pinned connection must fail, it is pinned to a
TEST-NET-1 address (192.0.2.0/24, never routed) with a short timeout.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server import dispatch
from server.app import create_app
from server.codebases import git
from server.codebases.addresses import AddressPolicy
from server.codebases.git import (
    URL_FIELD,
    CodebaseError,
    resolve_ref,
    validate_repository_url,
)
from server.config import Settings
from tests.support.factories import auth, codebase_challenge
from tests.support.gitserver import (
    GitDaemon,
    GitHttpServer,
    RepoFactory,
    codebase_repo,
    git_lfs_installed,
    lfs_repo,
)
from tests.support.lfsserver import GitLfsHttpServer
from tests.support.netprobe import ConnectionCounter, CountingProxy
from worker.builder import CloneError, clone

MB = 1_000_000
LOOPBACK = AddressPolicy(allow_loopback=True)
# Stands in for "a public address" where a test needs one that passes the check: it is
# allowed by name, and never routed, so a connection to it fails without leaving the host.
TEST_NET = AddressPolicy(allowed_networks=(ipaddress.ip_network("192.0.2.0/24"),))
UNROUTED = "192.0.2.1"
SECRET = b"SECRET-TOKEN-42"
# A pkt-line "ERR" packet: git prints it as `fatal: remote error: <text>`.
BANNER = b"0030ERR internal-redis 7.2 " + SECRET + b" ready\n"


class Answers:
    """A resolver giving each answer in turn, then the last one forever (DNS rebinding)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, host: str) -> list[str]:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


@pytest.fixture
def repos(tmp_path: Path) -> RepoFactory:
    factory = RepoFactory(tmp_path / "repos")
    repo = codebase_repo(factory, "team")
    repo.tag("v1")
    return factory


def _submit(api: TestClient, token: str, url: str) -> Any:
    return api.post(
        "/api/v1/challenges/stoic/phases/final/submissions",
        json={"repository_url": url, "ref": "v1"},
        headers=auth(token),
    )


# ---------------------------------------------------------------------------------------------
# Through the API, default settings


@pytest.mark.parametrize("target", ["git daemon", "banner service"])
def test_mapped_loopback_is_refused_and_never_reached(
    api: TestClient, settings: Settings, tmp_path: Path, repos: RepoFactory, target: str
) -> None:
    """`git://[::ffff:127.0.0.1]:PORT/` reaches a listener on 127.0.0.1 over a dual-stack
    socket; on e7b008b it was accepted and git's reply came back in the message."""
    _, alice = codebase_challenge(api, settings, tmp_path / "data")
    with GitDaemon(repos.root) as daemon:
        probe = CountingProxy(daemon.port) if target == "git daemon" else None
        with probe or ConnectionCounter(banner=BANNER) as listener:
            url = f"git://[::ffff:127.0.0.1]:{listener.port}/team.git"
            r = _submit(api, alice, url)
            link = api.post(
                "/api/v1/challenges/stoic/phases/final/repository-link",
                json={"repository_url": url},
                headers=auth(alice),
            )
            assert listener.connections == 0
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == URL_FIELD
    assert (
        "IPv4-mapped address (::ffff:0:0/96) of a loopback address (127.0.0.0/8)"
        in (body["detail"])
    )
    assert SECRET.decode() not in r.text and "remote error" not in r.text
    assert link.status_code == 422 and "IPv4-mapped" in link.json()["detail"]
    subs = api.get("/api/v1/challenges/stoic/phases/final/submissions", headers=auth(alice))
    assert subs.json() == []


@pytest.fixture
def loopback_api(settings: Settings, sent_tasks: list[dispatch.PendingTask]) -> Iterator[Any]:
    allowed = settings.model_copy(update={"allow_loopback_repos": True})
    with TestClient(create_app(allowed)) as client:
        yield client, allowed


def test_what_a_server_answers_never_reaches_the_participant(
    loopback_api: Any, tmp_path: Path, repos: RepoFactory
) -> None:
    """Even where loopback repositories are allowed (tests, single-machine set-ups), git's
    stderr (which quotes the remote) is mapped to fixed words."""
    api, settings = loopback_api
    _, alice = codebase_challenge(api, settings, tmp_path / "data")
    with ConnectionCounter(banner=BANNER) as banner, GitDaemon(repos.root) as daemon:
        answered = _submit(api, alice, f"git://127.0.0.1:{banner.port}/x.git")
        missing = _submit(api, alice, daemon.url("no-such-repo"))
        assert banner.connections == 1
    assert answered.status_code == 422, answered.text
    assert SECRET.decode() not in answered.text and "internal-redis" not in answered.text
    assert "the server did not answer as a git repository" in answered.json()["detail"]
    assert missing.status_code == 422
    assert "repository not found" in missing.json()["detail"]
    assert "no such repository" not in missing.text  # git daemon's own words


# ---------------------------------------------------------------------------------------------
# Pinning: the address checked is the address git connects to


@pytest.mark.parametrize("transport", ["git", "http"])
def test_git_connects_to_the_pinned_address_not_its_own_lookup(
    repos: RepoFactory, tmp_path: Path, transport: str
) -> None:
    """`repo.example` resolves only through the injected resolver: that ls-remote and the
    clone succeed proves git used the pinned address (curl's resolve entry, or the git://
    URL rewritten to the checked literal) and never looked the name up itself."""
    dns = Answers(["127.0.0.1"])
    server = GitDaemon(repos.root) if transport == "git" else GitHttpServer(repos.root)
    with server:
        url = f"{transport}://repo.example:{server.port}/team.git"
        control = subprocess.run(["git", "ls-remote", url], capture_output=True, text=True,
                                 env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                                 timeout=30, check=False)  # fmt: skip
        assert control.returncode != 0  # the system cannot resolve the name
        clean = validate_repository_url(url, [], policy=LOOPBACK, resolve=dns)
        sha = resolve_ref(clean, "v1", 10, policy=LOOPBACK, resolve=dns)
        result = clone(clean, sha, tmp_path / "checkout", max_bytes=10 * MB, timeout_s=60,
                       policy=LOOPBACK, resolve=dns)  # fmt: skip
    tagged = repos.git("rev-parse", "v1^{commit}", cwd=repos.root / "team.git")
    assert result.commit == sha == tagged
    assert (tmp_path / "checkout" / "training" / "Dockerfile").is_file()


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every argv the intake's git calls used (they still run)."""
    calls: list[list[str]] = []
    original = git.run_git

    def spy(sandbox: git.GitSandbox, args: Any, **kw: Any) -> Any:
        calls.append(list(args))
        return original(sandbox, args, **kw)

    monkeypatch.setattr(git, "run_git", spy)
    return calls


def test_dns_rebinding_cannot_reach_loopback(
    repos: RepoFactory, tmp_path: Path, git_calls: list[list[str]]
) -> None:
    with GitDaemon(repos.root) as daemon, CountingProxy(daemon.port) as proxy:
        for scheme in ("git", "https"):
            url = f"{scheme}://rebind.example:{proxy.port}/team.git"
            # Checked while the name answers an allowed address, then it moves to loopback:
            # the pin resolves again, sees loopback and refuses.
            dns = Answers([UNROUTED], ["127.0.0.1"])
            assert validate_repository_url(url, [], policy=TEST_NET, resolve=dns) == url
            with pytest.raises(CodebaseError, match=r"resolves to a loopback address"):
                resolve_ref(url, "v1", 10, policy=TEST_NET, resolve=dns)
            # The name moves right after the pin: git connects to the pinned address (which
            # fails: never routed), not to where the name now points.
            dns = Answers([UNROUTED], [UNROUTED], ["127.0.0.1"])
            assert validate_repository_url(url, [], policy=TEST_NET, resolve=dns) == url
            git_calls.clear()
            with pytest.raises(CodebaseError) as info:
                resolve_ref(url, "v1", 2, policy=TEST_NET, resolve=dns)
            assert dns("rebind.example") == ["127.0.0.1"]  # where an unpinned lookup would go
            assert "did not answer" in info.value.message or "could not connect" in (
                info.value.message
            )
            (argv,) = git_calls
            pinned = (
                f"git://{UNROUTED}:{proxy.port}/team.git"
                if scheme == "git"
                else (f"http.curloptResolve=rebind.example:{proxy.port}:{UNROUTED}")
            )
            assert pinned in argv, argv
            # The worker's clone pins on its own, with the same result.
            with pytest.raises(CloneError, match="resolves to a loopback address"):
                clone(url, "a" * 40, tmp_path / f"c-{scheme}", max_bytes=MB, timeout_s=10,
                      policy=TEST_NET, resolve=Answers(["127.0.0.1"]))  # fmt: skip
        assert proxy.connections == 0


def test_worker_clone_checks_the_address_again(repos: RepoFactory, tmp_path: Path) -> None:
    """The worker runs on another machine, later, maybe with stricter settings: what the
    intake accepted is checked again before the clone connects."""
    with GitDaemon(repos.root) as daemon, CountingProxy(daemon.port) as proxy:
        url = validate_repository_url(f"git://127.0.0.1:{proxy.port}/team.git", [], policy=LOOPBACK)
        sha = resolve_ref(url, "v1", 10, policy=LOOPBACK)
        assert proxy.connections == 1
        with pytest.raises(CloneError) as info:
            clone(url, sha, tmp_path / "c", max_bytes=MB, timeout_s=30, policy=AddressPolicy())
        assert proxy.connections == 1
    assert "host '127.0.0.1' is not allowed: it is a loopback address (127.0.0.0/8)" in (
        info.value.message
    )


# ---------------------------------------------------------------------------------------------
# Git LFS: the batch API's download hrefs are checked and pinned too

needs_git_lfs = pytest.mark.skipif(
    not git_lfs_installed(), reason="git-lfs is needed to make the test repositories"
)
ONLY_127_0_0_1 = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


@pytest.fixture
def lfs_served(tmp_path: Path) -> Iterator[tuple[GitLfsHttpServer, bytes, str]]:
    if not git_lfs_installed():
        pytest.skip("git-lfs is needed to make the test repositories")
    factory = RepoFactory(tmp_path / "repos")
    weights = os.urandom(200_000)
    repo = lfs_repo(factory, {"inference/model.bin": weights, "inference/run.py": b"print(1)\n"})
    with GitLfsHttpServer(factory.root) as server:
        yield server, weights, repo.sha("HEAD")


@needs_git_lfs
def test_lfs_objects_come_through_the_pinned_endpoint(
    lfs_served: tuple[GitLfsHttpServer, bytes, str], tmp_path: Path
) -> None:
    server, weights, sha = lfs_served
    dns = Answers(["127.0.0.1"])  # the system cannot resolve the name: only the pin works
    url = f"http://lfs.example:{server.port}/lfs.git"
    dest = tmp_path / "checkout"
    result = clone(url, sha, dest, max_bytes=MB, timeout_s=60, policy=LOOPBACK, resolve=dns)
    assert (dest / "inference" / "model.bin").read_bytes() == weights
    assert result.lfs_files == 1
    assert server.batch_requests == 1 and server.object_requests == 1


@needs_git_lfs
@pytest.mark.parametrize(
    ("href", "rule"),
    [
        ("http://127.0.0.2:{port}/{oid}", "a loopback address (127.0.0.0/8)"),
        ("http://[::ffff:127.0.0.2]:{port}/{oid}", "IPv4-mapped address (::ffff:0:0/96) of a "
         "loopback address"),
        ("http://169.254.169.254/latest/meta-data/{oid}", "a link-local address"),
        ("https://10.1.2.3/{oid}", "a private address (10.0.0.0/8)"),
        ("http://localhost:{port}/{oid}", "names the loopback interface"),
    ],
)  # fmt: skip
def test_lfs_href_to_a_refused_address_is_refused(
    lfs_served: tuple[GitLfsHttpServer, bytes, str], tmp_path: Path, href: str, rule: str
) -> None:
    """git-lfs followed the batch API's hrefs to any host: a repository's LFS server could
    send the worker (not a container) to its own network."""
    server, _, sha = lfs_served
    with ConnectionCounter("127.0.0.2") as elsewhere:
        server.href = lambda oid: href.format(port=elsewhere.port, oid=oid)
        url = f"http://127.0.0.1:{server.port}/lfs.git"
        dest = tmp_path / "checkout"
        with pytest.raises(CloneError) as info:
            clone(url, sha, dest, max_bytes=MB, timeout_s=30, policy=ONLY_127_0_0_1)
        assert elsewhere.connections == 0
    assert server.batch_requests == 1 and server.object_requests == 0
    assert "Git LFS" in info.value.message and rule in info.value.message
    assert (dest / "inference" / "model.bin").read_bytes().startswith(b"version https://git-lfs")


@needs_git_lfs
def test_lfs_object_that_does_not_match_its_pointer_is_refused(
    lfs_served: tuple[GitLfsHttpServer, bytes, str], tmp_path: Path
) -> None:
    server, weights, sha = lfs_served
    url = f"http://127.0.0.1:{server.port}/lfs.git"
    for body, fragment in [(os.urandom(len(weights)), "does not match"),
                           (weights + b"x" * 1000, "larger than")]:  # fmt: skip
        server.body_override = body
        dest = tmp_path / f"c{len(body)}"
        with pytest.raises(CloneError, match=fragment):
            clone(url, sha, dest, max_bytes=MB, timeout_s=30, policy=LOOPBACK)
        assert (dest / "inference" / "model.bin").read_bytes() != body

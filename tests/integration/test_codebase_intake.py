"""Codebase (T3) intake against real git servers on loopback and the real Docker engine.

git daemon, smart http (git http-backend) and dumb http serve repositories made by
tests/support/gitserver.py; builds run on the local engine from heldout/base:bookworm
(scripts/base-image.sh builds it when absent).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from server.codebases.addresses import AddressPolicy
from server.codebases.git import (
    REF_FIELD,
    URL_FIELD,
    CodebaseError,
    resolve_ref,
    validate_repository_url,
)
from tests.support.gitserver import (
    GitDaemon,
    GitHttpServer,
    Link,
    RedirectServer,
    RepoFactory,
    SilentServer,
    big_file_repo,
    chained_symlink_repo,
    codebase_repo,
    compressible_bomb_repo,
    git_lfs_installed,
    hook_repo,
    lfs_repo,
    outside_symlink_repo,
)
from worker import builder
from worker.builder import (
    BuildError,
    CloneError,
    assemble_inference_context,
    build_image,
    clone,
)
from worker.executor.docker_engine import DockerEngine

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = AddressPolicy(allow_loopback=True)  # the servers here listen on 127.0.0.1
BASE_IMAGE = "heldout/base:bookworm"
MB = 1_000_000


class Served:
    """The repositories of this module and the servers in front of them."""

    def __init__(self, root: Path, marker: Path) -> None:
        self.factory = RepoFactory(root)
        self.marker = marker
        self.codebase = codebase_repo(self.factory)
        self.first = self.codebase.sha("HEAD")
        self.codebase.tag("v1", message="first release")  # annotated
        self.second = self.codebase.commit({"training/train.py": "print('v2')\n"}, "v2")
        self.codebase.tag("light")  # lightweight
        self.codebase.branch("feature", at=self.first)
        self.codebase.tag("feature", at=self.second)  # same name as a branch, other commit
        self.hooks = hook_repo(self.factory, marker)
        self.daemon = GitDaemon(self.factory.root)
        self.smart = GitHttpServer(self.factory.root)
        self.dumb = GitHttpServer(self.factory.root, smart=False)

    def url(self, transport: str, name: str) -> str:
        if transport == "git":
            raw = self.daemon.url(name)
        elif transport == "http":
            raw = self.smart.url(name)
        elif transport == "dumb":
            raw = self.dumb.url(name)
        else:
            raw = f"file://{self.factory.root / (name + '.git')}"
        return validate_repository_url(raw, [self.factory.root], policy=LOOPBACK)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("codebase-intake")
    s = Served(base / "repos", base / "hook-ran")
    with s.daemon, s.smart, s.dumb:
        yield s


@pytest.fixture
def factory(tmp_path: Path) -> RepoFactory:
    return RepoFactory(tmp_path / "repos")


# ---------------------------------------------------------------------------------------------
# resolve_ref


@pytest.mark.parametrize("transport", ["git", "http", "dumb", "file"])
def test_resolve_branch_tag_and_sha(served: Served, transport: str) -> None:
    url = served.url(transport, "codebase")
    repo = served.codebase
    assert resolve_ref(url, "main", 10, policy=LOOPBACK) == served.second
    assert resolve_ref(url, "refs/heads/main", 10, policy=LOOPBACK) == served.second
    assert resolve_ref(url, "HEAD", 10, policy=LOOPBACK) == served.second
    # An annotated tag resolves to its commit, not to the tag object.
    tag_object = repo.git("rev-parse", "v1")
    assert tag_object != served.first
    assert resolve_ref(url, "v1", 10, policy=LOOPBACK) == served.first
    assert resolve_ref(url, "refs/tags/v1", 10, policy=LOOPBACK) == served.first
    assert resolve_ref(url, "light", 10, policy=LOOPBACK) == served.second
    # Abbreviated and full shas of advertised commits.
    assert resolve_ref(url, served.second[:10], 10, policy=LOOPBACK) == served.second
    assert resolve_ref(url, served.first.upper()[:12], 10, policy=LOOPBACK) == served.first
    assert resolve_ref(url, served.first, 10, policy=LOOPBACK) == served.first


def test_full_sha_not_advertised_is_returned_unverified(served: Served) -> None:
    url = served.url("git", "codebase")
    unknown = "0123456789abcdef0123456789abcdef01234567"
    assert resolve_ref(url, unknown, 10, policy=LOOPBACK) == unknown
    # ...and the clone is what proves it does not exist.
    with pytest.raises(CloneError, match=f"commit {unknown} does not exist"):
        clone(url, unknown, Path(served.factory.root.parent / "unknown"), max_bytes=MB,
              timeout_s=30, policy=LOOPBACK)  # fmt: skip


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("no-such-branch", "no branch or tag named 'no-such-branch'"),
        ("refs/heads/nope", "'refs/heads/nope' does not exist"),
        ("deadbeef", "'deadbeef' is not a branch or tag"),
        ("feature", "'feature' is both a tag and a branch"),
        ("--upload-pack=touch", "must not start with '-'"),
    ],
)
def test_unusable_refs_name_the_ref(served: Served, ref: str, fragment: str) -> None:
    with pytest.raises(CodebaseError) as info:
        resolve_ref(served.url("git", "codebase"), ref, 10, policy=LOOPBACK)
    assert info.value.field == REF_FIELD
    assert fragment in info.value.message


def test_missing_repository_is_a_url_error(served: Served) -> None:
    for transport in ("git", "http"):
        with pytest.raises(CodebaseError) as info:
            resolve_ref(served.url(transport, "does-not-exist"), "main", 10, policy=LOOPBACK)
        assert info.value.field == URL_FIELD
        assert "could not list the branches and tags" in info.value.message


def test_redirects_are_not_followed(served: Served) -> None:
    """A public URL that redirects could point the server at its own network."""
    base = served.smart.url("codebase").rsplit("/", 1)[0] + "/"
    with RedirectServer(base) as redirect:
        url = validate_repository_url(redirect.url("codebase"), [], policy=LOOPBACK)
        # Control: git's default settings follow the redirect to the repository.
        control = subprocess.run(
            ["git", "ls-remote", "--", url, "refs/heads/main"],
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1"},
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        assert served.second in control.stdout
        with pytest.raises(CodebaseError) as info:
            resolve_ref(url, "main", 10, policy=LOOPBACK)
    assert info.value.field == URL_FIELD
    assert "redirects elsewhere" in info.value.message


def test_hung_server_times_out() -> None:
    with SilentServer() as silent:
        url = validate_repository_url(silent.url("x"), [], policy=LOOPBACK)
        started = time.monotonic()
        with pytest.raises(CodebaseError) as info:
            resolve_ref(url, "main", 1.5, policy=LOOPBACK)
        elapsed = time.monotonic() - started
    assert info.value.field == URL_FIELD
    assert "did not answer within 1.5 s" in info.value.message
    assert elapsed < 5


# ---------------------------------------------------------------------------------------------
# clone


@pytest.mark.parametrize(("transport", "shallow"), [("git", True), ("http", True), ("dumb", False)])
def test_clone_checks_out_the_commit(
    served: Served, tmp_path: Path, transport: str, shallow: bool
) -> None:
    url = served.url(transport, "codebase")
    dest = tmp_path / "checkout"
    result = clone(url, served.first, dest, max_bytes=10 * MB, timeout_s=60, policy=LOOPBACK)
    assert result.commit == served.first
    assert result.shallow is shallow  # dumb http cannot fetch by sha: full-fetch fallback
    assert (dest / "training" / "train.py").read_text() == "print('training')\n"
    assert (dest / "inference" / "Dockerfile").is_file()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True, check=True
    )
    assert head.stdout.strip() == served.first
    assert result.tree_bytes == sum(
        p.stat().st_size for p in dest.rglob("*") if p.is_file() and ".git" not in p.parts
    )


def test_clone_runs_no_hooks(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository ships hooks and the worker's ambient git config points at them."""
    evil_home = tmp_path / "home"
    evil_home.mkdir()
    template = tmp_path / "template"
    (template / "hooks").mkdir(parents=True)
    for hook in ("post-checkout", "reference-transaction"):
        script = template / "hooks" / hook
        script.write_text(f"#!/bin/sh\ntouch '{served.marker}'\n")
        script.chmod(0o755)
    (evil_home / ".gitconfig").write_text(
        f"[core]\n\thooksPath = .githooks\n[init]\n\ttemplateDir = {template}\n"
    )
    url = served.url("git", "hooks")
    commit = served.hooks.sha("HEAD")

    # Control: a plain clone under that config does run a hook, so the setup is live.
    control_env = {"PATH": "/usr/bin:/bin", "HOME": str(evil_home), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "clone", "-q", url, str(tmp_path / "control")], env=control_env,
                   check=True, capture_output=True)  # fmt: skip
    assert served.marker.exists()
    served.marker.unlink()

    monkeypatch.setenv("HOME", str(evil_home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(evil_home / ".gitconfig"))
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(template))
    dest = tmp_path / "checkout"
    clone(url, commit, dest, max_bytes=10 * MB, timeout_s=60, policy=LOOPBACK)
    assert (dest / ".githooks" / "post-checkout").is_file()  # checked out, never run
    assert not served.marker.exists()
    assert not (dest / ".git" / "hooks").exists()  # no template hooks either


def test_clone_size_cap_stops_the_fetch(factory: RepoFactory, tmp_path: Path) -> None:
    big_file_repo(factory, 40 * MB)
    with GitDaemon(factory.root) as daemon:
        url = validate_repository_url(daemon.url("big"), [], policy=LOOPBACK)
        commit = resolve_ref(url, "main", 10, policy=LOOPBACK)
        dest = tmp_path / "checkout"
        started = time.monotonic()
        with pytest.raises(CloneError, match="larger than the cap of 2 MB") as info:
            clone(url, commit, dest, max_bytes=2 * MB, timeout_s=60, policy=LOOPBACK)
        elapsed = time.monotonic() - started
    print(f"size cap: {info.value.message!r} after {elapsed:.2f} s")
    assert not (dest / "training" / "weights.bin").exists()
    assert builder._tree_size(dest) < 40 * MB  # killed well before the whole pack arrived


def test_clone_refuses_a_small_pack_that_checks_out_huge(
    factory: RepoFactory, tmp_path: Path
) -> None:
    compressible_bomb_repo(factory, 30 * MB)
    url = f"file://{factory.root / 'bomb.git'}"
    commit = resolve_ref(url, "main", 10, policy=LOOPBACK)
    dest = tmp_path / "checkout"
    with pytest.raises(CloneError, match=r"checks out 30 MB of files, above the cap of 5 MB"):
        clone(url, commit, dest, max_bytes=5 * MB, timeout_s=60)
    assert not (dest / "zeros.bin").exists()  # refused before checkout wrote anything


def test_clone_time_cap(factory: RepoFactory, tmp_path: Path) -> None:
    with SilentServer() as silent:
        url = validate_repository_url(silent.url("x"), [], policy=LOOPBACK)
        started = time.monotonic()
        with pytest.raises(CloneError, match="cloning took longer than 1 s"):
            clone(url, "a" * 40, tmp_path / "checkout", max_bytes=MB, timeout_s=1,
                  policy=LOOPBACK)  # fmt: skip
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../etc", "../.."])
def test_clone_refuses_links_out_of_the_tree(
    factory: RepoFactory, tmp_path: Path, target: str
) -> None:
    repo = outside_symlink_repo(factory, target)
    dest = tmp_path / "checkout"
    with pytest.raises(CloneError, match="symlink 'training/data' points outside"):
        clone(repo.file_url, repo.sha("HEAD"), dest, max_bytes=MB, timeout_s=30)
    assert not (dest / "training" / "data").is_symlink()  # refused before checkout


def test_clone_refuses_chained_links_that_resolve_outside(
    factory: RepoFactory, tmp_path: Path
) -> None:
    repo = chained_symlink_repo(factory)
    with pytest.raises(CloneError, match="symlink 'sub/escape' resolves outside"):
        clone(repo.file_url, repo.sha("HEAD"), tmp_path / "c", max_bytes=MB, timeout_s=30)


def test_clone_keeps_links_inside_the_tree(factory: RepoFactory, tmp_path: Path) -> None:
    repo = factory.create("inlinks")
    repo.commit({"shared/util.py": "X = 1\n", "training/util.py": Link("../shared/util.py")})
    dest = tmp_path / "checkout"
    clone(repo.file_url, repo.sha("HEAD"), dest, max_bytes=MB, timeout_s=30)
    assert (dest / "training" / "util.py").read_text() == "X = 1\n"


LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 12345\n"
)


def test_lfs_pointer_without_its_object_names_the_file(
    factory: RepoFactory, tmp_path: Path
) -> None:
    """git-lfs is not needed on the worker (heldout fetches LFS objects itself)."""
    repo = factory.create("lfs")
    repo.commit(
        {
            ".gitattributes": "*.pt filter=lfs diff=lfs merge=lfs -text\n",
            "inference/model.pt": LFS_POINTER,
        }
    )
    with pytest.raises(
        CloneError, match=r"1 Git LFS object\(s\) are missing .* for 'inference/model.pt'"
    ):
        clone(repo.file_url, repo.sha("HEAD"), tmp_path / "c", max_bytes=MB, timeout_s=30)


def test_lfs_attributes_without_pointers_need_no_lfs(factory: RepoFactory, tmp_path: Path) -> None:
    repo = factory.create("lfs-unused")
    repo.commit({".gitattributes": "*.pt filter=lfs\n", "train.py": "print(1)\n"})
    result = clone(repo.file_url, repo.sha("HEAD"), tmp_path / "c", max_bytes=MB, timeout_s=30)
    assert result.lfs_files == 0


needs_git_lfs = pytest.mark.skipif(
    not git_lfs_installed(), reason="git-lfs is needed to make the test repositories"
)


@needs_git_lfs
def test_lfs_files_are_pulled(factory: RepoFactory, tmp_path: Path) -> None:
    weights = os.urandom(300_000)
    repo = lfs_repo(factory, {"inference/model.bin": weights, "inference/x.py": b"print(1)\n"})
    dest = tmp_path / "checkout"
    result = clone(repo.file_url, repo.sha("HEAD"), dest, max_bytes=MB, timeout_s=60)
    assert (dest / "inference" / "model.bin").read_bytes() == weights
    assert result.lfs_files == 1
    assert result.tree_bytes >= len(weights)


@needs_git_lfs
def test_lfs_content_counts_against_the_size_cap(factory: RepoFactory, tmp_path: Path) -> None:
    repo = lfs_repo(factory, {"model.bin": os.urandom(3 * MB)})
    with pytest.raises(CloneError, match="cap of 2 MB"):
        clone(repo.file_url, repo.sha("HEAD"), tmp_path / "c", max_bytes=2 * MB, timeout_s=60)


@needs_git_lfs
def test_lfs_object_missing_on_the_server(factory: RepoFactory, tmp_path: Path) -> None:
    repo = lfs_repo(factory, {})
    # A pointer committed without its object (as after a forgotten `git lfs push`).
    repo.git("lfs", "uninstall", "--local")
    repo.commit({"model.bin": LFS_POINTER})
    with pytest.raises(CloneError, match="missing on the LFS server"):
        clone(repo.file_url, repo.sha("HEAD"), tmp_path / "c", max_bytes=MB, timeout_s=60)


# ---------------------------------------------------------------------------------------------
# Docker builds


@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine: {exc}")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "base-image.sh")], check=True)
    yield client
    client.close()


@pytest.fixture
def tag(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"heldout-test/codebase-{uuid.uuid4().hex[:12]}:build"
    yield name
    # Already gone when the build failed or the size-cap test removed it.
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.api.remove_image(name, force=True)


def _checkout(served: Served, tmp_path: Path, commit: str) -> Path:
    dest = tmp_path / "checkout"
    clone(served.url("git", "codebase"), commit, dest, max_bytes=10 * MB, timeout_s=60,
          policy=LOOPBACK)  # fmt: skip
    return dest


def _context(tmp_path: Path, dockerfile: str, name: str = "training") -> Path:
    directory = tmp_path / name
    directory.mkdir(parents=True)
    (directory / "Dockerfile").write_text(dockerfile)
    return directory


@pytest.mark.docker
def test_build_training_image(
    served: Served, tmp_path: Path, docker_client: docker.DockerClient, tag: str
) -> None:
    repo_dir = _checkout(served, tmp_path, served.second)
    labels = {"org.heldout.submission": "42", "org.heldout.commit": served.second}
    result = build_image(
        DockerEngine(docker_client), repo_dir / "training", repo_dir / "training", tag,
        timeout_s=120, max_image_bytes=2_000 * MB, network="host", labels=labels,
    )  # fmt: skip
    print(f"build: {result.duration_s:.2f} s, {result.size / MB:.1f} MB, {result.image_id}")
    assert result.image_id.startswith("sha256:") and len(result.image_id) == 71
    image = docker_client.api.inspect_image(tag)
    assert image["Id"] == result.image_id
    assert image["Size"] == result.size
    assert image["Config"]["Labels"] == labels
    assert "Step 2/" in result.log and "COPY train.py /opt/" in result.log
    out = docker_client.containers.run(tag, ["python3", "/opt/train.py"], remove=True,
                                       network_mode="none")  # fmt: skip
    assert out == b"v2\n"


@pytest.mark.docker
def test_failing_build_gives_the_step_and_the_log(
    tmp_path: Path, docker_client: docker.DockerClient, tag: str
) -> None:
    ctx = _context(
        tmp_path,
        f"FROM {BASE_IMAGE}\nRUN echo preparing\nRUN python3 -c 'import torch'\nRUN true\n",
    )
    with pytest.raises(BuildError) as info:
        build_image(DockerEngine(docker_client),
                    ctx, ctx, tag, timeout_s=120, max_image_bytes=2_000 * MB,
                    network="none")  # fmt: skip
    err = info.value
    assert err.message == (
        "Step 3/4 : RUN python3 -c 'import torch' failed with exit code 1 "
        "(last output: ModuleNotFoundError: No module named 'torch')"
    )
    assert "preparing" in err.log
    assert "ModuleNotFoundError" in err.log
    assert "returned a non-zero code: 1" in err.log
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.api.inspect_image(tag)


@pytest.mark.docker
@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        (
            f"FROM {BASE_IMAGE}\nRUNN x\n",
            "the engine refused the build: dockerfile parse error line 2: "
            "unknown instruction: RUNN",
        ),
        (
            f"FROM {BASE_IMAGE}\nCOPY missing /x\n",
            "Step 2/2 : COPY missing /x failed: COPY failed: file not found in build context",
        ),
    ],
)
def test_dockerfile_mistakes_are_explained(
    tmp_path: Path, docker_client: docker.DockerClient, tag: str, dockerfile: str, message: str
) -> None:
    ctx = _context(tmp_path, dockerfile)
    with pytest.raises(BuildError) as info:
        build_image(
            DockerEngine(docker_client), ctx, ctx, tag, timeout_s=60, max_image_bytes=2_000 * MB
        )
    assert info.value.message.startswith(message)


@pytest.mark.docker
def test_build_time_cap_stops_the_build(
    tmp_path: Path, docker_client: docker.DockerClient, tag: str
) -> None:
    token = uuid.uuid4().hex
    ctx = _context(tmp_path, f"FROM {BASE_IMAGE}\nRUN echo started && sleep 120 && echo {token}\n")
    started = time.monotonic()
    with pytest.raises(BuildError, match="took longer than its limit of 3 s") as info:
        build_image(DockerEngine(docker_client),
                    ctx, ctx, tag, timeout_s=3, max_image_bytes=2_000 * MB,
                    network="none")  # fmt: skip
    elapsed = time.monotonic() - started
    print(f"time cap: raised after {elapsed:.2f} s")
    assert 3 <= elapsed < 6
    assert "started" in info.value.log
    # The engine stops the RUN step once the client is gone: its container disappears.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        running = [c for c in docker_client.api.containers(all=True) if token in c["Command"]]
        if not running:
            break
        time.sleep(0.2)
    assert not running, running
    print(f"time cap: build container gone {time.monotonic() - started:.2f} s after start")


@pytest.mark.docker
def test_image_over_the_size_cap_is_removed(
    tmp_path: Path, docker_client: docker.DockerClient, tag: str
) -> None:
    ctx = _context(tmp_path, f"FROM {BASE_IMAGE}\nRUN head -c 5000000 /dev/urandom > /blob\n")
    with pytest.raises(BuildError, match=r"the image is 1\d\d(\.\d)? MB, above the cap of 50 MB"):
        build_image(DockerEngine(docker_client),
                    ctx, ctx, tag, timeout_s=120, max_image_bytes=50 * MB,
                    network="none")  # fmt: skip
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.api.inspect_image(tag)


@pytest.mark.docker
def test_dockerfile_outside_the_context_is_refused(
    tmp_path: Path, docker_client: docker.DockerClient, tag: str
) -> None:
    ctx = _context(tmp_path, f"FROM {BASE_IMAGE}\n", "training")
    other = _context(tmp_path, f"FROM {BASE_IMAGE}\n", "elsewhere")
    with pytest.raises(BuildError, match="outside the build context"):
        build_image(DockerEngine(docker_client), ctx, other, tag, timeout_s=60, max_image_bytes=MB)
    with pytest.raises(BuildError, match="no Dockerfile in 'training/sub/'"):
        (ctx / "sub").mkdir()
        build_image(
            DockerEngine(docker_client), ctx, ctx / "sub", tag, timeout_s=60, max_image_bytes=MB
        )


@pytest.mark.docker
def test_inference_image_carries_the_trained_artifacts(
    served: Served, tmp_path: Path, docker_client: docker.DockerClient, tag: str
) -> None:
    repo_dir = _checkout(served, tmp_path, served.second)
    output = tmp_path / "training-output"
    output.mkdir()
    (output / "model.txt").write_text("weights v2\n")
    ctx = assemble_inference_context(repo_dir, "inference", output, tmp_path / "inference-ctx")
    build_image(DockerEngine(docker_client),
                ctx, ctx, tag, timeout_s=120, max_image_bytes=2_000 * MB,
                network="none")  # fmt: skip
    out = docker_client.containers.run(
        tag, ["cat", "/opt/algorithm/artifact/model.txt"], remove=True, network_mode="none"
    )
    assert out == b"weights v2\n"

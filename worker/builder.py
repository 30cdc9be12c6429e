"""Codebase (T3) builder: clone a participant's repository and build its images.

Everything here handles untrusted input (a participant's repository and Dockerfiles), so each
step has a size and a time cap and fails with a `BuilderError` whose message is meant for
the participant. Build logs go back to the participant too: a build sees no private data.

Clone rules (`clone`):
- git runs in `server.codebases.git`'s hardened environment: no hooks, no system or user
  config, no credential prompts, no submodules, no LFS smudge during checkout.
- Shallow fetch of the one commit (`git fetch --depth 1 origin <sha>`); servers that refuse
  fetching by sha (or shallow fetches: dumb http) get one full fetch of branches and tags,
  after which the commit must exist, else the clone fails naming it.
- `max_bytes` caps the fetched objects (the fetch is killed once `.git` grows past it), the
  checked-out tree (summed from `git ls-tree` before anything is written, so a small pack of
  huge compressible files is caught too) and the LFS objects.
- Symlinks whose target leaves the tree are refused: checked on the tree's blobs before
  checkout and again on the files after it.
- The host is checked again here against the worker's own `AddressPolicy` and git is pinned
  to the address checked (`server.codebases.git.pin_remote`): the intake's check was made
  on another machine, earlier.
- Git LFS: when a `.gitattributes` declares `filter=lfs` and pointer files are present, the
  objects are fetched by `worker.lfs` (not git-lfs, whose connections heldout cannot pin),
  each verified against its pointer.
- git's own error text quotes the remote: messages carry fixed words, the log the detail.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from server.codebases.addresses import AddressPolicy, Resolver, system_resolver
from server.codebases.git import (
    SHA_RE,
    STRICT,
    CodebaseError,
    GitSandbox,
    GitTimeout,
    allows_file,
    classify_git_error,
    git_sandbox,
    kill_process_group,
    last_error_line,
    log_git_failure,
    pin_remote,
    run_git,
)
from worker import lfs
from worker.executor.docker_engine import DEFAULT_MAX_LOG_CHARS as DEFAULT_MAX_LOG_CHARS
from worker.executor.engine import BuilderError as BuilderError
from worker.executor.engine import BuildError as BuildError
from worker.executor.engine import Engine

log = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.1
ARTIFACT_DIRNAME = "artifact"  # contracts.md: trained /output lands in inference/artifact/


class CloneError(BuilderError):
    pass


class ArtifactError(BuilderError):
    """The trained artifacts or the inference directory cannot be assembled into a context."""


# ---------------------------------------------------------------------------------------------
# Clone


@dataclass(frozen=True)
class CloneResult:
    commit: str
    tree_bytes: int  # bytes checked out, LFS objects included
    fetched_bytes: int  # size of .git after the fetch
    shallow: bool  # False when the server refused the shallow fetch by sha
    lfs_files: int  # pointer files replaced by their Git LFS objects
    submodules: tuple[str, ...]  # gitlinks left empty (submodules are never fetched)


@dataclass(frozen=True)
class _TreeEntry:
    mode: str
    kind: str
    object_id: str
    size: int  # 0 for gitlinks
    path: str


def clone(
    url: str,
    commit: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout_s: float,
    policy: AddressPolicy = STRICT,
    resolve: Resolver = system_resolver,
) -> CloneResult:
    # long: fetch, checkout, then each check on what arrived, with its own error
    """Check out `commit` of `url` (validated by `validate_repository_url`) into `dest`.

    `policy` is this worker's (`AddressPolicy.from_settings`). Raises `CloneError` for
    anything the repository is to blame for; `dest` is then left as it was when the clone
    stopped, for the caller to remove.
    """
    if not SHA_RE.match(commit):
        raise ValueError(f"clone() needs a full 40-hex commit sha, got {commit!r}")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"clone destination {dest} is not empty")
    try:
        pinned = pin_remote(url, policy, resolve=resolve)
    except CodebaseError as exc:
        raise CloneError(f"cannot fetch {url}: {exc.message}") from None
    dest.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    cap_mb = _mb(max_bytes)

    with git_sandbox(allow_file=allows_file(url)) as sandbox:
        # --template= : no sample hooks or other template files in our .git.
        _git(sandbox, ["init", "-q", "--template=", "--", str(dest)], deadline, timeout_s)
        _git(sandbox, ["remote", "add", "--", "origin", pinned.url], deadline, timeout_s,
             cwd=dest)  # fmt: skip

        fetch = [*pinned.config, "fetch", "--quiet", "--no-tags", "--no-recurse-submodules"]
        shallow = True
        rc, err = _capped(
            sandbox, [*fetch, "--depth=1", "--", "origin", commit], dest, dest / ".git",
            deadline=deadline, timeout_s=timeout_s, max_bytes=max_bytes, what="the repository",
        )  # fmt: skip
        if rc != 0:
            # Refused fetch by sha (protocol v0 without allowReachableSHA1InWant) or shallow
            # fetches (dumb http): fetch everything once and look for the commit there.
            shallow = False
            rc, err = _capped(
                sandbox,
                [*fetch, "--", "origin", "+refs/heads/*:refs/remotes/origin/*",
                 "+refs/tags/*:refs/tags/*"],
                dest, dest / ".git",
                deadline=deadline, timeout_s=timeout_s, max_bytes=max_bytes,
                what="the repository",
            )  # fmt: skip
            if rc != 0:
                failure = classify_git_error(err)
                log_git_failure("fetch", url, failure, err)
                raise CloneError(f"could not fetch {url}: {failure.value}")
        fetched_bytes = _tree_size(dest / ".git")

        exists = _git(
            sandbox, ["cat-file", "-e", f"{commit}^{{commit}}"], deadline, timeout_s,
            cwd=dest, check=False,
        )  # fmt: skip
        if exists.returncode != 0:
            raise CloneError(f"commit {commit} does not exist in {url}")

        entries = _ls_tree(sandbox, dest, commit, deadline, timeout_s)
        tree_bytes = sum(e.size for e in entries)
        if tree_bytes > max_bytes:
            raise CloneError(
                f"commit {commit[:12]} checks out {_mb(tree_bytes)} MB of files, above the "
                f"cap of {cap_mb} MB"
            )
        _refuse_escaping_links(sandbox, dest, entries, deadline, timeout_s)

        _git(sandbox, ["checkout", "-q", "--detach", commit], deadline, timeout_s, cwd=dest)
        _check_links_on_disk(dest, entries)

        lfs_files = _pull_lfs(
            url, dest, entries, deadline=deadline, tree_bytes=tree_bytes, max_bytes=max_bytes,
            policy=policy, resolve=resolve,
        )  # fmt: skip
        if lfs_files:
            tree_bytes = _tree_size(dest, skip=".git")

    return CloneResult(
        commit=commit,
        tree_bytes=tree_bytes,
        fetched_bytes=fetched_bytes,
        shallow=shallow,
        lfs_files=lfs_files,
        submodules=tuple(e.path for e in entries if e.kind == "commit"),
    )


def _git(
    sandbox: GitSandbox,
    args: list[str],
    deadline: float,
    timeout_s: float,
    *,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise CloneError(f"cloning took longer than {timeout_s:g} s")
    try:
        proc = run_git(sandbox, args, timeout_s=remaining, cwd=cwd)
    except GitTimeout:
        raise CloneError(f"cloning took longer than {timeout_s:g} s") from None
    if check and proc.returncode != 0:
        log.warning("git %s failed: %s", args[0], last_error_line(proc.stderr))
        raise CloneError(f"git {args[0]} failed on this repository")
    return proc


def _capped(
    sandbox: GitSandbox,
    args: list[str],
    cwd: Path,
    watched: Path,
    *,
    deadline: float,
    timeout_s: float,
    max_bytes: int,
    what: str,
) -> tuple[int, bytes]:
    """Run git while `watched` stays under `max_bytes` and the deadline is ahead; kill it else.

    stderr goes to a file: an unread pipe would fill up and stall git.
    """
    with tempfile.TemporaryFile() as err, subprocess.Popen(
        sandbox.argv(*args), cwd=cwd, env=sandbox.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
    ) as proc:  # fmt: skip
        while proc.poll() is None:
            if time.monotonic() > deadline:
                kill_process_group(proc)
                raise CloneError(f"cloning took longer than {timeout_s:g} s")
            size = _tree_size(watched)
            if size > max_bytes:
                kill_process_group(proc)
                raise CloneError(
                    f"{what} is larger than the cap of {_mb(max_bytes)} MB "
                    f"(stopped after {_mb(size)} MB)"
                )
            time.sleep(POLL_INTERVAL_S)
        if _tree_size(watched) > max_bytes:  # it may have finished between two polls
            raise CloneError(f"{what} is larger than the cap of {_mb(max_bytes)} MB")
        err.seek(0)
        return proc.returncode, err.read()


def _ls_tree(
    sandbox: GitSandbox, dest: Path, commit: str, deadline: float, timeout_s: float
) -> list[_TreeEntry]:
    proc = _git(
        sandbox, ["ls-tree", "-r", "-z", "-l", "--full-tree", commit], deadline, timeout_s,
        cwd=dest,
    )  # fmt: skip
    entries = []
    for record in proc.stdout.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, kind, object_id, size = meta.decode().split()
        entries.append(
            _TreeEntry(
                mode=mode,
                kind=kind,
                object_id=object_id,
                size=int(size) if size != "-" else 0,
                path=path.decode("utf-8", "surrogateescape"),
            )
        )
    return entries


def _refuse_escaping_links(
    sandbox: GitSandbox,
    dest: Path,
    entries: list[_TreeEntry],
    deadline: float,
    timeout_s: float,
) -> None:
    links = [e for e in entries if e.mode == "120000"]
    if not links:
        return
    remaining = max(deadline - time.monotonic(), 0.001)
    batch = "".join(f"{e.object_id}\n" for e in links).encode()
    try:
        proc = run_git(sandbox, ["cat-file", "--batch"], timeout_s=remaining, cwd=dest, stdin=batch)
    except GitTimeout:
        raise CloneError(f"cloning took longer than {timeout_s:g} s") from None
    out = proc.stdout
    pos = 0
    for entry in links:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        target = out[header_end + 1 : header_end + 1 + size].decode("utf-8", "surrogateescape")
        pos = header_end + 1 + size + 1
        if _link_escapes(entry.path, target):
            raise CloneError(
                f"symlink '{entry.path}' points outside the repository ('{target}'); "
                "links must stay inside the tree"
            )


def _link_escapes(link_path: str, target: str) -> bool:
    if target.startswith("/") or not target:
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    return joined == ".." or joined.startswith("../")


def _check_links_on_disk(dest: Path, entries: list[_TreeEntry]) -> None:
    """Lexical checks miss chains (`a -> ..` inside a subdirectory); resolve for real."""
    root = dest.resolve()
    for entry in entries:
        if entry.mode != "120000":
            continue
        resolved = Path(os.path.realpath(dest / entry.path))
        if not resolved.is_relative_to(root):
            raise CloneError(
                f"symlink '{entry.path}' resolves outside the repository; "
                "links must stay inside the tree"
            )


def _pull_lfs(
    url: str,
    dest: Path,
    entries: list[_TreeEntry],
    *,
    deadline: float,
    tree_bytes: int,
    max_bytes: int,
    policy: AddressPolicy,
    resolve: Resolver,
) -> int:
    """Replace LFS pointer files with their objects; returns how many files were replaced."""
    attribute_files = [e.path for e in entries if posixpath.basename(e.path) == ".gitattributes"]
    if not any(b"filter=lfs" in (dest / p).read_bytes() for p in attribute_files):
        return 0
    candidates = [
        e.path for e in entries
        if e.kind == "blob" and e.mode != "120000" and e.size <= lfs.MAX_POINTER_BYTES
    ]  # fmt: skip
    try:
        pointers = lfs.read_pointers(dest, candidates)
        if pointers:
            lfs.fetch(url, dest, pointers, policy=policy, resolve=resolve, deadline=deadline,
                      tree_bytes=tree_bytes, max_bytes=max_bytes)  # fmt: skip
    except lfs.LfsError as exc:
        if exc.detail:
            log.warning("Git LFS for %s: %s", url, exc.detail)
        raise CloneError(exc.message) from None
    return len(pointers)


def _tree_size(root: Path, *, skip: str | None = None) -> int:
    """Apparent size of the files under `root` (links not followed); 0 if it is gone."""
    total = 0
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    if skip and current == root and entry.name == skip:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # git renames temp files as it goes
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(Path(entry.path))
                    else:
                        total += st.st_size
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------------------------
# Build


@dataclass(frozen=True)
class BuildResult:
    image_id: str  # sha256:<hex> of the image config: the content digest to pin and run
    tag: str
    size: int  # bytes, as the engine reports
    log: str
    duration_s: float


def build_image(
    engine: Engine,
    context_dir: Path,
    dockerfile_dir: Path,
    tag: str,
    *,
    timeout_s: float,
    max_image_bytes: int,
    network: str | None = None,
    labels: Mapping[str, str] | None = None,
    memory_bytes: int | None = None,
    max_log_chars: int = DEFAULT_MAX_LOG_CHARS,
) -> BuildResult:
    """Build `dockerfile_dir/Dockerfile` with `context_dir` as context and tag it `tag`.

    `network` is the build's network mode: "host" where builds need the network
    (contracts.md: they do; real codebases install dependencies), "none" to cut it, None for
    the engine's default. The build itself (streamed log, deadline, cleanup) is the
    backend's `Engine.build`; an image over `max_image_bytes` is removed again.
    """
    started = time.monotonic()
    context = Path(context_dir).resolve()
    dockerfile_dir = Path(dockerfile_dir).resolve()
    if not context.is_dir():
        raise BuildError(f"build context '{context_dir}' is not a directory", "")
    if not dockerfile_dir.is_relative_to(context):
        raise BuildError(f"'{dockerfile_dir}' is outside the build context", "")
    dockerfile = dockerfile_dir / "Dockerfile"
    if not dockerfile.is_file():
        rel = dockerfile_dir.relative_to(context.parent).as_posix()
        raise BuildError(f"there is no Dockerfile in '{rel}/'", "")
    dockerfile_rel = dockerfile.relative_to(context).as_posix()

    built = engine.build(
        context,
        dockerfile_rel,
        tag,
        timeout_s=timeout_s,
        network=network,
        labels=labels,
        memory_bytes=memory_bytes,
        max_log_chars=max_log_chars,
    )
    size = int(engine.inspect_image(built.image_id)["Size"])
    if size > max_image_bytes:
        # By tag, not id: an identical image may be in use under another tag.
        engine.remove_image(tag)
        raise BuildError(
            f"the image is {_mb(size)} MB, above the cap of {_mb(max_image_bytes)} MB",
            built.log,
        )
    return BuildResult(
        image_id=built.image_id,
        tag=tag,
        size=size,
        log=built.log,
        duration_s=time.monotonic() - started,
    )


# ---------------------------------------------------------------------------------------------
# Inference context


def assemble_inference_context(
    repo_dir: Path, inference_dir: str | Path, artifacts_dir: Path, dest: Path
) -> Path:
    """Copy the repository's `inference_dir` to `dest` and the trained artifacts (the training
    container's /output) into `dest/artifact/`, as STOIC's final phase did (contracts.md).

    Returns `dest`, a build context whose Dockerfile is the codebase's inference Dockerfile.
    Symlinks are kept as links (never followed: a trained /output could point anywhere on
    the worker); links in the artifacts must stay inside them, and anything but regular
    files, directories and such links is refused.
    """
    repo = Path(repo_dir).resolve()
    rel = Path(inference_dir)
    if rel.is_absolute() or ".." in rel.parts:
        raise ArtifactError(f"inference directory '{inference_dir}' must be a relative path")
    source = (repo / rel).resolve()
    if not source.is_relative_to(repo) or not source.is_dir():
        raise ArtifactError(f"the repository has no '{rel.as_posix()}/' directory")
    if not (source / "Dockerfile").is_file():
        raise ArtifactError(f"there is no Dockerfile in '{rel.as_posix()}/'")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"inference context destination {dest} is not empty")

    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
    artifact_dest = dest / ARTIFACT_DIRNAME
    if artifact_dest.is_symlink() or (artifact_dest.exists() and not artifact_dest.is_dir()):
        raise ArtifactError(
            f"'{rel.as_posix()}/{ARTIFACT_DIRNAME}' in the repository must be a directory "
            "(the trained artifacts are copied into it)"
        )
    artifact_dest.mkdir(exist_ok=True)
    copy_artifacts(Path(artifacts_dir), artifact_dest)
    return dest


def copy_artifacts(src_dir: Path, dst_dir: Path, rel: str = "") -> None:
    """Copy without following links; what is copied replaces what the repository had there.

    A link shipped by the repository (say `artifact/model.pt -> ../../x`) is removed before a
    file lands on its path: writing through it would write outside the context.
    """
    for src in sorted(src_dir.iterdir()):
        rel_path = f"{rel}{src.name}"
        dst = dst_dir / src.name
        st = src.lstat()
        if stat.S_ISLNK(st.st_mode):
            link = os.readlink(src)
            if _link_escapes(rel_path, link):
                raise ArtifactError(
                    f"trained artifact '{rel_path}' is a symlink to '{link}', outside the artifacts"
                )
            _clear(dst, want_dir=False, rel_path=rel_path)
            os.symlink(link, dst)
        elif stat.S_ISDIR(st.st_mode):
            _clear(dst, want_dir=True, rel_path=rel_path)
            dst.mkdir(exist_ok=True)
            copy_artifacts(src, dst, f"{rel_path}/")
        elif stat.S_ISREG(st.st_mode):
            _clear(dst, want_dir=False, rel_path=rel_path)
            shutil.copy2(src, dst, follow_symlinks=False)
        else:
            raise ArtifactError(
                f"trained artifact '{rel_path}' is not a regular file, directory or symlink"
            )


def _clear(dst: Path, *, want_dir: bool, rel_path: str) -> None:
    if dst.is_symlink():
        dst.unlink()
    elif dst.is_dir() and not want_dir:
        raise ArtifactError(
            f"trained artifact '{rel_path}' is a file but the repository has a directory there"
        )
    elif dst.exists() and not dst.is_dir() and want_dir:
        raise ArtifactError(
            f"trained artifact '{rel_path}' is a directory but the repository has a file there"
        )
    elif dst.exists() and not want_dir:
        dst.unlink()

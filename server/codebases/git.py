"""Codebase (T3) intake: check a participant's repository URL and resolve a ref to a commit.

Runs in the server at submission time, so it must never execute anything from the repository
and never wait on it for long: every git call goes through `git_sandbox`, which builds one
hardened environment (no system or user config, no hooks, no credential prompts, only
plain transports) that the worker's clone reuses.

Where git may connect is `server.codebases.addresses`'s rule (globally routable addresses,
plus networks the organizer allows); `pin_remote` checks the host again right before each
connection and makes git connect to exactly the address checked. What git prints on failure
quotes the other end, so participants get fixed words (`RemoteFailure`) and the operator log
gets the rest.

Ref resolution rule (`resolve_ref`):
- `HEAD`, a full ref name (`refs/heads/x`, `refs/tags/x`), a tag or a branch name resolve
  through `git ls-remote`; a tag resolves to the commit it points at (peeled `^{}`); a name
  that is both a tag and a branch (at different commits) is refused as ambiguous.
- A hex string of 7 to 40 characters that prefixes the commit of an advertised branch or tag
  resolves to that commit.
- A full 40-hex sha that no ref advertises is returned as-is, unverified: servers do not
  list every commit, so only the clone can prove it exists, and the worker's `clone` fails
  the build with a message naming the commit when it does not. An abbreviated sha that no
  ref advertises is refused (it cannot be expanded without a clone).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from server.codebases.addresses import (
    Address,
    AddressPolicy,
    RefusedHost,
    Resolver,
    check_host,
    system_resolver,
)

log = logging.getLogger(__name__)

URL_FIELD = "repository_url"
REF_FIELD = "ref"

MAX_URL_LENGTH = 2048
MAX_REF_LENGTH = 255
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
ABBREV_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")
# git treats `<scheme chars>::<address>` as "run git-remote-<scheme>" (ext::, fd::, ...).
REMOTE_HELPER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
# Ref names: git check-ref-format's rules, minus what can only matter locally.
BAD_REF_CHARS_RE = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")

# A fixed PATH: the sandbox inherits nothing from the caller's environment.
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_PORTS = {"https": 443, "http": 80, "git": 9418}
STRICT = AddressPolicy()  # no internal network allowed: what a default installation does


class CodebaseError(Exception):
    """A submission's repository URL or ref is unusable; `field` names the form field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class GitTimeout(Exception):
    """A sandboxed git command ran past its time limit (it was killed)."""


# ---------------------------------------------------------------------------------------------
# URL validation


def validate_repository_url(
    url: str,
    allowed_local_roots: Sequence[Path],
    *,
    policy: AddressPolicy = STRICT,
    resolve: Resolver = system_resolver,
) -> str:
    # long: every rule an address must pass, in the order errors are reported
    """Return the canonical form of a participant's repository URL or raise `CodebaseError`.

    Accepted: `https://host/path`, `git://host/path`, and (only inside `allowed_local_roots`)
    absolute local paths or `file:///path`, which come back as `file://<resolved path>`.
    The host must pass `policy` (`server.codebases.addresses`); plain `http://` only to
    loopback. This is the early, friendly check; each connection is checked again and pinned
    by `pin_remote`.
    """
    if not isinstance(url, str):
        raise CodebaseError(URL_FIELD, "must be a string")
    url = url.strip()
    if not url:
        raise CodebaseError(URL_FIELD, "is empty")
    if len(url) > MAX_URL_LENGTH:
        raise CodebaseError(URL_FIELD, f"is longer than {MAX_URL_LENGTH} characters")
    if url.startswith("-"):
        # `git ls-remote --upload-pack=...` would run a command of the participant's choice.
        raise CodebaseError(URL_FIELD, "must not start with '-' (it would be read as an option)")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise CodebaseError(URL_FIELD, "must not contain whitespace or control characters")
    if REMOTE_HELPER_RE.match(url):
        helper = url.split("::", 1)[0]
        raise CodebaseError(
            URL_FIELD, f"remote helpers such as '{helper}::' are not allowed; give an https:// URL"
        )

    if "://" not in url:
        head = url.split("/", 1)[0]
        if ":" in head:
            # git reads `[user@]host:path` as ssh (scp-like syntax).
            raise CodebaseError(
                URL_FIELD,
                "ssh addresses (user@host:path) are not supported: heldout clones public "
                "repositories over https:// and holds no credentials",
            )
        return _local_url(url, allowed_local_roots)

    scheme = url.split("://", 1)[0].lower()
    if scheme == "file":
        return _local_url(url, allowed_local_roots)
    if scheme in ("ssh", "git+ssh", "ssh+git"):
        raise CodebaseError(
            URL_FIELD,
            "ssh:// URLs are not supported: heldout clones public repositories over "
            "https:// and holds no credentials",
        )
    if scheme not in DEFAULT_PORTS:
        raise CodebaseError(
            URL_FIELD, f"scheme '{scheme}://' is not supported; use https:// or git://"
        )

    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise CodebaseError(
            URL_FIELD,
            "must not embed credentials (user@ or user:password@): only public "
            "repositories can be submitted",
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise CodebaseError(URL_FIELD, "must not have a query (?...) or fragment (#...)")
    host = parts.hostname or ""
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise CodebaseError(URL_FIELD, "has an invalid port") from None
    if not host:
        raise CodebaseError(URL_FIELD, "has no host")
    addresses = _checked(host, policy, resolve, must_resolve=False)
    if scheme == "http" and not (addresses and all(a.is_loopback for a in addresses)):
        raise CodebaseError(URL_FIELD, "plain http:// is not allowed; use https://")
    if not parts.path.strip("/"):
        raise CodebaseError(URL_FIELD, "has no repository path")
    return url


def _checked(
    host: str, policy: AddressPolicy, resolve: Resolver, *, must_resolve: bool
) -> list[Address]:
    try:
        return check_host(host, policy, resolve, must_resolve=must_resolve)
    except RefusedHost as exc:
        raise CodebaseError(URL_FIELD, exc.message) from None


# ---------------------------------------------------------------------------------------------
# Pinning: the address checked is the address connected to


@dataclass(frozen=True)
class PinnedRemote:
    """How to make git connect to one checked address: give it `url` (a git:// URL rewritten
    to the address; otherwise the URL as is) with `config` (`-c` pairs placed before the
    subcommand: curl's own resolve entry for http(s)). `address` is None for file://."""

    url: str
    config: tuple[str, ...]
    address: Address | None


def pin_remote(
    url: str, policy: AddressPolicy, *, resolve: Resolver = system_resolver
) -> PinnedRemote:
    """Resolve `url`'s host once, check that answer and pin git to it (raises `CodebaseError`).

    Call it right before each git command that connects, with the policy of the machine
    making the connection: a check made earlier or elsewhere (intake, another worker) proves
    nothing about where a name points now. git:// carries no TLS and no host check, so the
    URL names the address itself; for http(s), curl's resolve entry keeps the host name for
    TLS and the Host header. Redirects are off in `hardened_git`, so nothing else is reached.
    """
    if allows_file(url):
        return PinnedRemote(url, (), None)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        raise CodebaseError(URL_FIELD, "is not a repository URL heldout can fetch")
    host, port = parts.hostname, parts.port or DEFAULT_PORTS[scheme]
    address = _checked(host, policy, resolve, must_resolve=True)[0]
    if scheme == "http" and not address.is_loopback:
        raise CodebaseError(URL_FIELD, "plain http:// is not allowed; use https://")
    literal = f"[{address}]" if address.version == 6 else str(address)
    if scheme == "git":
        rewritten = urlunsplit(("git", f"{literal}:{port}", parts.path, "", ""))
        return PinnedRemote(rewritten, (), address)
    if _is_literal(host):
        return PinnedRemote(url, (), address)  # no lookup to pin
    _require_curlopt_resolve()
    return PinnedRemote(url, ("-c", f"http.curloptResolve={host}:{port}:{literal}"), address)


def _is_literal(host: str) -> bool:
    return ":" in host or host.replace(".", "").isdigit()


@lru_cache(maxsize=1)
def _require_curlopt_resolve() -> None:
    """`http.curloptResolve` is git 2.37's: an older git ignores it and would look the name
    up itself, so refuse to run unpinned rather than silently lose the pin."""
    out = subprocess.run(
        ["git", "version"], env={"PATH": SANDBOX_PATH, "LC_ALL": "C"},
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"(\d+)\.(\d+)", out)
    if not match or (int(match[1]), int(match[2])) < (2, 37):
        raise RuntimeError(f"heldout needs git 2.37 or newer to pin connections; found {out!r}")


def _local_url(url: str, allowed_local_roots: Sequence[Path]) -> str:
    if not allowed_local_roots:
        raise CodebaseError(
            URL_FIELD, "local repositories are not allowed here; give an https:// URL"
        )
    if url.lower().startswith("file://"):
        rest = url[len("file://") :]
        if not rest.startswith("/"):
            # file://host/path: git would hand the host part to the path; refuse it.
            raise CodebaseError(URL_FIELD, "file:// URLs must be file:///absolute/path")
        path_text = rest
    else:
        path_text = url
    if "%" in path_text:
        raise CodebaseError(URL_FIELD, "local paths must not contain percent-escapes")
    if not path_text.startswith("/"):
        raise CodebaseError(URL_FIELD, "local repository paths must be absolute")
    if ".." in Path(path_text).parts:
        raise CodebaseError(URL_FIELD, "local repository paths must not contain '..'")
    resolved = Path(path_text).resolve()  # follows symlinks: a link out of a root is caught
    for root in allowed_local_roots:
        if resolved.is_relative_to(Path(root).resolve()):
            if not resolved.is_dir():
                raise CodebaseError(URL_FIELD, f"local repository '{path_text}' does not exist")
            return f"file://{resolved}"
    raise CodebaseError(
        URL_FIELD, f"local repository '{path_text}' is outside the allowed directories"
    )


# ---------------------------------------------------------------------------------------------
# The hardened git environment (shared with the worker's clone)


@dataclass(frozen=True)
class GitSandbox:
    """How to run git without trusting anything around it; see `git_sandbox`."""

    env: dict[str, str]
    config: tuple[str, ...]  # `-c key=value` pairs, placed before the subcommand

    def argv(self, *args: str) -> list[str]:
        return ["git", *self.config, *args]


def hardened_git(home: Path, *, allow_file: bool) -> GitSandbox:
    """The environment and `-c` flags for every git call made on a participant's behalf.

    `home` should be an empty directory: git, curl and git-lfs read per-user files from it.
    `allow_file` admits file:// (organizer-local repositories); remote URLs never need it.
    """
    protocols = "https:http:git" + (":file" if allow_file else "")
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "LC_ALL": "C",  # stable English messages: callers match on them
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": "/bin/false",
        # Transports git may use at all, including for redirects and submodules.
        "GIT_ALLOW_PROTOCOL": protocols,
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_LFS_SKIP_SMUDGE": "1",  # LFS objects come only from an explicit, capped pull
        "GIT_NO_REPLACE_OBJECTS": "1",
    }
    config = (
        "protocol.ext.allow=never",
        "protocol.fd.allow=never",
        "core.hooksPath=/dev/null",
        "core.fsmonitor=false",
        "core.askPass=/bin/false",
        "credential.helper=",
        "submodule.recurse=false",
        "fetch.recurseSubmodules=false",
        # Redirects could point a public URL at the server's own network.
        "http.followRedirects=false",
        "gc.auto=0",
        "maintenance.auto=false",
        "init.defaultBranch=main",
        "advice.detachedHead=false",
    )
    return GitSandbox(env=env, config=tuple(x for pair in config for x in ("-c", pair)))


@contextmanager
def git_sandbox(*, allow_file: bool) -> Iterator[GitSandbox]:
    """`hardened_git` with a fresh empty HOME that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="heldout-git-home-") as home:
        yield hardened_git(Path(home), allow_file=allow_file)


def allows_file(url: str) -> bool:
    """Whether `url` (as returned by `validate_repository_url`) needs the file transport."""
    return url.startswith("file://")


def run_git(
    sandbox: GitSandbox,
    args: Sequence[str],
    *,
    timeout_s: float,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run one git command; on timeout kill its whole process group and raise `GitTimeout`.

    subprocess.run's own timeout kills only git itself: a git-remote-https child would keep
    the pipes open and the call would hang.
    """
    argv = sandbox.argv(*args)
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=sandbox.env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(stdin, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_process_group(proc)
            proc.communicate()
            raise GitTimeout(f"git {args[0]} ran past {timeout_s:g} s") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def kill_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started with start_new_session=True and all its children."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def last_error_line(stderr: bytes) -> str:
    """The most telling line of git's stderr (its `fatal:`/`error:` line when there is one)."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else "no message"


# ---------------------------------------------------------------------------------------------
# Ref resolution


def validate_ref(ref: str) -> str:
    """Check a ref as typed by a participant (before it reaches any git command line)."""
    if not isinstance(ref, str):
        raise CodebaseError(REF_FIELD, "must be a string")
    ref = ref.strip()
    if not ref:
        raise CodebaseError(REF_FIELD, "is empty")
    if len(ref) > MAX_REF_LENGTH:
        raise CodebaseError(REF_FIELD, f"is longer than {MAX_REF_LENGTH} characters")
    if ref.startswith("-"):
        raise CodebaseError(REF_FIELD, "must not start with '-'")
    if (
        BAD_REF_CHARS_RE.search(ref)
        or ".." in ref
        or "@{" in ref
        or "//" in ref
        or ref.startswith("/")
        or ref.endswith(("/", ".", ".lock"))
        or any(part.startswith(".") for part in ref.split("/"))
    ):
        raise CodebaseError(REF_FIELD, f"'{ref}' is not a valid branch, tag or commit name")
    return ref


def resolve_ref(
    url: str,
    ref: str,
    timeout_s: float,
    *,
    policy: AddressPolicy = STRICT,
    resolve: Resolver = system_resolver,
) -> str:
    """Resolve `ref` in the repository at `url` (already validated) to a 40-hex commit sha.

    See the module docstring for the rule. Raises `CodebaseError` naming the field at fault.
    """
    ref = validate_ref(ref)
    refs = list_remote_refs(url, timeout_s, policy=policy, resolve=resolve)

    if ref == "HEAD":
        if "HEAD" in refs:
            return refs["HEAD"]
        raise CodebaseError(REF_FIELD, f"the repository at {url} has no HEAD (is it empty?)")
    if ref.startswith("refs/"):
        if ref in refs:
            return refs[ref]
        raise CodebaseError(REF_FIELD, f"'{ref}' does not exist in {url}")

    tag = refs.get(f"refs/tags/{ref}")
    branch = refs.get(f"refs/heads/{ref}")
    if tag and branch and tag != branch:
        raise CodebaseError(
            REF_FIELD,
            f"'{ref}' is both a tag and a branch at different commits; "
            f"give refs/tags/{ref} or refs/heads/{ref}",
        )
    if tag or branch:
        return tag or branch  # type: ignore[return-value]

    if ABBREV_SHA_RE.match(ref):
        prefix = ref.lower()
        matches = {sha for sha in refs.values() if sha.startswith(prefix)}
        if len(matches) == 1:
            return matches.pop()
        if len(matches) > 1:
            raise CodebaseError(REF_FIELD, f"commit '{ref}' is ambiguous; give more characters")
        if SHA_RE.match(prefix):
            return prefix  # unverified: the clone proves it exists (module docstring)
        raise CodebaseError(
            REF_FIELD,
            f"'{ref}' is not a branch or tag of {url}, nor the abbreviated commit of one; "
            "give the full 40-character commit sha",
        )
    raise CodebaseError(REF_FIELD, f"no branch or tag named '{ref}' in {url}")


def list_remote_refs(
    url: str,
    timeout_s: float,
    *,
    policy: AddressPolicy = STRICT,
    resolve: Resolver = system_resolver,
) -> dict[str, str]:
    """`git ls-remote` of HEAD, branches and tags: ref name → commit (tags peeled)."""
    pinned = pin_remote(url, policy, resolve=resolve)
    with git_sandbox(allow_file=allows_file(url)) as sandbox:
        try:
            proc = run_git(
                sandbox,
                [*pinned.config, "ls-remote", "--", pinned.url, "HEAD", "refs/heads/*",
                 "refs/tags/*"],
                timeout_s=timeout_s,
            )  # fmt: skip
        except GitTimeout:
            raise CodebaseError(
                URL_FIELD, f"the repository at {url} did not answer within {timeout_s:g} s"
            ) from None
    if proc.returncode != 0:
        failure = classify_git_error(proc.stderr)
        log_git_failure("ls-remote", url, failure, proc.stderr)
        raise CodebaseError(
            URL_FIELD, f"could not list the branches and tags of {url}: {failure.value}"
        )

    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        sha, _, name = line.partition("\t")
        if not SHA_RE.match(sha) or not name:
            continue
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        else:
            refs[name] = sha
    refs.update(peeled)  # an annotated tag names its commit, not the tag object
    return refs


# ---------------------------------------------------------------------------------------------
# What a participant is told when git fails


class RemoteFailure(StrEnum):
    """Fixed words for a failed git command. git's stderr quotes whatever the other end
    sent (an internal service's banner, an error page), so it goes to the operator log
    (`log_git_failure`) and never to a participant."""

    not_found = "repository not found (is the URL right, and the repository public?)"
    auth_required = "the server asks for credentials; heldout only clones public repositories"
    redirect = "the server redirects elsewhere; give the repository's current URL"
    unreachable = "could not connect to the server"
    failed = "the server did not answer as a git repository"


# Matched on git's and curl's own phrasing (LC_ALL=C), first class that matches wins.
_FAILURE_PATTERNS: tuple[tuple[RemoteFailure, tuple[str, ...]], ...] = (
    (RemoteFailure.auth_required, ("could not read username", "could not read password",
                                   "authentication failed", "returned error: 401",
                                   "returned error: 403")),
    (RemoteFailure.redirect, ("returned error: 30", "redirect")),
    (RemoteFailure.not_found, ("' not found", "returned error: 404", "no such repository",
                               "does not appear to be a git repository",
                               "repository not exported")),
    (RemoteFailure.unreachable, ("could not resolve host", "failed to connect",
                                 "couldn't connect", "connection refused", "unable to connect",
                                 "network is unreachable", "no route to host",
                                 "connection timed out", "connection reset", "unable to look up")),
)  # fmt: skip


def classify_git_error(stderr: bytes) -> RemoteFailure:
    text = stderr.decode("utf-8", "replace").lower()
    for failure, patterns in _FAILURE_PATTERNS:
        if any(p in text for p in patterns):
            return failure
    return RemoteFailure.failed


def log_git_failure(what: str, url: str, failure: RemoteFailure, stderr: bytes) -> None:
    """The raw detail, for operators only."""
    log.warning("git %s of %s failed (%s): %s", what, url, failure.name, last_error_line(stderr))

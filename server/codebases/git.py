"""Codebase (T3) intake: check a participant's repository URL and resolve a ref to a commit.

Runs in the server at submission time, so it must never execute anything from the repository
and never wait on it for long: every git call goes through `git_sandbox`, which builds one
hardened environment (no system or user config, no hooks, no credential prompts, only
plain transports) that the worker's clone reuses.

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

import ipaddress
import os
import re
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

URL_FIELD = "repository_url"
REF_FIELD = "ref"

MAX_URL_LENGTH = 2048
MAX_REF_LENGTH = 255
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
ABBREV_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")
# git treats `<scheme chars>::<address>` as "run git-remote-<scheme>" (ext::, fd::, ...).
REMOTE_HELPER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
# Ref names: git check-ref-format's rules, minus what can only matter locally.
BAD_REF_CHARS_RE = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")

# A fixed PATH: the sandbox inherits nothing from the caller's environment.
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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


Resolver = Callable[[str], list[str]]


def system_resolver(host: str) -> list[str]:
    """The addresses `host` resolves to now; none when it does not resolve (ls-remote then
    fails with git's own explanation)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]).split("%", 1)[0] for info in infos})


def validate_repository_url(
    url: str,
    allowed_local_roots: Sequence[Path],
    *,
    allow_loopback: bool = False,
    resolve: Resolver = system_resolver,
) -> str:
    """Return the canonical form of a participant's repository URL or raise `CodebaseError`.

    Accepted: `https://host/path`, `git://host/path`, and (only inside `allowed_local_roots`)
    absolute local paths or `file:///path`, which come back as `file://<resolved path>`.
    `allow_loopback` (tests only) also accepts loopback hosts and plain `http://` to them;
    without it, loopback, link-local and unspecified addresses are refused so that a
    submission cannot make the server probe its own services.
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
    if scheme not in ("https", "http", "git"):
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
    loopback = _check_host(host, allow_loopback=allow_loopback, resolve=resolve)
    if scheme == "http" and not loopback:
        raise CodebaseError(URL_FIELD, "plain http:// is not allowed; use https://")
    if not parts.path.strip("/"):
        raise CodebaseError(URL_FIELD, "has no repository path")
    return url


def _check_host(host: str, *, allow_loopback: bool, resolve: Resolver) -> bool:
    """Refuse hosts that point back at the server; return whether `host` is loopback.

    A name is resolved too, so that one whose DNS points at 127.0.0.1 or the metadata
    service is refused as the address itself would be. (A name that changes its answer
    between this check and the clone is not caught here.)
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME_RE.match(host):
            raise CodebaseError(URL_FIELD, f"host '{host}' is not a valid host name") from None
        name = host.lower().rstrip(".")
        loopback = name == "localhost" or name.endswith(".localhost")
        if loopback and not allow_loopback:
            raise CodebaseError(URL_FIELD, f"host '{host}' is not allowed") from None
        for resolved in resolve(name):
            shown = f"host '{host}' resolves to {resolved}, which"
            loopback |= _check_address(ipaddress.ip_address(resolved), shown, allow_loopback)
        return loopback
    return _check_address(address, f"host '{host}'", allow_loopback)


def _check_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, shown: str, allow_loopback: bool
) -> bool:
    if address.is_loopback:
        if not allow_loopback:
            raise CodebaseError(URL_FIELD, f"{shown} is not allowed")
        return True
    if address.is_link_local or address.is_unspecified or address.is_multicast:
        # Link-local holds cloud metadata services (169.254.169.254).
        raise CodebaseError(URL_FIELD, f"{shown} is not allowed")
    return False


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


def resolve_ref(url: str, ref: str, timeout_s: float) -> str:
    """Resolve `ref` in the repository at `url` (already validated) to a 40-hex commit sha.

    See the module docstring for the rule. Raises `CodebaseError` naming the field at fault.
    """
    ref = validate_ref(ref)
    refs = list_remote_refs(url, timeout_s)

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


def list_remote_refs(url: str, timeout_s: float) -> dict[str, str]:
    """`git ls-remote` of HEAD, branches and tags: ref name → commit (tags peeled)."""
    with git_sandbox(allow_file=allows_file(url)) as sandbox:
        try:
            proc = run_git(
                sandbox,
                ["ls-remote", "--", url, "HEAD", "refs/heads/*", "refs/tags/*"],
                timeout_s=timeout_s,
            )
        except GitTimeout:
            raise CodebaseError(
                URL_FIELD, f"the repository at {url} did not answer within {timeout_s:g} s"
            ) from None
    if proc.returncode != 0:
        raise CodebaseError(URL_FIELD, _explain_remote_failure(url, proc.stderr))

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


def _explain_remote_failure(url: str, stderr: bytes) -> str:
    line = last_error_line(stderr)
    lowered = line.lower()
    if "could not read username" in lowered or "authentication" in lowered:
        return (
            f"the repository at {url} asks for credentials; heldout only clones public repositories"
        )
    if "redirect" in lowered or " 301" in lowered or " 302" in lowered:
        return f"{url} redirects elsewhere; give the repository's current URL ({line})"
    return f"could not list the branches and tags of {url}: {line}"

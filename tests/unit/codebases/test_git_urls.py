"""Repository URL and ref checks done at submission time (no git server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.codebases.git import (
    REF_FIELD,
    URL_FIELD,
    CodebaseError,
    hardened_git,
    validate_ref,
    validate_repository_url,
)

ACCEPTED = [
    ("https://github.com/team/repo.git", "https://github.com/team/repo.git"),
    ("https://github.com/team/repo", "https://github.com/team/repo"),
    (
        "  https://gitlab.example.org/group/sub/repo.git\n",
        "https://gitlab.example.org/group/sub/repo.git",
    ),
    ("https://example.org:8443/repo.git", "https://example.org:8443/repo.git"),
    ("https://[2001:db8::1]/repo.git", "https://[2001:db8::1]/repo.git"),
    ("git://example.org/repo.git", "git://example.org/repo.git"),
    ("HTTPS://Example.org/Repo", "HTTPS://Example.org/Repo"),
]

# (url, message fragment); every one of them must be refused on the URL field.
REFUSED = [
    ("", "is empty"),
    ("   ", "is empty"),
    ("-uhttps://example.org/x", "must not start with '-'"),
    ("--upload-pack=touch${IFS}/tmp/pwned", "must not start with '-'"),
    ("-c", "must not start with '-'"),
    ("https://example.org/repo.git --upload-pack=touch", "whitespace or control"),
    ("https://example.org/re\x00po", "whitespace or control"),
    ("https://example.org/re\tpo", "whitespace or control"),
    ("https://example.org/re\x7fpo", "whitespace or control"),
    ("ext::sh", "remote helpers such as 'ext::'"),
    ("ext::sh%20-c%20touch%20/tmp/pwned", "remote helpers such as 'ext::'"),
    ("fd::17", "remote helpers such as 'fd::'"),
    ("transport::https://example.org/x", "remote helpers such as 'transport::'"),
    ("https::example.org/x", "remote helpers"),
    ("ssh://git@github.com/team/repo.git", "ssh:// URLs are not supported"),
    ("git+ssh://github.com/team/repo.git", "ssh:// URLs are not supported"),
    ("git@github.com:team/repo.git", "ssh addresses"),
    ("github.com:team/repo.git", "ssh addresses"),
    ("ftp://example.org/repo.git", "scheme 'ftp://' is not supported"),
    ("rsync://example.org/repo.git", "scheme 'rsync://' is not supported"),
    ("http://example.org/repo.git", "plain http:// is not allowed"),
    ("http://127.0.0.1/repo.git", "host '127.0.0.1' is not allowed"),
    ("https://localhost/repo.git", "host 'localhost' is not allowed"),
    ("git://db.localhost/repo.git", "is not allowed"),
    ("https://[::1]/repo.git", "host '::1' is not allowed"),
    ("https://169.254.169.254/latest/meta-data", "host '169.254.169.254' is not allowed"),
    ("https://0.0.0.0/repo.git", "is not allowed"),
    ("https://user:token@github.com/team/repo.git", "must not embed credentials"),
    ("https://token@github.com/team/repo.git", "must not embed credentials"),
    ("https://github.com", "has no repository path"),
    ("https://github.com/", "has no repository path"),
    ("https://github.com/team/repo?x=1", "must not have a query"),
    ("https://github.com/team/repo#main", "must not have a query"),
    ("https://exa_mple.org/repo", "is not a valid host name"),
    ("https://example.org:99999/repo", "invalid port"),
    ("https:///repo", "has no host"),
    ("/srv/repos/team.git", "local repositories are not allowed"),
    ("file:///srv/repos/team.git", "local repositories are not allowed"),
    ("https://example.org/" + "a" * 3000, "longer than"),
]


@pytest.mark.parametrize(("url", "expected"), ACCEPTED)
def test_accepts_public_urls(url: str, expected: str) -> None:
    assert validate_repository_url(url, []) == expected


@pytest.mark.parametrize(("url", "fragment"), REFUSED)
def test_refuses_unsafe_urls(url: str, fragment: str) -> None:
    with pytest.raises(CodebaseError) as info:
        validate_repository_url(url, [])
    assert info.value.field == URL_FIELD
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9418/repo.git", "git://localhost/repo.git", "http://[::1]:8080/r.git"],
)
def test_loopback_only_when_allowed(url: str) -> None:
    with pytest.raises(CodebaseError):
        validate_repository_url(url, [])
    assert validate_repository_url(url, [], allow_loopback=True) == url


DNS = {
    "git.example.org": ["203.0.113.7", "2001:db8::7"],
    "rebound.example.org": ["203.0.113.8", "127.0.0.1"],
    "metadata.example.org": ["169.254.169.254"],
    "v6.example.org": ["fe80::1"],
}


def fake_dns(host: str) -> list[str]:
    return DNS.get(host, [])


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("rebound.example.org", "resolves to 127.0.0.1"),
        ("metadata.example.org", "resolves to 169.254.169.254"),
        ("v6.example.org", "resolves to fe80::1"),
    ],
)
def test_names_resolving_to_refused_addresses_are_refused(host: str, shown: str) -> None:
    with pytest.raises(CodebaseError) as info:
        validate_repository_url(f"https://{host}/team/repo.git", [], resolve=fake_dns)
    assert shown in info.value.message and host in info.value.message


def test_names_resolving_elsewhere_or_not_at_all_pass() -> None:
    for host in ("git.example.org", "unknown.example.org"):
        url = f"https://{host}/team/repo.git"
        assert validate_repository_url(url, [], resolve=fake_dns) == url
    # A name that resolves to loopback counts as loopback where tests allow it.
    url = "http://rebound.example.org/team/repo.git"
    assert validate_repository_url(url, [], allow_loopback=True, resolve=fake_dns) == url


def test_plain_http_needs_loopback_even_when_allowed() -> None:
    with pytest.raises(CodebaseError, match="plain http"):
        validate_repository_url("http://example.org/repo.git", [], allow_loopback=True)


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    allowed = tmp_path / "allowed"
    (allowed / "team.git").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "secret.git").mkdir(parents=True)
    (allowed / "link-in.git").symlink_to(allowed / "team.git")
    (allowed / "link-out.git").symlink_to(outside / "secret.git")
    return allowed, outside


def test_local_paths_inside_roots_become_file_urls(roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    expected = f"file://{(allowed / 'team.git').resolve()}"
    assert validate_repository_url(str(allowed / "team.git"), [allowed]) == expected
    assert validate_repository_url(f"file://{allowed}/team.git", [allowed]) == expected
    # A link that stays inside is followed to its target.
    assert validate_repository_url(str(allowed / "link-in.git"), [allowed]) == expected


@pytest.mark.parametrize(
    ("make_url", "fragment"),
    [
        (lambda a, o: str(o / "secret.git"), "outside the allowed directories"),
        (lambda a, o: f"file://{o}/secret.git", "outside the allowed directories"),
        (lambda a, o: str(a / "link-out.git"), "outside the allowed directories"),
        (lambda a, o: f"{a}/../outside/secret.git", "must not contain '..'"),
        (lambda a, o: f"file://{a}/../outside/secret.git", "must not contain '..'"),
        (lambda a, o: f"file://{a}/%2e%2e/outside", "percent-escapes"),
        (lambda a, o: f"file://localhost{a}/team.git", "file:///absolute/path"),
        (lambda a, o: "allowed/team.git", "must be absolute"),
        (lambda a, o: str(a / "missing.git"), "does not exist"),
        (lambda a, o: "/etc", "outside the allowed directories"),
    ],
)
def test_local_paths_outside_roots_are_refused(
    roots: tuple[Path, Path], make_url, fragment: str
) -> None:
    allowed, outside = roots
    with pytest.raises(CodebaseError) as info:
        validate_repository_url(make_url(allowed, outside), [allowed])
    assert info.value.field == URL_FIELD
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "ref", ["main", "v1.0.2", "feature/new-model", "refs/tags/v1", "HEAD", "a" * 40, "0123abc"]
)
def test_valid_refs(ref: str) -> None:
    assert validate_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "-main",
        "--upload-pack=x",
        "a..b",
        "has space",
        "x:y",
        "HEAD@{1}",
        "x.lock",
        ".hidden",
        "dir/.hidden",
        "a//b",
        "/abs",
        "trailing/",
        "tilde~1",
        "caret^",
        "star*",
        "back\\slash",
        "nul\x00",
        "x" * 300,
    ],
)
def test_invalid_refs(ref: str) -> None:
    with pytest.raises(CodebaseError) as info:
        validate_ref(ref)
    assert info.value.field == REF_FIELD


def test_hardened_git_environment(tmp_path: Path) -> None:
    remote = hardened_git(tmp_path, allow_file=False)
    assert remote.env["HOME"] == str(tmp_path)
    assert remote.env["GIT_TERMINAL_PROMPT"] == "0"
    assert remote.env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert remote.env["GIT_ALLOW_PROTOCOL"] == "https:http:git"
    pairs = dict(remote.config[i + 1].split("=", 1) for i in range(0, len(remote.config), 2))
    assert all(flag == "-c" for flag in remote.config[::2])
    assert pairs["protocol.ext.allow"] == "never"
    assert pairs["core.hooksPath"] == "/dev/null"
    assert pairs["submodule.recurse"] == "false"
    assert pairs["credential.helper"] == ""
    # Nothing is inherited from the caller's environment.
    assert set(remote.env) >= {"PATH", "HOME", "LC_ALL"}
    assert not any(k.startswith(("SSH_AUTH", "GIT_DIR", "GIT_WORK_TREE")) for k in remote.env)
    assert remote.argv("ls-remote")[: len(remote.config) + 1] == ["git", *remote.config]
    assert remote.argv("ls-remote")[-1] == "ls-remote"

    local = hardened_git(tmp_path, allow_file=True)
    assert local.env["GIT_ALLOW_PROTOCOL"] == "https:http:git:file"

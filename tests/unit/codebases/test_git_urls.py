"""Repository URL and ref checks done at submission time (no git server needed)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from server.codebases.addresses import AddressPolicy
from server.codebases.git import (
    REF_FIELD,
    URL_FIELD,
    CodebaseError,
    RemoteFailure,
    classify_git_error,
    hardened_git,
    pin_remote,
    validate_ref,
    validate_repository_url,
)

LOOPBACK = AddressPolicy(allow_loopback=True)
PUBLIC_V4 = "140.82.121.3"
PUBLIC_V6 = "2606:4700:4700::1111"


def no_dns(host: str) -> list[str]:
    """Unit tests never ask a real resolver."""
    return []


def public_dns(host: str) -> list[str]:
    return [PUBLIC_V4]


ACCEPTED = [
    ("https://github.com/team/repo.git", "https://github.com/team/repo.git"),
    ("https://github.com/team/repo", "https://github.com/team/repo"),
    (
        "  https://gitlab.example.org/group/sub/repo.git\n",
        "https://gitlab.example.org/group/sub/repo.git",
    ),
    ("https://example.org:8443/repo.git", "https://example.org:8443/repo.git"),
    ("https://[2606:4700:4700::1111]/repo.git", "https://[2606:4700:4700::1111]/repo.git"),
    # Mapped and embedding forms of global addresses are global.
    ("https://[::ffff:140.82.121.3]/repo.git", "https://[::ffff:140.82.121.3]/repo.git"),
    ("https://[2002:8c52:7903::1]/repo.git", "https://[2002:8c52:7903::1]/repo.git"),
    ("https://[64:ff9b::8c52:7903]/repo.git", "https://[64:ff9b::8c52:7903]/repo.git"),
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
    assert validate_repository_url(url, [], resolve=public_dns) == expected


@pytest.mark.parametrize(("url", "fragment"), REFUSED)
def test_refuses_unsafe_urls(url: str, fragment: str) -> None:
    with pytest.raises(CodebaseError) as info:
        validate_repository_url(url, [], resolve=no_dns)
    assert info.value.field == URL_FIELD
    assert fragment in info.value.message


# One case per address form: (url, the rule the message must name). Refused by default.
ADDRESS_FORMS = [
    ("https://10.1.2.3/r.git", "a private address (10.0.0.0/8)"),
    ("https://172.16.0.1/r.git", "a private address (172.16.0.0/12)"),
    ("https://172.31.255.254/r.git", "a private address (172.16.0.0/12)"),
    ("https://192.168.1.10/r.git", "a private address (192.168.0.0/16)"),
    ("https://100.64.0.1/r.git", "a carrier-grade NAT address (100.64.0.0/10)"),
    ("https://100.127.255.254/r.git", "a carrier-grade NAT address (100.64.0.0/10)"),
    ("https://127.0.0.1/r.git", "a loopback address (127.0.0.0/8)"),
    ("https://127.53.0.9/r.git", "a loopback address (127.0.0.0/8)"),
    ("https://169.254.169.254/r.git", "a link-local address (169.254.0.0/16"),
    ("https://0.0.0.0/r.git", "a 'this network' address (0.0.0.0/8)"),
    ("https://0.1.2.3/r.git", "a 'this network' address (0.0.0.0/8)"),
    ("https://255.255.255.255/r.git", "the broadcast address"),
    ("https://240.0.0.1/r.git", "a reserved address (240.0.0.0/4)"),
    ("https://224.0.0.251/r.git", "a multicast address (224.0.0.0/4)"),
    ("https://192.0.0.8/r.git", "an IETF protocol assignment (192.0.0.0/24)"),
    ("https://192.0.2.1/r.git", "a documentation address (192.0.2.0/24"),
    ("https://198.51.100.7/r.git", "a documentation address (198.51.100.0/24"),
    ("https://203.0.113.7/r.git", "a documentation address (203.0.113.0/24"),
    ("https://198.18.0.1/r.git", "a benchmarking address (198.18.0.0/15)"),
    ("https://192.88.99.1/r.git", "a 6to4 relay anycast address (192.88.99.0/24)"),
    ("https://[::1]/r.git", "the loopback address (::1)"),
    ("https://[::]/r.git", "the unspecified address (::)"),
    ("https://[fd12:3456::1]/r.git", "a unique local address (fc00::/7)"),
    ("https://[fc00::1]/r.git", "a unique local address (fc00::/7)"),
    ("https://[fec0::1]/r.git", "a site-local address (fec0::/10"),
    ("https://[fe80::1]/r.git", "a link-local address (fe80::/10)"),
    ("https://[ff02::1]/r.git", "a multicast address (ff00::/8)"),
    ("https://[2001:db8::1]/r.git", "a documentation address (2001:db8::/32)"),
    ("https://[100::1]/r.git", "a discard-only address (100::/64)"),
    ("https://[2001:2::1]/r.git", "an IETF protocol assignment (2001::/23)"),
    ("https://[3fff::1]/r.git", "a documentation address (3fff::/20)"),
    ("https://[::ffff:0:7f00:1]/r.git", "outside the global unicast range (2000::/3)"),
    # IPv4-mapped (::ffff:a.b.c.d): the embedded address is what a dual-stack socket reaches.
    (
        "git://[::ffff:127.0.0.1]:9418/r.git",
        "an IPv4-mapped address (::ffff:0:0/96) of a loopback address (127.0.0.0/8)",
    ),
    ("https://[::ffff:7f00:1]/r.git", "IPv4-mapped address (::ffff:0:0/96) of a loopback"),
    ("https://[::ffff:10.0.0.1]/r.git", "IPv4-mapped address (::ffff:0:0/96) of a private"),
    (
        "https://[::ffff:169.254.169.254]/r.git",
        "IPv4-mapped address (::ffff:0:0/96) of a link-local",
    ),
    (
        "https://[::ffff:100.64.0.1]/r.git",
        "IPv4-mapped address (::ffff:0:0/96) of a carrier-grade NAT",
    ),
    # IPv4-compatible (::a.b.c.d, deprecated): refused whatever it embeds.
    ("https://[::127.0.0.1]/r.git", "an IPv4-compatible address (::/96, deprecated)"),
    ("https://[::140.82.121.3]/r.git", "an IPv4-compatible address (::/96, deprecated)"),
    # 6to4, NAT64 and Teredo embed an IPv4 address that relays and gateways reach.
    ("https://[2002:7f00:1::1]/r.git", "a 6to4 address (2002::/16) of a loopback address"),
    ("https://[2002:c0a8:101::]/r.git", "a 6to4 address (2002::/16) of a private address"),
    ("https://[64:ff9b::7f00:1]/r.git", "a NAT64 address (64:ff9b::/96) of a loopback"),
    ("https://[64:ff9b::a9fe:a9fe]/r.git", "a NAT64 address (64:ff9b::/96) of a link-local"),
    ("https://[64:ff9b:1::a00:1]/r.git", "a local-use NAT64 address (64:ff9b:1::/48)"),
    ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/r.git", "a Teredo address (2001::/32)"),
    # Numeric host forms that git, curl and glibc read as IPv4 addresses.
    ("https://2130706433/r.git", "a non-standard form of an IPv4 address"),
    ("https://0x7f.1/r.git", "a non-standard form of an IPv4 address"),
    ("https://0x7f000001/r.git", "a non-standard form of an IPv4 address"),
    ("https://017700000001/r.git", "a non-standard form of an IPv4 address"),
    ("https://127.1/r.git", "a non-standard form of an IPv4 address"),
    ("https://0177.0.0.1/r.git", "a non-standard form of an IPv4 address"),
    ("https://127.0.0.01/r.git", "a non-standard form of an IPv4 address"),
    # Names.
    ("https://github.com./team/r.git", "must not end with a dot"),
    ("https://localhost./r.git", "must not end with a dot"),
    ("https://localhost/r.git", "names the loopback interface"),
    ("https://db.localhost/r.git", "names the loopback interface"),
    ("https://redis/r.git", "a single-label name"),
    ("git://postgres/r.git", "a single-label name"),
    ("https://server:8000/r.git", "a single-label name"),
]


@pytest.mark.parametrize(("url", "rule"), ADDRESS_FORMS)
def test_every_non_global_address_form_is_refused_naming_the_rule(url: str, rule: str) -> None:
    with pytest.raises(CodebaseError) as info:
        validate_repository_url(url, [], resolve=no_dns)
    assert info.value.field == URL_FIELD
    assert "is not allowed" in info.value.message
    assert rule in info.value.message
    # The pin made before each connection applies the same rules.
    with pytest.raises(CodebaseError) as pinned:
        pin_remote(url, AddressPolicy(), resolve=no_dns)
    assert rule in pinned.value.message


def test_non_standard_ipv4_forms_say_what_they_mean() -> None:
    with pytest.raises(CodebaseError, match=r"it would be read as 127\.0\.0\.1"):
        validate_repository_url("https://0x7f.1/r.git", [], resolve=no_dns)


RESOLVED_FORMS = [
    ("10.20.30.40", "resolves to a private address (10.0.0.0/8)"),
    ("100.64.1.2", "resolves to a carrier-grade NAT address (100.64.0.0/10)"),
    ("::ffff:127.0.0.1", "resolves to an IPv4-mapped address (::ffff:0:0/96) of a loopback"),
    ("fd00::5", "resolves to a unique local address (fc00::/7)"),
    ("198.18.0.7", "resolves to a benchmarking address (198.18.0.0/15)"),
]


@pytest.mark.parametrize(("answer", "rule"), RESOLVED_FORMS)
def test_names_resolving_to_any_refused_form_are_refused(answer: str, rule: str) -> None:
    def dns(host: str) -> list[str]:
        return [PUBLIC_V4, answer]

    with pytest.raises(CodebaseError) as info:
        validate_repository_url("https://git.example.org/r.git", [], resolve=dns)
    assert rule in info.value.message and "git.example.org" in info.value.message
    # What the installation's DNS answered is not echoed: it may be internal topology.
    assert answer not in info.value.message


def test_organizer_networks_allow_named_internal_ranges() -> None:
    internal = AddressPolicy(allowed_networks=(ipaddress.ip_network("10.20.0.0/16"),))

    def dns(host: str) -> list[str]:
        return {"gitlab": ["10.20.0.5"], "forge.corp.example": ["10.20.1.9"]}.get(host, [])

    for url in ("https://10.20.3.4/r.git", "https://gitlab/r.git", "https://forge.corp.example/r"):
        assert validate_repository_url(url, [], policy=internal, resolve=dns) == url
    assert pin_remote("https://gitlab/r.git", internal, resolve=dns).config == (
        "-c",
        "http.curloptResolve=gitlab:443:10.20.0.5",
    )
    # Other internal ranges, loopback and the mapped form of an allowed address still follow
    # the rules; the mapped form connects to the allowed IPv4 address.
    for url, rule in [
        ("https://10.21.0.1/r.git", "private address (10.0.0.0/8)"),
        ("https://127.0.0.1/r.git", "loopback"),
        ("https://localhost/r.git", "loopback interface"),
    ]:
        with pytest.raises(CodebaseError, match=re.escape(rule)):
            validate_repository_url(url, [], policy=internal, resolve=dns)
    mapped = pin_remote("git://[::ffff:10.20.0.5]/r.git", internal, resolve=dns)
    assert mapped.url == "git://10.20.0.5:9418/r.git"


def test_some_addresses_no_setting_allows() -> None:
    everything = AddressPolicy(
        allowed_networks=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        allow_loopback=True,
    )
    for url in ("https://0.0.0.0/r", "https://[::]/r", "https://224.0.0.1/r",
                "https://255.255.255.255/r", "https://[ff02::1]/r"):  # fmt: skip
        with pytest.raises(CodebaseError, match="is not allowed"):
            validate_repository_url(url, [], policy=everything, resolve=no_dns)
    assert validate_repository_url("https://10.0.0.1/r", [], policy=everything) == (
        "https://10.0.0.1/r"
    )


# ---------------------------------------------------------------------------------------------
# Pinning: the address checked is the address git connects to


class Answers:
    """A resolver that gives each answer in turn (the last one from then on): DNS rebinding."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


@pytest.mark.parametrize(
    ("url", "answer", "git_url", "config"),
    [
        ("https://git.example.org/team/r.git", PUBLIC_V4, "https://git.example.org/team/r.git",
         f"http.curloptResolve=git.example.org:443:{PUBLIC_V4}"),
        ("https://git.example.org:8443/r", PUBLIC_V4, "https://git.example.org:8443/r",
         f"http.curloptResolve=git.example.org:8443:{PUBLIC_V4}"),
        ("https://GIT.Example.org/r", PUBLIC_V6, "https://GIT.Example.org/r",
         f"http.curloptResolve=git.example.org:443:[{PUBLIC_V6}]"),
        ("git://git.example.org/team/r.git", PUBLIC_V4, f"git://{PUBLIC_V4}:9418/team/r.git",
         None),
        ("git://git.example.org:9999/r.git", PUBLIC_V6, f"git://[{PUBLIC_V6}]:9999/r.git", None),
        # A mapped literal connects to the IPv4 address it stands for.
        ("git://[::ffff:140.82.121.3]/r.git", "", f"git://{PUBLIC_V4}:9418/r.git", None),
    ],
)  # fmt: skip
def test_pin_makes_git_connect_to_the_checked_address(
    url: str, answer: str, git_url: str, config: str | None
) -> None:
    resolve = Answers([answer] if answer else [])
    pinned = pin_remote(url, AddressPolicy(), resolve=resolve)
    assert pinned.url == git_url
    assert pinned.config == (("-c", config) if config else ())
    assert str(pinned.address) in (answer or PUBLIC_V4)
    assert len(resolve.calls) <= 1  # resolved once: the answer checked is the one used


def test_rebinding_between_check_and_pin_is_refused_at_the_pin() -> None:
    rebinding = Answers([PUBLIC_V4], ["127.0.0.1"])
    url = "https://rebind.example.org/r.git"
    assert validate_repository_url(url, [], resolve=rebinding) == url  # first answer: public
    with pytest.raises(CodebaseError, match=r"resolves to a loopback address \(127\.0\.0\.0/8\)"):
        pin_remote(url, AddressPolicy(), resolve=rebinding)


def test_pin_uses_its_own_single_answer_even_if_the_name_moves_afterwards() -> None:
    rebinding = Answers([PUBLIC_V4], ["127.0.0.1"])
    pinned = pin_remote("https://rebind.example.org/r.git", AddressPolicy(), resolve=rebinding)
    assert rebinding("rebind.example.org") == ["127.0.0.1"]  # the name has moved
    assert pinned.config == ("-c", f"http.curloptResolve=rebind.example.org:443:{PUBLIC_V4}")


def test_pin_needs_an_address_and_plain_http_needs_loopback() -> None:
    with pytest.raises(CodebaseError, match="does not resolve"):
        pin_remote("https://nowhere.example.org/r.git", AddressPolicy(), resolve=no_dns)
    # Validated as loopback, but the name now points at a (permitted) non-loopback address.
    moved = Answers(["127.0.0.1"], ["10.0.0.7"])
    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),),
                           allow_loopback=True)  # fmt: skip
    url = "http://repo.example.org:8080/r.git"
    assert validate_repository_url(url, [], policy=policy, resolve=moved) == url
    with pytest.raises(CodebaseError, match="plain http://"):
        pin_remote(url, policy, resolve=moved)


def test_file_urls_need_no_pin(tmp_path: Path) -> None:
    pinned = pin_remote(f"file://{tmp_path}", AddressPolicy(), resolve=no_dns)
    assert (pinned.url, pinned.config, pinned.address) == (f"file://{tmp_path}", (), None)


# ---------------------------------------------------------------------------------------------
# git's own words never reach a participant


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        ("fatal: repository 'https://h/x.git/' not found", RemoteFailure.not_found),
        ("fatal: remote error: no such repository: /nope.git", RemoteFailure.not_found),
        ("fatal: remote error: access denied or repository not exported: /x.git",
         RemoteFailure.not_found),
        ("fatal: '/x' does not appear to be a git repository", RemoteFailure.not_found),
        ("error: unable to read askpass response from '/bin/false'\n"
         "fatal: could not read Username for 'https://h': terminal prompts disabled",
         RemoteFailure.auth_required),
        ("fatal: unable to access 'https://h/x/': The requested URL returned error: 403",
         RemoteFailure.auth_required),
        ("fatal: unable to access 'https://h/x/': The requested URL returned error: 301",
         RemoteFailure.redirect),
        ("fatal: unable to access 'https://h/x/': Could not resolve host: h",
         RemoteFailure.unreachable),
        ("fatal: unable to access 'http://h:1/x/': Failed to connect to h port 1 after 0 ms: "
         "Couldn't connect to server", RemoteFailure.unreachable),
        ("127.0.0.1[0: 127.0.0.1]: errno=Connection refused\n", RemoteFailure.unreachable),
        ("fatal: remote error: internal-redis 7.2 SECRET-TOKEN-42 ready", RemoteFailure.failed),
        ("fatal: protocol error: bad line length character: +OK ", RemoteFailure.failed),
        ("fatal: unable to access 'https://h/x/': The requested URL returned error: 500",
         RemoteFailure.failed),
        ("", RemoteFailure.failed),
    ],
)  # fmt: skip
def test_git_errors_map_to_fixed_words(stderr: str, expected: RemoteFailure) -> None:
    failure = classify_git_error(stderr.encode())
    assert failure is expected
    assert "SECRET" not in failure.value and "+OK" not in failure.value


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9418/repo.git", "git://localhost/repo.git", "http://[::1]:8080/r.git"],
)
def test_loopback_only_when_allowed(url: str) -> None:
    with pytest.raises(CodebaseError):
        validate_repository_url(url, [])
    assert validate_repository_url(url, [], policy=LOOPBACK) == url


DNS = {
    "git.example.org": [PUBLIC_V4, PUBLIC_V6],
    "rebound.example.org": [PUBLIC_V4, "127.0.0.1"],
    "metadata.example.org": ["169.254.169.254"],
    "v6.example.org": ["fe80::1"],
}


def fake_dns(host: str) -> list[str]:
    return DNS.get(host, [])


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("rebound.example.org", "resolves to a loopback address"),
        ("metadata.example.org", "resolves to a link-local address (169.254.0.0/16"),
        ("v6.example.org", "resolves to a link-local address (fe80::/10)"),
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
    # A name that resolves to loopback only counts as loopback where tests allow it.
    DNS["loop.example.org"] = ["127.0.0.1"]
    url = "http://loop.example.org/team/repo.git"
    assert validate_repository_url(url, [], policy=LOOPBACK, resolve=fake_dns) == url


def test_plain_http_needs_loopback_even_when_allowed() -> None:
    with pytest.raises(CodebaseError, match="plain http"):
        validate_repository_url(
            "http://example.org/repo.git", [], policy=LOOPBACK, resolve=public_dns
        )
    # A name with loopback and other answers is not loopback.
    with pytest.raises(CodebaseError, match="plain http"):
        validate_repository_url("http://rebound.example.org/r.git", [], policy=LOOPBACK,
                                resolve=fake_dns)  # fmt: skip


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

"""Which hosts a participant's repository (and its Git LFS objects) may be fetched from.

The server lists refs and the worker clones on a participant's say-so, from inside the
installation's network: a URL naming an internal address would make them probe their own
services (SSRF). Rule (`address_refusal`): only globally routable addresses, judged after
unwrapping the IPv6 forms that carry an IPv4 address (mapped, compatible, 6to4, NAT64,
Teredo), plus the networks an organizer lists in `allowed_repo_networks` (and loopback with
`allow_loopback_repos`, for tests and single-machine set-ups). Some addresses no setting
allows: unspecified (0.0.0.0/8, ::), multicast and broadcast.

Host names are held to what a forge's public name looks like (`check_name`): no trailing
dot, no single-label names (compose services such as `redis`) unless the organizer allowed
internal networks, no numeric forms that git, curl and glibc read as IPv4 (`2130706433`,
`0x7f.1`, `127.1`). A name is resolved and every answer must pass; messages name the rule
that refused an answer but not the answer itself (the installation's DNS may be internal).

Checking is half of it: `server.codebases.git.pin_remote` makes git connect to exactly the
address checked, so a name that changes its answer afterwards (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.config import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
# A last label of digits or 0x-hex makes resolvers read the whole name as an IPv4 address.
_NUMERIC_LABEL_RE = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class RefusedHost(Exception):
    """A host (or what it resolves to) may not be connected to; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class AddressPolicy:
    """Addresses allowed besides globally routable ones (see the module docstring)."""

    allowed_networks: tuple[Network, ...] = ()
    allow_loopback: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        return cls(tuple(settings.allowed_repo_networks), settings.allow_loopback_repos)

    def allows(self, address: Address) -> bool:
        if self.allow_loopback and address.is_loopback:
            return True
        # `in` is False across IP versions.
        return any(address in network for network in self.allowed_networks)


def _table(rows: Iterable[tuple[str, str]]) -> tuple[tuple[Network, str], ...]:
    return tuple((ipaddress.ip_network(net), phrase) for net, phrase in rows)


# Never allowed: connecting to them reaches the local host or many hosts at once.
_NEVER = _table(
    [
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)"),
        ("255.255.255.255/32", "the broadcast address"),
        ("224.0.0.0/4", "a multicast address (224.0.0.0/4)"),
        ("::/128", "the unspecified address (::)"),
        ("ff00::/8", "a multicast address (ff00::/8)"),
    ]
)
# IANA's special-purpose registries, by name; `allowed_repo_networks` can open any of them.
_SPECIAL = _table(
    [
        ("10.0.0.0/8", "a private address (10.0.0.0/8)"),
        ("100.64.0.0/10", "a carrier-grade NAT address (100.64.0.0/10)"),
        ("127.0.0.0/8", "a loopback address (127.0.0.0/8)"),
        ("169.254.0.0/16", "a link-local address (169.254.0.0/16, where cloud metadata lives)"),
        ("172.16.0.0/12", "a private address (172.16.0.0/12)"),
        ("192.0.0.0/24", "an IETF protocol assignment (192.0.0.0/24)"),
        ("192.0.2.0/24", "a documentation address (192.0.2.0/24, TEST-NET-1)"),
        ("192.88.99.0/24", "a 6to4 relay anycast address (192.88.99.0/24)"),
        ("192.168.0.0/16", "a private address (192.168.0.0/16)"),
        ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)"),
        ("198.51.100.0/24", "a documentation address (198.51.100.0/24, TEST-NET-2)"),
        ("203.0.113.0/24", "a documentation address (203.0.113.0/24, TEST-NET-3)"),
        ("240.0.0.0/4", "a reserved address (240.0.0.0/4)"),
        ("::1/128", "the loopback address (::1)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48)"),
        ("100::/64", "a discard-only address (100::/64)"),
        ("2001:db8::/32", "a documentation address (2001:db8::/32)"),
        ("2001::/23", "an IETF protocol assignment (2001::/23)"),
        ("3fff::/20", "a documentation address (3fff::/20)"),
        ("fc00::/7", "a unique local address (fc00::/7)"),
        ("fe80::/10", "a link-local address (fe80::/10)"),
        ("fec0::/10", "a site-local address (fec0::/10, deprecated)"),
    ]
)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address, bool]:
    """(the form, the IPv4 address it carries, whether the form is refused whatever it
    carries); raises LookupError for an address that carries none."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return "an IPv4-mapped address (::ffff:0:0/96)", address.ipv4_mapped, False
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        # Deprecated since 2006; no stack should reach IPv4 with it, none is trusted to.
        return "an IPv4-compatible address (::/96, deprecated)", low32, True
    if address.teredo is not None:
        # A tunnel through whatever relay answers: where it ends up is not ours to check.
        return "a Teredo address (2001::/32)", address.teredo[1], True
    if address in _NAT64:
        return "a NAT64 address (64:ff9b::/96)", low32, False
    if address.sixtofour is not None:
        return "a 6to4 address (2002::/16)", address.sixtofour, False
    raise LookupError(address)


def address_refusal(address: Address, policy: AddressPolicy) -> str | None:
    """Why `address` may not be connected to, as a phrase naming the rule; None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        try:
            form, inner, always = _embedded_ipv4(address)
        except LookupError:
            pass
        else:
            if always:
                return form
            reason = address_refusal(inner, policy)
            return f"{form} of {reason}" if reason else None
    for network, phrase in _NEVER:
        if address in network:
            return phrase
    if policy.allows(address):
        return None
    for network, phrase in _SPECIAL:
        if address in network:
            return phrase
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
        return "outside the global unicast range (2000::/3)"
    if not address.is_global:
        return "not a globally routable address"
    return None


def connect_address(address: Address) -> Address:
    """The address a connection to `address` really goes to (mapped forms are IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def system_resolver(host: str) -> list[str]:
    """The addresses `host` resolves to now; none when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]).split("%", 1)[0] for info in infos})


def check_host(
    host: str, policy: AddressPolicy, resolve: Resolver, *, must_resolve: bool
) -> list[Address]:
    """The addresses a connection to `host` may go to (connect forms), all allowed by
    `policy`; raises `RefusedHost`. A name that does not resolve gives [] unless
    `must_resolve` (a connection is about to be made)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        reason = address_refusal(literal, policy)
        if reason:
            raise RefusedHost(f"host '{host}' is not allowed: it is {reason}")
        return [connect_address(literal)]

    check_name(host, policy)
    answers = resolve(host.lower())
    if not answers and must_resolve:
        raise RefusedHost(f"host '{host}' does not resolve to any address")
    addresses = []
    for answer in answers:
        address = ipaddress.ip_address(answer)
        reason = address_refusal(address, policy)
        if reason:
            raise RefusedHost(f"host '{host}' is not allowed: it resolves to {reason}")
        addresses.append(connect_address(address))
    return addresses


def check_name(host: str, policy: AddressPolicy) -> None:
    """Refuse host names no public forge has (module docstring); raises `RefusedHost`."""
    if not HOSTNAME_RE.match(host):
        raise RefusedHost(f"host '{host}' is not a valid host name")
    if host.endswith("."):
        # `localhost.` and `redis.` slip past name rules that compare strings.
        raise RefusedHost(
            f"host '{host}' is not allowed: a host name must not end with a dot "
            "(write it without the final '.')"
        )
    name = host.lower()
    labels = name.split(".")
    if _NUMERIC_LABEL_RE.match(labels[-1]):
        try:
            meaning = f" (it would be read as {socket.inet_ntoa(socket.inet_aton(name))})"
        except OSError:
            meaning = ""
        raise RefusedHost(
            f"host '{host}' is not allowed: it is a non-standard form of an IPv4 "
            f"address{meaning}; write addresses as four decimal numbers"
        )
    if name == "localhost" or name.endswith(".localhost"):
        if not policy.allow_loopback:
            raise RefusedHost(f"host '{host}' is not allowed: it names the loopback interface")
        return
    if len(labels) == 1 and not policy.allowed_networks:
        raise RefusedHost(
            f"host '{host}' is not allowed: it is a single-label name (such as a service on "
            "the installation's own network); give the repository's full host name"
        )

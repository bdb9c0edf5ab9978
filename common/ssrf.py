"""Where a webhook may be sent: public addresses only, unless an operator allows a network.

A URL is refused if it is not http(s), or if its host is or resolves to any address that is not
globally reachable. The test is an allowlist, so it does not depend on what this Python's
`ipaddress.is_global` happens to know: an IPv4 address must be outside every range of the IANA
special-purpose registry that is not globally reachable (loopback, RFC 1918, link-local with
169.254.169.254, CGNAT 100.64/10, benchmarking, documentation, reserved 240/4, ...) and not
multicast. An IPv6 address must be global unicast (2000::/3) outside the special and deprecated
ranges in it (IETF protocol assignments 2001::/23 with Teredo, documentation, 6to4 2002::/16);
that alone refuses everything else: loopback, unspecified, IPv4-compatible ::/96, SIIT
::ffff:0:0/96, local-use NAT64 64:ff9b:1::/48, discard 100::/64, ULA, link-local, deprecated
site-local fec0::/10 and multicast. The only IPv6 forms outside 2000::/3 that pass are the two
that stand for one IPv4 destination (IPv4-mapped ::ffff:a.b.c.d and NAT64 64:ff9b::a.b.c.d), and
only when that IPv4 address passes. Addresses with a zone (`fe80::1%eth0`) are refused.
The sender connects to the address it checked, so a DNS answer that changes between check and
connect (rebinding) cannot redirect it, and it never follows redirects.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.errors import WebhookUrlForbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


#: What no host name or IP literal holds, and what could break the Host header.
_BAD_HOST_RE = re.compile(r"[\x00-\x20\x7f/\\@?#\[\]<>\"'`{}|^]")


class Unresolvable(WebhookUrlForbidden):
    """The host has no address (yet): unknown at submit, a failed attempt at delivery."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written in the URL (for the Host header and TLS SNI)
    port: int
    path: str  # path + query

    @property
    def authority(self) -> str:
        """The Host header: brackets around an IPv6 literal, the port unless the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> Target:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed or invalid [IPv6] literal
        raise WebhookUrlForbidden(f"webhook URL does not parse: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlForbidden(f"webhook URL must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise WebhookUrlForbidden("webhook URL has no host")
    if _BAD_HOST_RE.search(parts.hostname):
        raise WebhookUrlForbidden("webhook URL has a malformed host")
    if parts.username or parts.password:
        raise WebhookUrlForbidden("webhook URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookUrlForbidden(f"webhook URL has a bad port: {exc}") from exc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path)


def _networks(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


#: IANA IPv4 special-purpose ranges that are not globally reachable, plus multicast and the
#: deprecated 6to4 relay anycast.
_SPECIAL_V4 = _networks(
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)  # fmt: skip
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
#: Inside 2000::/3 but special or deprecated: IETF protocol assignments (Teredo 2001::/32,
#: ORCHID, benchmarking, ...), documentation 2001:db8::/32 and 3fff::/20, 6to4 2002::/16.
_SPECIAL_V6 = _networks("2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public_v4(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not any(ip in net for net in _SPECIAL_V4)


def _public_v6(ip: ipaddress.IPv6Address) -> bool:
    if ip.scope_id:
        return False
    if ip in _MAPPED or ip in _NAT64:
        return _public_v4(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return ip in _GLOBAL_UNICAST_V6 and ip.is_global and not any(ip in net for net in _SPECIAL_V6)


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv4Address):
        return _public_v4(ip)
    return _public_v6(ip)


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def check_address(ip: IPAddress, allowed: list[Network]) -> None:
    if is_public(ip) or any(ip in net for net in allowed):
        return
    raise WebhookUrlForbidden(f"webhook address {ip} is not a public address")


def literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve(target: Target, allowed: list[Network]) -> IPAddress:
    """The first address of the host that passes the policy; every address must pass, so a host
    that also resolves to a private address is refused (an attacker chooses which one we use)."""
    ip = literal_ip(target.host)
    if ip is not None:
        check_address(ip, allowed)
        return ip
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unresolvable(f"webhook host {target.host!r} does not resolve: {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        check_address(address, allowed)
    return addresses[0]

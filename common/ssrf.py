"""Where a webhook may be sent: public addresses only, unless an operator allows a network.

A URL is refused if it is not http(s), or if its host is or resolves to any address that is not
globally routable: loopback, RFC 1918, link-local (169.254.169.254, the cloud metadata service,
included), CGNAT 100.64/10, multicast, unspecified (0.0.0.0, ::), IPv6 unique-local and
link-local, and IPv6 forms that embed such an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64).
The sender connects to the address it checked, so a DNS answer that changes between check and
connect (rebinding) cannot redirect it, and it never follows redirects.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.errors import WebhookUrlForbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Unresolvable(WebhookUrlForbidden):
    """The host has no address (yet): unknown at submit, a failed attempt at delivery."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written in the URL (for the Host header and TLS SNI)
    port: int
    path: str  # path + query


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlForbidden(f"webhook URL must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise WebhookUrlForbidden("webhook URL has no host")
    if parts.username or parts.password:
        raise WebhookUrlForbidden("webhook URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookUrlForbidden(f"webhook URL has a bad port: {exc}") from exc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path)


def _embedded_v4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        found += list(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_public(ip: IPAddress) -> bool:
    if not ip.is_global or ip.is_multicast or ip.is_unspecified:
        return False
    return all(is_public(v4) for v4 in _embedded_v4(ip))


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

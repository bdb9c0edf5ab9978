"""The webhook address policy, address by address."""

from __future__ import annotations

import ipaddress

import pytest

from common.errors import WebhookUrlForbidden
from common.ssrf import check_address, is_public, parse_networks, parse_url, resolve
from webhooks.delivery import retry_after_seconds

REFUSED = [
    "127.0.0.1", "127.8.8.8", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.1", "239.1.1.1", "255.255.255.255",
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1",
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    # Issue 14: forms `is_global` accepts. IPv4-compatible (deprecated) ::/96, SIIT
    # ::ffff:0:0/96, local-use NAT64 64:ff9b:1::/48 (RFC 8215), site-local fec0::/10.
    "::127.0.0.1", "::a9fe:a9fe", "::ffff:0:7f00:1", "64:ff9b:1::a9fe:a9fe", "fec0::1",
    "::8.8.8.8", "::ffff:0:808:808", "64:ff9b:1::808:808",  # refused whatever they embed
    "2002:808:808::1", "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # deprecated 6to4, Teredo
    "2001:db8::1", "3fff::1", "100::1", "5f00::1", "2001:2::1", "fe80::1%eth0",
    "192.0.2.1", "198.18.0.1", "203.0.113.9", "240.0.0.1", "192.88.99.1",
]  # fmt: skip
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_public(ip)
    with pytest.raises(WebhookUrlForbidden):
        check_address(ip, [])


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_allowlisted_network_passes() -> None:
    allowed = parse_networks(["127.0.0.0/8", "fd00::/8"])
    check_address(ipaddress.ip_address("127.0.0.1"), allowed)
    check_address(ipaddress.ip_address("fd00::5"), allowed)
    with pytest.raises(WebhookUrlForbidden):
        check_address(ipaddress.ip_address("10.0.0.1"), allowed)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://a.example/x",
        "file:///etc/passwd",
        "http://",
        "http://u:p@a.example/x",
        "http://a:99999/",
    ],
)
def test_bad_urls_refused(url: str) -> None:
    with pytest.raises(WebhookUrlForbidden):
        parse_url(url)


@pytest.mark.parametrize("url", ["http://[::1/x", "http://[zz]/x", "http://a b.example/x"])
def test_malformed_hosts_refused(url: str) -> None:
    with pytest.raises(WebhookUrlForbidden):
        parse_url(url)


def test_host_header_of_a_target() -> None:
    assert parse_url("https://a.example/x").authority == "a.example"
    assert parse_url("https://a.example:80/x").authority == "a.example:80"
    assert parse_url("http://[2606:4700::1111]:8080/").authority == "[2606:4700::1111]:8080"


def test_literal_addresses_checked_without_lookup() -> None:
    target = parse_url("https://[::ffff:127.0.0.1]:8443/hook?x=1")
    assert (target.scheme, target.port, target.path) == ("https", 8443, "/hook?x=1")
    with pytest.raises(WebhookUrlForbidden):
        resolve(target, [])
    assert str(resolve(parse_url("http://8.8.8.8/"), [])) == "8.8.8.8"


def test_localhost_name_is_refused_after_lookup() -> None:
    with pytest.raises(WebhookUrlForbidden, match="not a public address"):
        resolve(parse_url("http://localhost:9/"), [])


def test_retry_after_header() -> None:
    """RFC 9110: delay-seconds (ASCII digits only) or an HTTP-date, clamped to [0, longest]."""
    assert retry_after_seconds("120", now=0, longest=600) == 120.0
    assert retry_after_seconds(" 120 ", now=0, longest=600) == 120.0
    assert retry_after_seconds(None, now=0, longest=600) is None
    assert retry_after_seconds("soon", now=0, longest=600) is None
    assert retry_after_seconds("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0, longest=600) == 30.0
    assert retry_after_seconds("Thu, 01 Jan 1970 00:01:00 GMT", now=90.0, longest=600) == 0.0
    assert retry_after_seconds("Sunday, 06-Nov-94 08:49:37 GMT", now=0, longest=60) == 60.0
    assert retry_after_seconds("Sun Nov  6 08:49:37 1994", now=784111777.0, longest=60) == 0.0
    # Issue 14: an overflow, digits `float` refuses or reads, and other non-RFC forms.
    assert retry_after_seconds("99999999999999", now=0, longest=600) == 600.0
    assert retry_after_seconds("9" * 5000, now=0, longest=600) == 600.0
    for bad in ("\u00b2", "\u0663", "1e3", "-5", "12.5", "0x10", "", "Fri, 31 Dec 99999"):
        assert retry_after_seconds(bad, now=0, longest=600) is None, bad

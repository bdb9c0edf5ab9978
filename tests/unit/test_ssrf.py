"""The webhook address policy, address by address."""

from __future__ import annotations

import ipaddress

import pytest

from common.errors import WebhookUrlForbidden
from common.ssrf import check_address, is_public, parse_networks, parse_url, resolve
from worker.webhooks import retry_after_seconds

REFUSED = [
    "127.0.0.1", "127.8.8.8", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.1", "239.1.1.1", "255.255.255.255",
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1",
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
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
    assert retry_after_seconds("120", now=0) == 120.0
    assert retry_after_seconds(None, now=0) is None
    assert retry_after_seconds("soon", now=0) is None
    assert retry_after_seconds("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0) == 30.0

"""app.security.peer_ip: the one reading of a peer address the proxy check and the rate-limit key share."""

import ipaddress

import pytest

from app.security import peer_ip


@pytest.mark.parametrize("text,expected", [
    ("203.0.113.7", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4-mapped: the IPv4 client it is
    ("fe80::1%eth0", "fe80::1"),  # a zone is dropped
    ("2001:db8::1", "2001:db8::1"),
])
def test_an_ip_peer_is_read_as_its_address(text, expected):
    assert peer_ip(text) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("text", [None, "", "unix:", "not an address"])
def test_a_peer_that_is_no_ip_is_none(text):
    assert peer_ip(text) is None

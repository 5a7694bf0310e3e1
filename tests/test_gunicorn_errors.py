"""Requests gunicorn refuses before the app sees them still get the contract's JSON error."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from bench.harness import gunicorn, migrate

MALFORMED = {
    "control byte in a header": b"GET /api/products HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\x01b\r\n\r\n",
    "request line too long": b"GET /api/" + b"a" * 4200 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header too long": b"GET /api/products HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 8300 + b"\r\n\r\n",
    "Content-Length not a number": b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('gunicorn') / 'checkout.db'}"
    migrate(url)
    with gunicorn("wsgi:app", {"DATABASE_URL": url}) as address:
        yield urlsplit(address)


def raw(server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((server.hostname, server.port), timeout=10) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_request_gunicorn_cannot_read_gets_json(server, request_bytes):
    status, headers, body = raw(server, request_bytes)
    assert 400 <= status < 500
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"error", "message"} and answer["error"].isidentifier() and answer["message"]
    assert b"a\x01b" not in body and b"aaaa" not in body  # nothing of the request is echoed

"""What the process environment says of gateway calls: read once, when the adapter is built."""

from __future__ import annotations

import socket

import pytest
import responses

from app.gateways.base import GatewayNoAnswer
from app.gateways.sandbox_client import SandboxGateway
from tests.gateways.support import LoopbackServer

STATUS_BODY = b'{"transaction_id": "txn_1", "status": "success", "amount": 1999, "currency": "USD"}'


class RecordingGateway(LoopbackServer):
    """Answers every request with a status body and keeps each request line it was sent."""

    def __init__(self) -> None:
        self.request_lines: list[str] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.request_lines.append(data.split(b"\r\n", 1)[0].decode())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(STATUS_BODY), STATUS_BODY))


def _adapter(base: str) -> SandboxGateway:
    return SandboxGateway(base, "sk_test", ["whsec_c2VjcmV0"], retries=0, backoff=0.0, total_budget=5.0)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy", "NETRC", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@responses.activate
def test_a_netrc_login_for_the_gateway_host_never_replaces_the_api_key(tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine gw.test login someone password their-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    responses.get("http://gw.test/status/txn_1", body=STATUS_BODY, content_type="application/json")
    assert _adapter("http://gw.test").fetch_status("txn_1") is not None
    assert responses.calls[0].request.headers["Authorization"] == "Bearer sk_test"


def test_a_proxy_named_in_the_environment_carries_the_calls(monkeypatch):
    proxy = RecordingGateway()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    gateway = _adapter("http://gateway.invalid")  # resolvable only by the proxy
    assert gateway.fetch_status("txn_1").amount == 1999
    assert proxy.request_lines == ["GET http://gateway.invalid/status/txn_1 HTTP/1.1"]


def test_no_proxy_still_sends_the_gateway_direct(monkeypatch):
    dead = socket.create_server(("127.0.0.1", 0))
    dead_proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there: a call through it fails
    gateway_server = RecordingGateway()
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert _adapter(gateway_server.url).fetch_status("txn_1").amount == 1999
    assert gateway_server.request_lines == ["GET /status/txn_1 HTTP/1.1"]
    monkeypatch.delenv("NO_PROXY")
    with pytest.raises(GatewayNoAnswer):  # the same call, proxied through nothing, fails
        _adapter(gateway_server.url).fetch_status("txn_1")


def test_the_environment_is_read_when_the_adapter_is_built(monkeypatch):
    gateway_server = RecordingGateway()
    gateway = _adapter(gateway_server.url)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # set later: not this adapter's concern
    assert gateway.fetch_status("txn_1").amount == 1999
    assert gateway_server.request_lines == ["GET /status/txn_1 HTTP/1.1"]

"""The whole-call budget against real loopback gateways: backoff, keep-alive, threads, gevent, proxies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.gateways.base import GatewayNoAnswer, GatewayUnavailable
from app.gateways.sandbox_client import SandboxGateway
from tests.gateways.support import LoopbackServer, read_head
from tests.gateways.test_sandbox_client import ROOT, TLSDripGateway, self_signed  # noqa: F401

SECRET = ["whsec_c2VjcmV0"]
STATUS = b'{"transaction_id": "txn_1", "status": "success", "amount": 1999, "currency": "USD"}'
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                   "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _answer(status: int = 200, body: bytes = STATUS, *, close: bool = True, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode() + body


class ScriptedGateway(LoopbackServer):
    """Serves each request with ``reply(path, connection_number)``: (delay, bytes, keep the connection)."""

    def __init__(self, reply) -> None:
        self.reply, self.connections, self.seen = reply, 0, []
        self.lock = threading.Lock()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            number = self.connections
        with conn:
            while (head := read_head(conn)) is not None:
                path = head.split(b" ", 2)[1].decode()
                with self.lock:
                    self.seen.append((number, path))
                delay, data, keep = self.reply(path, number)
                time.sleep(delay)
                try:
                    conn.sendall(data)
                except OSError:
                    return
                if not keep:
                    return


def _gateway(url: str, **kwargs) -> SandboxGateway:
    return SandboxGateway(url, "sk_test", SECRET, **{"backoff": 0.0, "total_budget": 1.0, **kwargs})


# -- (1), (4) backoff between retries --------------------------------------------------------------


def test_a_backoff_that_would_outlast_the_budget_is_not_slept(request):
    """503s answered at once, a backoff of 2 s or more before the third attempt, a 1 s budget: the call
    ends within its budget (as the 503 it was last answered), without sleeping past it."""
    server = ScriptedGateway(lambda path, number: (0.0, _answer(503, b'{"error": "busy"}'), False))
    request.addfinalizer(server.server.close)
    gw = _gateway(server.url, backoff=1.0)
    started = time.monotonic()
    with pytest.raises(GatewayUnavailable) as raised:
        gw.fetch_status("txn_1")
    assert time.monotonic() - started < 1.3  # it slept 2 s or more, then gave up as "no complete answer"
    assert str(raised.value) == "gateway answered 503 after retries"
    assert len(server.seen) == 2  # the third attempt could not have begun within the budget


def test_a_retry_after_header_is_not_waited_for(request):
    server = ScriptedGateway(lambda path, number: (0.0, _answer(503, b"{}", extra="Retry-After: 3600\r\n"), False))
    request.addfinalizer(server.server.close)
    started = time.monotonic()
    with pytest.raises(GatewayUnavailable, match="503 after retries"):
        _gateway(server.url, retries=3).fetch_status("txn_1")
    assert time.monotonic() - started < 1.0 and len(server.seen) == 4


# -- (1) connects and answers that never come, or stop -------------------------------------------------


def test_a_connect_that_never_completes_ends_at_the_budget():
    """A listener whose backlog is full: the kernel drops further SYNs, the connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    try:
        gw = _gateway(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.4, retries=5)
        started = time.monotonic()
        with pytest.raises(GatewayNoAnswer):
            gw.fetch_status("txn_1")
        assert time.monotonic() - started < 1.3
    finally:
        filler.close()
        listener.close()


@pytest.mark.parametrize(("data", "message"), [
    (_answer()[:-10], "unreachable: ChunkedEncodingError"),  # closed mid-body
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "unreachable"),  # a chunk size that is none
    (b"NOT HTTP AT ALL\r\n\r\n", "unreachable: ConnectionError"),
    (b"", "unreachable: ConnectionError"),  # closed unanswered
])
def test_a_broken_answer_is_a_gateway_error_never_a_raw_exception(request, data, message):
    server = ScriptedGateway(lambda path, number: (0.0, data, False))
    request.addfinalizer(server.server.close)
    with pytest.raises(GatewayNoAnswer, match=message):
        _gateway(server.url, retries=1).fetch_status("txn_1")


# -- (2) a cut timeout stays with its call ------------------------------------------------------------


def test_a_timeout_cut_for_one_call_does_not_shorten_the_next_on_the_same_connection(request):
    """The first call's answer comes 0.7 s into its 1 s budget, leaving its socket cut to ~0.3 s; the
    second, on the same keep-alive connection, waits 0.6 s for its answer and gets it."""
    delays = {"/status/txn_1": 0.7, "/status/txn_2": 0.6}
    server = ScriptedGateway(lambda path, number: (delays[path], _answer(close=False), True))
    request.addfinalizer(server.server.close)
    gw = _gateway(server.url, read_timeout=2.0, retries=0)
    assert gw.fetch_status("txn_1").amount == 1999
    assert gw.fetch_status("txn_2").amount == 1999
    assert server.seen == [(1, "/status/txn_1"), (1, "/status/txn_2")]  # one connection, reused


def test_48_threads_one_stuck_on_a_dripping_answer_and_no_deadline_shared(request):
    """One thread's call is dripped and ends at its budget; 47 others, started later on the same client
    (and pool), are answered after that thread's deadline and within theirs."""
    def reply(path, number):
        if path == "/status/drip":
            return 0.0, b"HTTP/1.1 200 OK\r\n", True  # then silence: only the budget ends the wait
        return 0.6, _answer(close=False), True

    server = ScriptedGateway(reply)
    request.addfinalizer(server.server.close)
    gw = _gateway(server.url, read_timeout=5.0, retries=0)

    def stuck():
        started = time.monotonic()
        with pytest.raises(GatewayNoAnswer, match="within 1 s"):
            gw.fetch_status("drip")
        return time.monotonic() - started

    with ThreadPoolExecutor(48) as pool:
        first = pool.submit(stuck)
        time.sleep(0.7)  # the others begin 0.7 s into its budget, and are answered 0.6 s later
        others = [pool.submit(gw.fetch_status, f"txn_{n}") for n in range(47)]
        assert first.result(timeout=10) < 1.3
        assert [other.result(timeout=10).amount for other in others] == [1999] * 47


# -- (5) under gevent --------------------------------------------------------------------------------

GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import sys, time, gevent
from app.gateways.sandbox_client import SandboxGateway
from app.gateways.base import GatewayUnavailable
gw = SandboxGateway(sys.argv[1], 'sk', ['whsec_c2VjcmV0'], read_timeout=2.0, backoff=0.0, total_budget=1.0)
def stuck():
    started = time.monotonic()
    try:
        gw.fetch_status('txn_1')
    except GatewayUnavailable as exc:
        return '%.2f %s' % (time.monotonic() - started, exc)
quick = SandboxGateway(sys.argv[2], 'sk', ['whsec_c2VjcmV0'], total_budget=5.0) if len(sys.argv) > 2 else None
first = gevent.spawn(stuck)
if quick:  # another greenlet's call begins and ends while the first waits: its deadline is its own
    gevent.sleep(0.2)
    assert quick.fetch_status('txn_1').amount == 1999
print('ended after', first.get())
"""


def _run_under_gevent(*urls: str, **env: str) -> float:
    try:
        done = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT, *urls], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        pytest.fail("the call under gevent did not end within 10 s of its 1 s budget")
    assert done.stdout.startswith("ended after"), done.stderr
    assert done.stdout.rstrip().endswith("gateway gave no complete answer within 1 s"), done.stdout
    return float(done.stdout.split()[2])


def test_under_gevent_a_dripped_answer_ends_at_the_budget_while_other_greenlets_call(drip, request):
    server = drip(200, STATUS, every=0.2, drip_head=True)
    quick = ScriptedGateway(lambda path, number: (0.0, _answer(), False))
    request.addfinalizer(quick.server.close)
    assert _run_under_gevent(server.url, quick.url) < 1.5


@pytest.mark.parametrize("dripped", ["head", "handshake"])
def test_under_gevent_a_dripped_https_answer_ends_at_the_budget(self_signed, dripped):  # noqa: F811
    """gevent's TLS waits each get the socket's whole timeout (CPython's share one deadline): a
    handshake dripped a byte at a time would take minutes."""
    cert, key = self_signed
    server = TLSDripGateway(cert, key, 200, STATUS, every=0.2, drip_head=dripped == "head",
                            drip_handshake=dripped == "handshake")
    try:
        assert _run_under_gevent(server.url, REQUESTS_CA_BUNDLE=str(cert)) < 1.5
    finally:
        server.close()


# -- (6) through an HTTP proxy ----------------------------------------------------------------------


class Proxy(LoopbackServer):
    """An HTTP proxy: CONNECT tunnels (its answer dripped when ``drip_connect``), or, for a plain
    request, ``forward``: silence."""

    def __init__(self, *, drip_connect: float = 0.0) -> None:
        self.drip_connect, self.held = drip_connect, []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        head = read_head(conn)
        if head is None:
            conn.close()
            return
        method, target = head.decode("latin-1").split(" ", 2)[:2]
        if method != "CONNECT":
            self.held.append(conn)  # accepted, never answered
            return
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        answer = b"HTTP/1.1 200 Connection established\r\n\r\n"
        try:
            for byte in [answer[i:i + 1] for i in range(len(answer))] if self.drip_connect else [answer]:
                time.sleep(self.drip_connect)
                conn.sendall(byte)
        except OSError:
            upstream.close()
            conn.close()
            return
        for source, sink in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    @staticmethod
    def _relay(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        sink.close()

    def close(self):
        self.server.close()
        for conn in self.held:
            conn.close()


def test_a_proxy_that_never_answers_ends_at_the_budget(monkeypatch):
    proxy = Proxy()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        gw = _gateway("http://gateway.invalid", read_timeout=5.0, retries=3)
        started = time.monotonic()
        with pytest.raises(GatewayNoAnswer, match="within 1 s"):
            gw.fetch_status("txn_1")
        assert time.monotonic() - started < 1.3
    finally:
        proxy.close()


@pytest.mark.parametrize("dripped", ["connect", "handshake", "head"])
def test_through_an_http_proxy_a_dripped_https_answer_ends_at_the_budget(self_signed, monkeypatch,  # noqa: F811
                                                                          dripped):
    cert, key = self_signed
    server = TLSDripGateway(cert, key, 200, STATUS, every=0.2, drip_head=dripped == "head",
                            drip_handshake=dripped == "handshake")
    proxy = Proxy(drip_connect=0.2 if dripped == "connect" else 0.0)
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        gw = _gateway(server.url, read_timeout=2.0, retries=3)
        started = time.monotonic()
        with pytest.raises(GatewayNoAnswer, match="within 1 s"):
            gw.fetch_status("txn_1")
        assert time.monotonic() - started < 1.4
        assert not server.answered.is_set()
    finally:
        proxy.close()
        server.close()


def test_a_name_with_two_addresses_that_never_connect_ends_at_the_budget(monkeypatch):
    """The connect timeout is not the budget of each address a name resolves to: two addresses whose
    connects hang (a full backlog) share the time left, as one would. (The resolver is stood in for,
    by a name with two A records; the sockets are real.)"""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    real = socket.getaddrinfo

    def two_records(host, *args, **kwargs):
        found = real("127.0.0.1" if host == "gateway.twice.test" else host, *args, **kwargs)
        return found * 2 if host == "gateway.twice.test" else found

    monkeypatch.setattr(socket, "getaddrinfo", two_records)
    try:
        gw = _gateway(f"http://gateway.twice.test:{listener.getsockname()[1]}", connect_timeout=2.0, retries=3)
        started = time.monotonic()
        with pytest.raises(GatewayNoAnswer, match="within 1 s"):
            gw.fetch_status("txn_1")
        assert time.monotonic() - started < 1.3  # was 2 s: each address given min(connect timeout, 1 s)
    finally:
        filler.close()
        listener.close()


def test_a_name_lookup_that_outlasts_the_budget_ends_the_call_at_the_budget(monkeypatch):
    """A resolver that does not answer (its own timeouts run to many seconds) does not hold the call
    past its budget: the lookup is waited for only as long as the budget has left. (The resolver is
    stood in for by one that answers after 3 s.)"""
    real = socket.getaddrinfo

    def slow_resolver(host, *args, **kwargs):
        if host == "gateway.slow-dns.test":
            time.sleep(3)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_resolver)
    gw = _gateway("http://gateway.slow-dns.test:9", retries=3)
    started = time.monotonic()
    with pytest.raises(GatewayNoAnswer, match="within 1 s"):
        gw.fetch_status("txn_1")
    assert time.monotonic() - started < 1.3  # not the 3 s the lookup takes

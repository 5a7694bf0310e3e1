"""The sandbox adapter's parsing of gateway answers (contract section 4)."""

import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import responses

from app.domain.status import Status
from app.gateways.base import GatewayError, GatewayRejected, GatewayUnavailable
from app.gateways.sandbox_client import SandboxGateway
from tests.gateways.support import LoopbackServer

BASE = "http://gw.test"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gw():
    return SandboxGateway(BASE, "sk_test", ["whsec_c2VjcmV0"], backoff=0.0)


@responses.activate
def test_fetch_status_parses_and_404_is_none(gw):
    responses.get(f"{BASE}/status/txn_1", json={"transaction_id": "txn_1", "status": "success",
                                                 "amount": 1999, "currency": "USD"})
    responses.get(f"{BASE}/status/txn_2", status=404, json={"error": "not_found"})
    status = gw.fetch_status("txn_1")
    assert (status.status, status.amount, status.currency) == (Status.SUCCESS, 1999, "USD")
    assert gw.fetch_status("txn_2") is None
    assert responses.calls[0].request.headers["Authorization"] == "Bearer sk_test"


@responses.activate
@pytest.mark.parametrize("body", [{"status": "weird", "amount": 1, "currency": "USD"},
                                  {"status": "success", "amount": 19.99, "currency": "USD"},
                                  {"status": "success", "amount": "1999", "currency": "USD"}])
def test_malformed_status_answers_raise(gw, body):
    responses.get(f"{BASE}/status/txn_1", json=body)
    with pytest.raises(GatewayError):
        gw.fetch_status("txn_1")


@responses.activate
def test_expire_200_and_409(gw):
    responses.post(f"{BASE}/sessions/cs_1/expire", json={"status": "expired"})
    responses.post(f"{BASE}/sessions/cs_2/expire", status=409, json={"status": "success"})
    assert gw.expire_session("cs_1") == Status.EXPIRED
    assert gw.expire_session("cs_2") == Status.SUCCESS


@responses.activate
def test_refund_sends_amount_and_key(gw):
    responses.post(f"{BASE}/refunds", json={"refund_id": "re_1", "status": "succeeded"})
    result = gw.refund("txn_1", 500, "rf_1")
    assert result.refund_id == "re_1" and result.succeeded
    assert responses.calls[0].request.headers["Idempotency-Key"] == "rf_1"


@responses.activate
def test_4xx_is_a_rejection_not_retried(gw):
    responses.post(f"{BASE}/refunds", status=422, json={"error": "refund_exceeds_amount"})
    with pytest.raises(GatewayRejected) as caught:
        gw.refund("txn_1", 10**9, "rf_2")
    assert caught.value.code == "refund_exceeds_amount"
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize("body", ['["a", "list"]', "[" * 30000 + "]" * 30000, "not json"])
def test_odd_refusal_bodies_are_still_a_rejection(gw, body):
    responses.post(f"{BASE}/refunds", status=422, body=body, content_type="application/json")
    with pytest.raises(GatewayRejected) as caught:
        gw.refund("txn_1", 500, "rf_3")
    assert caught.value.code is None


@responses.activate
def test_a_deeply_nested_answer_is_a_gateway_error(gw):
    responses.get(f"{BASE}/status/txn_1", body="[" * 30000 + "]" * 30000, content_type="application/json")
    with pytest.raises(GatewayError):
        gw.fetch_status("txn_1")


@responses.activate
def test_timeouts_are_retried_then_unavailable(gw):
    responses.get(f"{BASE}/status/txn_1", body=requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(GatewayUnavailable):
        gw.fetch_status("txn_1")


class DripGateway(LoopbackServer):
    """A gateway on a real socket that sends its answer one byte at a time.

    Each byte comes well within the read timeout, so only the call's whole-time budget can
    end the wait. ``head`` is dripped too when ``drip_head`` is set."""

    def __init__(self, status: int, body: bytes, *, every: float, drip_head: bool = False):
        self.answer_head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.body, self.every, self.drip_head = body, every, drip_head
        self.requests = 0
        self.answered = threading.Event()  # set when one whole answer has been sent
        self.ended = threading.Event()  # set when the server is done with a connection, answered or not
        super().__init__()

    def handle(self, conn):
        try:
            self._answer(conn)
        finally:
            self.ended.set()

    def _answer(self, conn):
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            self.requests += 1
            conn.sendall(b"" if self.drip_head else self.answer_head)
            try:
                for byte in (self.answer_head if self.drip_head else b"") + self.body:
                    time.sleep(self.every)
                    conn.sendall(bytes([byte]))
            except OSError:
                return  # the client went away
        self.answered.set()

    def close(self):
        self.server.close()


@pytest.mark.parametrize("drip_head", [False, True], ids=["body", "status line and headers"])
def test_an_answer_sent_a_byte_at_a_time_ends_at_the_budget(drip, drip_head):
    """Every byte arrives within the read timeout; the call still ends at its time budget."""
    body = b'{"transaction_id": "txn_1", "status": "success", "amount": 1999, "currency": "USD"}'
    server = drip(200, body, every=0.2, drip_head=drip_head)  # the whole answer takes 17 s or more
    gw = SandboxGateway(server.url, "sk_test", ["whsec_c2VjcmV0"], read_timeout=2.0, backoff=0.0, total_budget=1.0)
    with pytest.raises(GatewayUnavailable, match="no complete answer within 1 s"):
        gw.fetch_status("txn_1")
    assert not server.answered.is_set()  # the caller stopped waiting long before the answer was complete


def test_a_call_past_its_budget_makes_no_further_attempt(drip):
    """A 503 whose body drips past the budget: the caller has given up, and so has the retry."""
    server = drip(503, b'{"error": "busy"}', every=0.15)
    gw = SandboxGateway(server.url, "sk_test", ["whsec_c2VjcmV0"], read_timeout=2.0, backoff=0.0, total_budget=1.0)
    with pytest.raises(GatewayUnavailable):
        gw.fetch_status("txn_1")
    assert server.ended.wait(10)  # the answer was sent whole, or the client hung up on it
    time.sleep(0.5)  # time for a further attempt to arrive, were one made
    assert server.requests == 1


def test_an_abandoned_call_does_not_hold_the_process_at_exit(drip):
    """A command (payments reconcile) ends when its work does, not when a dripping answer does."""
    body = b'{"transaction_id": "txn_1", "status": "success", "amount": 1999, "currency": "USD"}'
    server = drip(200, body, every=0.2)  # 17 s for the whole answer
    script = ("from app.gateways.sandbox_client import SandboxGateway\n"
              "from app.gateways.base import GatewayUnavailable\n"
              f"gw = SandboxGateway({server.url!r}, 'sk', ['whsec_c2VjcmV0'], read_timeout=2.0, total_budget=1.0)\n"
              "try:\n    gw.fetch_status('txn_1')\nexcept GatewayUnavailable:\n    print('gave up')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "gave up", done.stderr
    assert not server.answered.is_set()  # the process ended while the answer was still coming


class TLSDripGateway(DripGateway):
    """DripGateway over TLS (a self-signed certificate for 127.0.0.1): each dripped byte is a TLS record.
    With ``drip_handshake`` its side of the TLS handshake comes a byte at a time too."""

    def __init__(self, cert: Path, key: Path, *args, drip_handshake: bool = False, **kwargs):
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.drip_handshake = drip_handshake
        super().__init__(*args, **kwargs)
        self.url = self.url.replace("http://", "https://", 1)

    def _answer(self, conn):
        if self.drip_handshake:  # TLS on one end of a socket pair, relayed to the client
            client, (conn, relay) = conn, socket.socketpair()
            threading.Thread(target=self._relay, args=(client, relay, 0.0), daemon=True).start()
            threading.Thread(target=self._relay, args=(relay, client, self.every), daemon=True).start()
        try:
            conn = self.tls.wrap_socket(conn, server_side=True)
        except OSError:
            conn.close()
            return
        super()._answer(conn)

    @staticmethod
    def _relay(source, sink, every):
        try:
            while data := source.recv(65536):
                for part in [data[i:i + 1] for i in range(len(data))] if every else [data]:
                    time.sleep(every)
                    sink.sendall(part)
        except OSError:
            pass
        sink.close()


@pytest.fixture
def self_signed(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("dripped", ["body", "head", "handshake"])
def test_an_https_answer_sent_a_byte_at_a_time_ends_at_the_budget(self_signed, monkeypatch, dripped):
    """The same over TLS (the body, or the status line and headers too, or the TLS handshake), with the
    gateway's certificate trusted the way the environment says."""
    cert, key = self_signed
    body = b'{"transaction_id": "txn_1", "status": "success", "amount": 1999, "currency": "USD"}'
    server = TLSDripGateway(cert, key, 200, body, every=0.2, drip_head=dripped == "head",
                            drip_handshake=dripped == "handshake")  # 17 s or more
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        gw = SandboxGateway(server.url, "sk_test", ["whsec_c2VjcmV0"], read_timeout=2.0, backoff=0.0,
                            total_budget=1.0)
        started = time.monotonic()
        with pytest.raises(GatewayUnavailable, match="no complete answer within 1 s"):
            gw.fetch_status("txn_1")
        assert time.monotonic() - started < 1.5
        assert server.requests == (0 if dripped == "handshake" else 1) and not server.answered.is_set()
    finally:
        server.close()


@responses.activate
def test_a_call_is_made_on_the_caller_s_thread(gw):
    """No thread per call (its handoff costs CPU on every call): the deadline is kept on the socket."""
    threads = []

    def answer(request):
        threads.append(threading.current_thread())
        return 200, {}, '{"transaction_id": "txn_1", "status": "success", "amount": 1999, "currency": "USD"}'

    responses.add_callback(responses.GET, f"{BASE}/status/txn_1", callback=answer)
    assert gw.fetch_status("txn_1").amount == 1999
    assert threads == [threading.current_thread()]


@responses.activate
@pytest.mark.parametrize(("status", "kind"), [(501, GatewayUnavailable), (524, GatewayUnavailable),
                                              (202, GatewayUnavailable), (302, GatewayUnavailable),
                                              (400, GatewayRejected), (409, GatewayRejected)])
def test_only_a_4xx_is_taken_for_a_refusal(gw, status, kind):
    responses.post(f"{BASE}/refunds", status=status, json={"error": "x"})
    with pytest.raises(GatewayError) as raised:
        gw.refund("txn_1", 500, "rf_1")
    assert type(raised.value) is kind
    assert len(responses.calls) == 1  # neither kind is retried


@responses.activate
@pytest.mark.parametrize(("status", "target"), [(303, f"{BASE}/refunds/re_1"), (307, "http://elsewhere.test/refunds")])
def test_a_redirect_is_not_followed_and_leaves_the_outcome_open(gw, status, target):
    # A 303 after the refund was made, to a page that answers 404, must not read as a refusal;
    # a 307 elsewhere must not carry the call (or, unauthenticated, fail it) somewhere else.
    responses.post(f"{BASE}/refunds", status=status, headers={"Location": target})
    responses.get(f"{BASE}/refunds/re_1", status=404, json={"error": "not_found"})
    responses.post("http://elsewhere.test/refunds", status=401, json={"error": "unauthorized"})
    with pytest.raises(GatewayUnavailable):
        gw.refund("txn_1", 500, "rf_1")
    assert [call.request.url for call in responses.calls] == [f"{BASE}/refunds"]


@responses.activate
def test_a_refusal_whose_error_is_not_text_names_no_code(gw):
    responses.post(f"{BASE}/refunds", status=409, json={"error": {"type": "idempotency_error"}})
    with pytest.raises(GatewayRejected) as raised:
        gw.refund("txn_1", 500, "rf_1")
    assert raised.value.code is None

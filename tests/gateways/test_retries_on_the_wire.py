"""Contract section 3: a gateway that is unreachable or failing gets bounded retries (at most 30 s in
all), every retry with the same gateway Idempotency-Key.

Under ``responses`` a connection error or a timeout never reaches urllib3's retry policy, so
these tests run the gateway on a real loopback socket of their own and count the attempts that
arrive on the wire, with the headers each one carried.
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import datetime

import pytest

import config
from app.gateways.base import GatewayUnavailable, SessionRequest
from app.gateways.registry import get_gateway
from app.gateways.sandbox_client import SandboxGateway
from tests.conftest import place_order, prepare_database
from tests.gateways.support import LoopbackServer, read_head

SECRET = ["whsec_c2VjcmV0"]
RETRIES = config.TestConfig.GATEWAY_RETRIES  # what the app is configured with


class WireGateway(LoopbackServer):
    """A listener on 127.0.0.1 (port 0) that reads each request whole, records it, and then acts
    as ``plan`` says for that connection: ``close`` (hang up without a word), ``silent`` (keep
    the connection open and never answer) or ``answer`` (a create-session answer). Connections
    beyond the plan get ``default``."""

    def __init__(self, default: str, plan: tuple[str, ...] = ()):
        self.default, self.plan = default, list(plan)
        self.requests: list[dict] = []
        self.changed = threading.Condition()
        self.held: list[socket.socket] = []
        super().__init__()

    @staticmethod
    def _read_request(conn: socket.socket) -> dict | None:
        received = read_head(conn)
        if received is None:
            return None
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        method, path, _ = lines[0].split(" ", 2)
        return {"method": method, "path": path, "headers": headers, "body": body}

    def handle(self, conn: socket.socket) -> None:
        request = self._read_request(conn)
        if request is None:
            conn.close()
            return
        with self.changed:
            action = self.plan.pop(0) if self.plan else self.default
            self.requests.append(request)
            self.changed.notify_all()
        if action == "silent":
            with self.changed:
                self.held.append(conn)  # closed by stop()
            return
        if action == "answer":
            key = request["headers"]["idempotency-key"]
            body = json.dumps({"session_id": f"cs_{key}", "payment_url": f"{self.url}/pay/cs_{key}"}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        conn.close()

    def wait_for(self, count: int, timeout: float = 30) -> list[dict]:
        """The requests received, once there are at least ``count`` (fails the test otherwise)."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.requests) >= count, timeout):
                pytest.fail(f"expected {count} requests on the wire, got {len(self.requests)}")
            return list(self.requests)

    def stop(self) -> None:
        self.server.close()
        with self.changed:
            for conn in self.held:
                conn.close()


@pytest.fixture
def wire():
    made: list[WireGateway] = []

    def start(default: str, plan: tuple[str, ...] = ()) -> WireGateway:
        made.append(WireGateway(default, plan))
        return made[-1]

    yield start
    for server in made:
        server.stop()


def session_request(tx_id: str = "txn_wire_1") -> SessionRequest:
    return SessionRequest(transaction_id=tx_id, amount=1999, currency="USD",
                          callback_url="http://127.0.0.1:5000/payment-callback",
                          return_url="http://127.0.0.1:5000/r", cancel_url="http://127.0.0.1:5000/c",
                          expires_at=datetime(2030, 1, 1))


def client_for(server: WireGateway, **kwargs) -> SandboxGateway:
    return SandboxGateway(server.url, "sk_test", SECRET, backoff=0.0, **{"read_timeout": 0.3, **kwargs})


def _assert_every_attempt_carried(requests_seen: list[dict], tx_id: str) -> None:
    for attempt in requests_seen:
        assert (attempt["method"], attempt["path"]) == ("POST", "/create-session")
        assert attempt["headers"].get("idempotency-key") == tx_id
        assert json.loads(attempt["body"])["transaction_id"] == tx_id


# -- the adapter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["close", "silent"], ids=["connection closed unanswered", "read timeout"])
def test_each_failed_attempt_is_retried_on_the_wire_with_the_same_key(wire, mode):
    server = wire(mode)
    gw = client_for(server, retries=3)
    with pytest.raises(GatewayUnavailable):
        gw.create_session(session_request("txn_wire_1"))
    seen = server.wait_for(4)
    assert len(seen) == 4  # the first attempt and three retries, no more
    _assert_every_attempt_carried(seen, "txn_wire_1")


@pytest.mark.parametrize("mode", ["close", "silent"], ids=["connection closed unanswered", "read timeout"])
def test_a_retry_after_a_failed_attempt_gets_the_session(wire, mode):
    server = wire("answer", plan=(mode, mode))
    gw = client_for(server, retries=3)
    session = gw.create_session(session_request("txn_wire_2"))
    assert session.session_id == "cs_txn_wire_2"
    seen = server.wait_for(3)
    assert len(seen) == 3
    _assert_every_attempt_carried(seen, "txn_wire_2")


# -- the app ----------------------------------------------------------------------------------------


@pytest.fixture
def app_on(make_app, database_url):
    def build(url: str, **overrides):
        app = make_app(**{"PAYMENT_GATEWAY_URL": url, "GATEWAY_READ_TIMEOUT": 0.3, **overrides})
        prepare_database(app, database_url)
        return app
    return build


@pytest.mark.parametrize("mode", ["close", "silent"], ids=["connection closed unanswered", "read timeout"])
def test_initiate_payment_retries_on_the_wire_then_answers_502(app_on, wire, mode):
    server = wire(mode)
    app = app_on(server.url)
    client = app.test_client()
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 502
    body = response.get_json()
    assert body["error"] == "gateway_unavailable" and body["message"]
    tx_id = body["transaction_id"]
    seen = server.wait_for(1 + RETRIES)
    assert len(seen) == 1 + RETRIES
    _assert_every_attempt_carried(seen, tx_id)
    assert client.get(f"/check-payment-status/{tx_id}").get_json()["status"] == "failure"


@pytest.mark.parametrize("mode", ["close", "silent"], ids=["connection closed unanswered", "read timeout"])
def test_initiate_payment_survives_a_lost_attempt(app_on, wire, mode):
    server = wire("answer", plan=(mode,))
    app = app_on(server.url)
    client = app.test_client()
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 201, response.get_json()
    tx_id = response.get_json()["transaction_id"]
    assert response.get_json()["payment_url"] == f"{server.url}/pay/cs_{tx_id}"
    seen = server.wait_for(2)
    assert len(seen) == 2
    _assert_every_attempt_carried(seen, tx_id)


# -- the budget: from the configuration, at most 30 s --------------------------------------------------


@pytest.mark.parametrize("config_class", [config.Config, config.ProductionConfig, config.TestConfig])
def test_the_configured_total_budget_is_at_most_30_seconds(config_class):
    assert 0 < config_class.GATEWAY_TOTAL_BUDGET <= 30


def test_the_app_s_gateway_client_takes_its_budget_from_the_configuration(make_app):
    default = make_app()
    with default.app_context():
        assert get_gateway().total_budget == config.TestConfig.GATEWAY_TOTAL_BUDGET <= 30
    custom = make_app(GATEWAY_TOTAL_BUDGET=7.5)
    with custom.app_context():
        assert get_gateway().total_budget == 7.5


def test_initiate_payment_ends_at_the_configured_budget(app_on, drip):
    """A create-session answer dripped a byte at a time (each byte well within the read timeout,
    the whole answer taking 15 s or more) is given up at GATEWAY_TOTAL_BUDGET: 502, not 201."""
    body = json.dumps({"session_id": "cs_drip", "payment_url": "http://127.0.0.1:9/pay/cs_drip"}).encode()
    server = drip(200, body, every=0.25)
    assert len(body) * 0.25 >= 15
    app = app_on(server.url, GATEWAY_TOTAL_BUDGET=1.0, GATEWAY_READ_TIMEOUT=2.0)
    client = app.test_client()
    response = client.post("/initiate-payment", json={"order_id": place_order(client)["order_id"]})
    assert response.status_code == 502 and response.get_json()["error"] == "gateway_unavailable"
    assert not server.answered.is_set()  # the app stopped waiting long before the answer was complete
    assert server.requests == 1

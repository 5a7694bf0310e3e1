"""Two gunicorn instances on one PostgreSQL database and one Redis, as in production.

A socket client on instance A hears about a webhook posted to instance B (the Socket.IO
message queue), and with both instances running the scheduler every due transaction is
checked with the gateway exactly once (row claims across processes). Logging out on one
instance disconnects that session's ops socket on the other. A change made by the
`payments reconcile` command, a process of its own, reaches a socket joined on a server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest
import requests
import socketio
import sqlalchemy as sa
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from app.gateways.signing import sign
from bench.harness import ROOT, free_port, gunicorn, migrate
from config import DEV_WEBHOOK_SECRET
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.ops.conftest import _CSRF

pytestmark = pytest.mark.skipif(not (TEST_DATABASE_URL and TEST_REDIS_URL),
                                reason="needs TEST_DATABASE_URL and TEST_REDIS_URL (.ci/run sets both)")


class StubGateway:
    """A gateway that opens sessions, answers status 'success' and counts status checks."""

    def __init__(self):
        self.status_calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", free_port(), self.wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @Request.application
    def wsgi(self, request: Request) -> Response:
        if request.path == "/create-session":
            key = request.headers["Idempotency-Key"]
            return Response(json.dumps({"session_id": f"cs_{key}", "payment_url": f"{self.url}/pay/{key}"}),
                            mimetype="application/json")
        if request.path.startswith("/status/"):
            tx_id = request.path.rsplit("/", 1)[1]
            with self.lock:
                self.status_calls[tx_id] += 1
            time.sleep(0.05)  # a gateway is not instant: gives the two schedulers time to collide
            return Response(json.dumps({"transaction_id": tx_id, "status": "success", "amount": 1999,
                                        "currency": "USD"}), mimetype="application/json")
        if request.path.endswith("/expire"):
            return Response(json.dumps({"status": "expired"}), mimetype="application/json")
        return Response("{}", status=404, mimetype="application/json")


@pytest.fixture
def database_url():
    base = sa.make_url(TEST_DATABASE_URL)
    name = f"{base.database}_two_instances_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    migrate(url)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def insert_due(url: str, count: int) -> list[str]:
    ids = [f"txn_due{uuid.uuid4().hex[:20]}" for _ in range(count)]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for tx_id in ids:
            conn.execute(sa.text(
                "INSERT INTO orders (id, status, total, currency, access_code, fulfillment_attempts, created_at, "
                "updated_at) VALUES (:o, 'open', 1999, 'USD', 'CODE', 0, now(), now())"), {"o": f"ord_{tx_id[4:]}"})
            conn.execute(sa.text(
                "INSERT INTO transactions (id, order_id, amount, currency, status, gateway, gateway_session_id, "
                "expires_at, needs_review, refunded_amount, check_attempts, created_at, updated_at) VALUES "
                "(:t, :o, 1999, 'USD', 'pending', 'sandbox', :s, now() + interval '10 minutes', false, 0, 0, "
                "now() at time zone 'utc' - interval '20 minutes', now() at time zone 'utc' - interval '20 minutes')"),
                {"t": tx_id, "o": f"ord_{tx_id[4:]}", "s": f"cs_{tx_id}"})
    engine.dispose()
    return ids


def post_success(app_url: str, tx_id: str) -> requests.Response:
    """Deliver a signed success webhook for ``tx_id`` (1999 USD) to the instance at ``app_url``."""
    body = json.dumps({"type": "payment.status_changed", "timestamp": "2026-01-01T00:00:00Z", "data": {
        "transaction_id": tx_id, "session_id": "cs", "status": "success", "amount": 1999,
        "currency": "USD"}}).encode()
    headers = {**sign(DEV_WEBHOOK_SECRET, f"msg_{uuid.uuid4().hex}", body).as_dict(),
               "Content-Type": "application/json"}
    return requests.post(f"{app_url}/payment-callback", data=body, headers=headers)


def statuses(url: str, ids: list[str]) -> dict[str, str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, status FROM transactions WHERE id = ANY(:ids)"), {"ids": ids}).all()
    engine.dispose()
    return dict(rows)


def test_socket_on_a_hears_webhook_on_b_and_schedulers_share_the_work(database_url):
    gateway = StubGateway()
    env = {"DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL, "PAYMENT_GATEWAY_URL": gateway.url,
           "SCHEDULER_ENABLED": "1", "SCHEDULER_INTERVAL": "1", "PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
           "SOCKETIO_CHANNEL": f"test-{uuid.uuid4().hex[:8]}"}
    with gunicorn("wsgi:app", env) as a_url, gunicorn("wsgi:app", env) as b_url:
        order = requests.post(f"{a_url}/api/orders", json={"items": [{"sku": "TEE-BLACK", "quantity": 1}]}).json()
        tx_id = requests.post(f"{a_url}/initiate-payment", json={"order_id": order["order_id"]}).json()[
            "transaction_id"]

        received: list[dict] = []
        arrived = threading.Event()
        client = socketio.Client(reconnection=False)

        @client.on("payment_status_update")
        def on_update(data):
            received.append(data)
            if data["status"] == "success":
                arrived.set()

        client.connect(a_url, transports=["websocket"], wait_timeout=10)
        client.emit("join", {"transaction_id": tx_id})
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received and received[0] == {"transaction_id": tx_id, "status": "pending"}

        assert post_success(b_url, tx_id).status_code == 200
        assert arrived.wait(10), f"no update on A for a webhook posted to B: {received}"
        client.disconnect()

        due = insert_due(database_url, 40)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(statuses(database_url, due).values()) != {"success"}:
            time.sleep(0.25)
        assert set(statuses(database_url, due).values()) == {"success"}
        time.sleep(2)  # another pass or two on both instances: nothing is checked again
    calls = {tx: gateway.status_calls[tx] for tx in due}
    assert set(calls.values()) == {1}, {tx: n for tx, n in calls.items() if n != 1}


def form_token(session: requests.Session, url: str) -> str:
    match = _CSRF.search(session.get(url).text)
    assert match, f"no csrf_token on {url}"
    return match.group(1) or match.group(2)


def test_logging_out_on_b_disconnects_the_sessions_ops_socket_on_a(database_url):
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (email, password_hash, role, created_at) VALUES "
                             "('ops@example.test', :h, 'admin', now())"),
                     {"h": generate_password_hash("correct horse battery", method="pbkdf2:sha256:1000")})
    engine.dispose()
    env = {"DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL, "SECRET_KEY": "two-instances-secret",
           "SOCKETIO_CHANNEL": f"test-{uuid.uuid4().hex[:8]}"}
    with gunicorn("wsgi:app", env) as a_url, gunicorn("wsgi:app", env) as b_url:
        staff = requests.Session()
        logged_in = staff.post(f"{b_url}/ops/login", allow_redirects=False, data={
            "csrf_token": form_token(staff, f"{b_url}/ops/login"), "email": "ops@example.test",
            "password": "correct horse battery"})
        assert logged_in.status_code == 303
        cookie = staff.cookies.get("session")

        joined, gone = threading.Event(), threading.Event()
        client = socketio.Client(reconnection=False)
        client.on("ops_joined", lambda _data: joined.set())
        client.on("disconnect", lambda *_reason: gone.set())
        client.connect(a_url, headers={"Cookie": f"session={cookie}"}, transports=["websocket"], wait_timeout=10)
        client.emit("ops_join")
        assert joined.wait(10), "the ops socket on A was not let into the ops room"

        logged_out = staff.post(f"{b_url}/ops/logout", allow_redirects=False,
                                data={"csrf_token": form_token(staff, f"{b_url}/ops/transactions")})
        assert logged_out.status_code == 303
        assert gone.wait(10), "logging out on B left the session's ops socket on A connected"
        replay = requests.get(f"{a_url}/ops/transactions", cookies={"session": cookie}, allow_redirects=False)
        assert replay.status_code == 302 and "/ops/login" in replay.headers["Location"]


def test_pages_on_one_port_with_several_workers_all_hear_the_result(database_url):
    """With REDIS_URL, gunicorn runs several workers on one port and no load balancer keeps a
    browser on one of them: the pages' WebSocket-only clients must each reach one worker and
    still hear a change made by any other."""
    gateway = StubGateway()
    env = {"DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL, "PAYMENT_GATEWAY_URL": gateway.url,
           "PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET, "SOCKETIO_CHANNEL": f"test-{uuid.uuid4().hex[:8]}"}
    with gunicorn("wsgi:app", env, workers=3) as url:
        order = requests.post(f"{url}/api/orders", json={"items": [{"sku": "TEE-BLACK", "quantity": 1}]}).json()
        tx_id = requests.post(f"{url}/initiate-payment", json={"order_id": order["order_id"]}).json()[
            "transaction_id"]
        heard: list[list[str]] = []
        clients = []
        for _ in range(8):
            statuses_heard: list[str] = []
            heard.append(statuses_heard)
            client = socketio.Client(reconnection=False)
            client.on("payment_status_update", lambda data, into=statuses_heard: into.append(data["status"]))
            client.connect(url, transports=["websocket"], wait_timeout=10)  # as payment.js connects
            client.emit("join", {"transaction_id": tx_id})
            clients.append(client)
        deadline = time.monotonic() + 10
        while any(not h for h in heard) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(h == ["pending"] for h in heard), heard
        assert post_success(url, tx_id).status_code == 200
        deadline = time.monotonic() + 10
        while any(h[-1] != "success" for h in heard) and time.monotonic() < deadline:
            time.sleep(0.05)
        for client in clients:
            client.disconnect()
    assert all(h == ["pending", "success"] for h in heard), heard


def test_a_change_made_by_the_reconcile_command_reaches_a_socket_on_a_server(database_url):
    """Contract 5 (and 1, REDIS_URL): a status change made by ``flask payments reconcile``, a process
    of its own that serves no socket, is pushed to the room on the server the browser joined."""
    gateway = StubGateway()  # its status check answers success for 1999 USD
    env = {"DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL, "PAYMENT_GATEWAY_URL": gateway.url,
           "PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET, "SOCKETIO_CHANNEL": f"test-{uuid.uuid4().hex[:8]}"}
    with gunicorn("wsgi:app", env) as url:
        order = requests.post(f"{url}/api/orders", json={"items": [{"sku": "TEE-BLACK", "quantity": 1}]}).json()
        tx_id = requests.post(f"{url}/initiate-payment", json={"order_id": order["order_id"]}).json()[
            "transaction_id"]
        heard: list[dict] = []
        client = socketio.Client(reconnection=False)
        client.on("payment_status_update", heard.append)
        client.connect(url, transports=["websocket"], wait_timeout=10)
        client.emit("join", {"transaction_id": tx_id})
        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:
            time.sleep(0.05)
        assert heard == [{"transaction_id": tx_id, "status": "pending"}]
        engine = sa.create_engine(database_url)
        with engine.begin() as conn:  # test data setup: pending past the 900 s check window
            conn.execute(sa.text("UPDATE transactions SET created_at = created_at - interval '20 minutes' "
                                 "WHERE id = :t"), {"t": tx_id})
        engine.dispose()

        done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "payments", "reconcile"],
                              cwd=ROOT, env={**os.environ, "SCHEDULER_ENABLED": "0", "LOG_LEVEL": "WARNING", **env},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "changed=1" in done.stdout, done.stdout
        assert statuses(database_url, [tx_id]) == {tx_id: "success"}
        deadline = time.monotonic() + 10
        while len(heard) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.disconnect()
    assert heard == [{"transaction_id": tx_id, "status": "pending"}, {"transaction_id": tx_id, "status": "success"}]

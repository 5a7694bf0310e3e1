"""Fixtures for the whole suite.

Every test that takes ``app`` runs once on SQLite (a fresh file) and once on PostgreSQL
when TEST_DATABASE_URL is set (a database per xdist worker, tables emptied between tests);
without it the PostgreSQL run is skipped with that reason, visibly.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
import responses
import sqlalchemy as sa
from standardwebhooks import Webhook

from app import create_app
from app.extensions import db
from config import DEV_WEBHOOK_SECRET, TestConfig
from tests import fulfillment_probe

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL")
GATEWAY = TestConfig.PAYMENT_GATEWAY_URL


def _worker_database_url(worker_id: str) -> str:
    """Create (once) and return a PostgreSQL database of this xdist worker's own."""
    base = sa.make_url(TEST_DATABASE_URL)
    # TEST_DB_SUFFIX keeps two suites run at once on one server out of each other's way.
    suffix = os.environ.get("TEST_DB_SUFFIX", "")
    name = f"{base.database}_checkout{'_' + suffix if suffix else ''}_{worker_id}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url(worker_id):
    if not TEST_DATABASE_URL:
        pytest.skip("PostgreSQL run skipped: TEST_DATABASE_URL is not set (.ci/run sets it)")
    url = _worker_database_url(worker_id)
    app = create_app({**_test_settings(), "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        db.drop_all()
        db.create_all()
        db.engine.dispose()
    return url


def _test_settings() -> dict:
    return {key: getattr(TestConfig, key) for key in dir(TestConfig) if key.isupper()}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'checkout.db'}"
    return request.getfixturevalue("postgres_url")


@contextmanager
def _apps_on(url: str):
    """A builder of app instances on ``url``, each disposed of when the block ends."""
    built = []

    def build(**overrides):
        app = create_app({**_test_settings(), "SQLALCHEMY_DATABASE_URI": url, **overrides})
        built.append(app)
        return app

    yield build
    for app in built:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def make_app(database_url):
    """Build app instances on this test's database; extra settings override TestConfig."""
    with _apps_on(database_url) as build:
        yield build


@pytest.fixture
def pg_admin(postgres_url):
    """An autocommit connection to this worker's PostgreSQL database, as a second client."""
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn
    engine.dispose()


@pytest.fixture
def make_pg_app(postgres_url):
    """Build app instances on this worker's PostgreSQL database only (no SQLite run)."""
    with _apps_on(postgres_url) as build:
        yield build


def prepare_database(app, database_url: str) -> None:
    """Give ``app`` empty tables (created on SQLite, truncated on PostgreSQL) and the demo catalog."""
    with app.app_context():
        if database_url.startswith("sqlite"):
            db.create_all()
        else:
            names = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
            db.session.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            db.session.commit()
        from app.services.catalog import seed_demo_catalog

        seed_demo_catalog()
    fulfillment_probe.reset()


def probed_app(make, database_url: str):
    """An app from ``make`` whose fulfillment handler is the probe, on prepared tables."""
    app = make(FULFILLMENT_HANDLER="tests.fulfillment_probe:record")
    prepare_database(app, database_url)
    return app


@pytest.fixture
def app(make_app, database_url):
    yield probed_app(make_app, database_url)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield


@pytest.fixture
def gateway():
    """The gateway's HTTP API mocked with `responses`; ``sessions`` opens sessions that succeed."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def open_sessions(mock: responses.RequestsMock) -> None:
    """Make create-session answer like the gateway: one session per Idempotency-Key."""

    def create(request):
        key = request.headers["Idempotency-Key"]
        return 200, {}, json.dumps({"session_id": f"cs_{key}", "payment_url": f"{GATEWAY}/pay/cs_{key}"})

    mock.add_callback(responses.POST, f"{GATEWAY}/create-session", callback=create)


def sign(body: dict | bytes, *, msg_id: str | None = None, secret: str = DEV_WEBHOOK_SECRET,
         timestamp: datetime | None = None) -> tuple[bytes, dict]:
    """Sign a webhook body with the independent `standardwebhooks` package."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = timestamp or datetime.now(timezone.utc)
    signature = Webhook(secret).sign(msg_id, when, raw.decode())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return raw, headers


def status_event(tx_id: str, status: str, amount: int, currency: str = "USD") -> dict:
    return {
        "type": "payment.status_changed",
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "data": {"transaction_id": tx_id, "session_id": f"cs_{tx_id}", "status": status,
                 "amount": amount, "currency": currency},
    }


def post_webhook(client, body: dict, **kwargs):
    raw, headers = sign(body, **kwargs)
    return client.post("/payment-callback", data=raw, headers=headers)


def place_order(client, items=(("TEE-BLACK", 1),)) -> dict:
    response = client.post("/api/orders", json={"items": [{"sku": s, "quantity": q} for s, q in items]})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def start_payment(client, gateway_mock, order_id: str, **kwargs) -> dict:
    if not any(c.url.endswith("/create-session") for c in gateway_mock.registered()):
        open_sessions(gateway_mock)
    response = client.post("/initiate-payment", json={"order_id": order_id}, **kwargs)
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def socket_leaves_during(monkeypatch, owner, name: str) -> None:
    """Patch ``owner.name`` so that the socket whose event is being handled disconnects first:
    a page closed or navigated right after it asked for something."""
    from flask import request

    from app.extensions import socketio

    real = getattr(owner, name)

    def leave_then(*args):
        socketio.server.disconnect(request.sid, namespace="/")
        return real(*args)

    monkeypatch.setattr(owner, name, leave_then)

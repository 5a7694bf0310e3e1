"""Helpers of the ops console tests: staff accounts, logging in, CSRF tokens, a paid payment."""

from __future__ import annotations

import re

import pytest
from werkzeug.security import generate_password_hash

from app.extensions import db
from app.models import User
from tests.conftest import place_order, post_webhook, start_payment, status_event

PASSWORD = "correct horse battery"
ADMIN = "admin@example.test"
VIEWER = "viewer@example.test"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real browser (Playwright + Debian Chromium)")


def add_user(app, email: str, role: str, password: str = PASSWORD) -> None:
    """Store a staff account; a cheap hash keeps the suite fast (the CLI test covers the default)."""
    with app.app_context():
        db.session.add(User(email=email, role=role,
                            password_hash=generate_password_hash(password, method="pbkdf2:sha256:1000")))
        db.session.commit()


def csrf_token(client, url: str = "/ops/login") -> str:
    """The hidden csrf_token of the form at ``url``, as a browser would read it."""
    html = client.get(url).get_data(as_text=True)
    match = _CSRF.search(html)
    assert match, f"no csrf_token on {url}"
    return match.group(1) or match.group(2)


def login(client, email: str, password: str = PASSWORD):
    token = csrf_token(client, "/ops/login")
    return client.post("/ops/login", data={"csrf_token": token, "email": email, "password": password})


def post_form(client, url: str, data: dict | None = None, *, token_from: str = "/ops/transactions"):
    """POST ``data`` to ``url`` with a valid csrf_token taken from a page of this session."""
    return client.post(url, data={"csrf_token": csrf_token(client, token_from), **(data or {})})


@pytest.fixture
def staff(app):
    add_user(app, ADMIN, "admin")
    add_user(app, VIEWER, "viewer")


@pytest.fixture
def admin_client(app, staff):
    client = app.test_client()
    assert login(client, ADMIN).status_code == 303
    return client


@pytest.fixture
def viewer_client(app, staff):
    client = app.test_client()
    assert login(client, VIEWER).status_code == 303
    return client


def paid_transaction(client, gateway, items=(("TEE-BLACK", 1),)) -> tuple[dict, str, int]:
    """An order paid in full through the API and a signed success webhook: (order, tx id, amount)."""
    order = place_order(client, items)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    response = post_webhook(client, status_event(tx_id, "success", order["total"], order["currency"]))
    assert response.status_code == 200
    return order, tx_id, order["total"]

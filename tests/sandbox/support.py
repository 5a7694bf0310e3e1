"""Helpers of the sandbox gateway suite: keys, bodies, a shopper driving the page, a webhook receiver."""

from __future__ import annotations

import base64
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

API_KEY = "sk_test_sandbox_key"
ADMIN_KEY = "sk_test_sandbox_admin"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"sandbox-test-webhook-secret-0123").decode()
PUBLIC_URL = "http://sandbox.test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OUR_THREADS = ("sandbox-delivery", "sandbox-http", "test-receiver")


def future(seconds: float = 3600) -> str:
    """An ISO 8601 UTC timestamp ``seconds`` from now."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


LATER = future(24 * 3600)  # one fixed expires_at, so repeated bodies are identical


def session_body(transaction_id: str = "tx_1", **overrides) -> dict:
    """A valid create-session body."""
    body = {
        "transaction_id": transaction_id,
        "amount": 1999,
        "currency": "USD",
        "callback_url": "http://127.0.0.1:9/payment-callback",
        "return_url": f"http://shop.test/payment/{transaction_id}",
        "cancel_url": f"http://shop.test/checkout/cancelled/{transaction_id}",
        "expires_at": LATER,
    }
    body.update(overrides)
    return body


def form_token(html: str) -> str:
    """The hidden csrf_token of a rendered form."""
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


class Shopper:
    """Drives the API and the hosted page through a Flask test client."""

    def __init__(self, client):
        self.client = client

    def create(self, transaction_id: str = "tx_1", key: str | None = None, **overrides):
        """POST /create-session; returns the response."""
        headers = {**AUTH, "Idempotency-Key": key or transaction_id}
        return self.client.post("/create-session", json=session_body(transaction_id, **overrides), headers=headers)

    def session_id(self, transaction_id: str = "tx_1", **overrides) -> str:
        """Create a session and return its id."""
        answer = self.create(transaction_id, **overrides)
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()["session_id"]

    def status(self, transaction_id: str = "tx_1") -> str:
        return self.client.get(f"/status/{transaction_id}", headers=AUTH).get_json()["status"]

    def pay(self, session_id: str, card: str = "4242 4242 4242 4242", expiry: str = "12/39", cvc: str = "123"):
        """Open the hosted page and submit the card form; returns the POST response."""
        page = self.client.get(f"/pay/{session_id}")
        assert page.status_code == 200, page.get_data(as_text=True)
        form = {"csrf_token": form_token(page.get_data(as_text=True)), "card_number": card,
                "expiry": expiry, "cvc": cvc, "name": "Ada Lovelace"}
        return self.client.post(f"/pay/{session_id}", data=form)

    def confirm(self, session_id: str, action: str):
        """Answer the 3220 confirmation page with ``complete`` or ``fail``."""
        page = self.client.get(f"/pay/{session_id}/confirm")
        assert page.status_code == 200
        token = form_token(page.get_data(as_text=True))
        return self.client.post(f"/pay/{session_id}/confirm", data={"csrf_token": token, "action": action})


class Receiver:
    """A real HTTP webhook receiver on 127.0.0.1 answering from a plan, recording every request."""

    def __init__(self, plan=None):
        self.plan = list(plan or [])  # items: status code, or ("sleep", seconds) then 200
        self.requests: list[dict] = []
        self._changed = threading.Condition()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/payment-callback"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-receiver", daemon=True
        )
        self._thread.start()

    @Request.application
    def _wsgi(self, request):
        with self._changed:
            step = self.plan.pop(0) if self.plan else 200
        if isinstance(step, tuple):
            time.sleep(step[1])
            step = 200
        with self._changed:
            self.requests.append({
                "headers": dict(request.headers), "body": request.get_data(), "at": time.monotonic(),
                "answered": step,
            })
            self._changed.notify_all()
        return Response("ok" if step < 300 else "nope", status=step)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict]:
        """Block until ``count`` requests arrived (fails the test otherwise)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                pytest.fail(f"expected {count} webhook requests, got {len(self.requests)}")
            return list(self.requests)

    def stop(self):
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()


def wait_until(predicate, timeout: float = 5.0) -> None:
    """Wait for a condition the test cannot be told about (a row another thread writes)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.02)

"""Contract section 4a: ``flask --app wsgi sandbox serve --port N`` run as a real process.

Its configuration comes from SANDBOX_API_KEY, SANDBOX_WEBHOOK_SECRET and SANDBOX_DATABASE_URL
(defaults: the app's development defaults); it serves the section 4 API at its root and creates
its own storage on start. Each sandbox here is a subprocess of its own, stopped at the end.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from standardwebhooks import Webhook, WebhookVerificationError

from .support import form_token, session_body

ROOT = Path(__file__).resolve().parents[2]
GIVEN_KEY = "sk_cli_given_key_5b1e"
GIVEN_SECRET = "whsec_" + base64.b64encode(b"sandbox-cli-test-secret-of-32-by").decode()
# Variables that would otherwise reach the subprocess from the environment running the tests.
OURS = ("SANDBOX_", "PAYMENT_", "DATABASE_URL", "APP_ENV", "SECRET_KEY", "REDIS_URL", "SCHEDULER_", "LOG_LEVEL",
        "FLASK_")


def clean_env(**values: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    return {**env, "PYTHONUNBUFFERED": "1", "SCHEDULER_ENABLED": "0", "LOG_LEVEL": "INFO", **values}


def _candidate_port() -> int:
    """A port free a moment ago. The sandbox binds it itself (the CLI takes a port number), so it
    may be taken meanwhile: the caller then starts again on another one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    proc: subprocess.Popen
    port: int
    lines: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start(env: dict, attempts: int = 5) -> Served:
    for _ in range(attempts):
        port = _candidate_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "sandbox", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        lines: list[str] = []
        arrived: queue.Queue = queue.Queue()

        def read(stream=proc.stdout, lines=lines, arrived=arrived):
            for line in stream:
                lines.append(line)
                arrived.put(line)
            arrived.put(None)  # the process closed its output: it has ended

        threading.Thread(target=read, name="sandbox-cli-output", daemon=True).start()
        ready = f"serving at http://127.0.0.1:{port}"
        while True:
            try:
                line = arrived.get(timeout=60)
            except queue.Empty:
                _stop(proc)
                pytest.fail("the sandbox process said nothing for 60 s:\n" + "".join(lines))
            if line is None:
                proc.wait(10)
                if "Cannot serve" in "".join(lines):
                    break  # the port was taken meanwhile: another one
                pytest.fail(f"the sandbox process ended ({proc.returncode}):\n" + "".join(lines))
            if ready in line:
                return Served(proc, port, lines)
    pytest.fail(f"no free port in {attempts} attempts")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as the CLI says
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
    proc.stdout.close()


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """A sandbox started with the three SANDBOX_* variables set."""
    folder = tmp_path_factory.mktemp("sandbox-cli")
    database = folder / "given-sandbox.db"
    served = _start(clean_env(SANDBOX_API_KEY=GIVEN_KEY, SANDBOX_WEBHOOK_SECRET=GIVEN_SECRET,
                              SANDBOX_DATABASE_URL=f"sqlite:///{database}",
                              DATABASE_URL=f"sqlite:///{folder / 'app.db'}"))
    served.database = database
    yield served
    _stop(served.proc)


def app_development_defaults() -> dict:
    """What the app itself uses when nothing is configured (read in a process of its own)."""
    code = ("import json; from config import Config\n"
            "print(json.dumps({'key': Config.PAYMENT_GATEWAY_API_KEY, 'secret': Config.PAYMENT_WEBHOOK_SECRET,"
            " 'url': Config.PAYMENT_GATEWAY_URL}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def create(served: Served, tx_id: str, key: str = GIVEN_KEY, **overrides) -> requests.Response:
    return requests.post(f"{served.url}/create-session", json=session_body(tx_id, **overrides),
                         headers={**auth(key), "Idempotency-Key": tx_id}, timeout=10)


def pay(payment_url: str) -> None:
    browser = requests.Session()
    page = browser.get(payment_url, timeout=10)
    assert page.status_code == 200
    form = {"csrf_token": form_token(page.text), "card_number": "4242 4242 4242 4242", "expiry": "12/39",
            "cvc": "123", "name": "Ada Lovelace"}
    paid = browser.post(payment_url, data=form, allow_redirects=False, timeout=10)
    assert paid.status_code == 303, paid.text[:500]


# -- configured ---------------------------------------------------------------------------------------


def test_it_creates_its_storage_in_the_given_database_on_start(configured):
    assert configured.database.exists()  # before any request
    with sqlite3.connect(configured.database) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "sandbox_sessions" in tables


def test_it_serves_section_4_with_the_given_key_on_the_given_port(configured):
    created = create(configured, "txn_cli_api")
    assert created.status_code == 200, created.text
    session = created.json()
    assert session["payment_url"] == f"{configured.url}/pay/{session['session_id']}"
    status = requests.get(f"{configured.url}/status/txn_cli_api", headers=auth(GIVEN_KEY), timeout=10)
    assert status.status_code == 200
    assert {k: status.json()[k] for k in ("transaction_id", "status", "amount", "currency")} == {
        "transaction_id": "txn_cli_api", "status": "pending", "amount": 1999, "currency": "USD"}
    unknown = requests.get(f"{configured.url}/status/txn_cli_nobody", headers=auth(GIVEN_KEY), timeout=10)
    assert unknown.status_code == 404
    expired = requests.post(f"{configured.url}/sessions/{session['session_id']}/expire", headers=auth(GIVEN_KEY),
                            timeout=10)
    assert (expired.status_code, expired.json()["status"]) == (200, "expired")


def test_it_keeps_its_sessions_in_the_given_database_file(configured):
    assert create(configured, "txn_cli_stored").status_code == 200
    with sqlite3.connect(configured.database) as conn:
        rows = conn.execute("SELECT amount, currency, status FROM sandbox_sessions WHERE transaction_id = ?",
                            ("txn_cli_stored",)).fetchall()
    assert rows == [(1999, "USD", "pending")]


@pytest.mark.parametrize("headers", [auth("sk_sandbox_development_key"), auth(GIVEN_KEY + "x"), {}],
                         ids=["the development key", "a wrong key", "no key"])
def test_it_refuses_any_other_key(configured, headers):
    assert create(configured, "txn_cli_ok").status_code == 200
    calls = [
        ("post", "/create-session", {"json": session_body("txn_cli_refused"),
                                     "headers": {**headers, "Idempotency-Key": "txn_cli_refused"}}),
        ("get", "/status/txn_cli_ok", {"headers": headers}),
        ("post", "/sessions/cs_anything/expire", {"headers": headers}),
        ("post", "/refunds", {"json": {"transaction_id": "txn_cli_ok", "amount": 1}, "headers": headers}),
    ]
    for method, path, kwargs in calls:
        refused = getattr(requests, method)(f"{configured.url}{path}", timeout=10, **kwargs)
        assert refused.status_code == 401, (path, refused.status_code)
        assert refused.json()["error"] == "unauthorized"
    with sqlite3.connect(configured.database) as conn:
        assert conn.execute("SELECT count(*) FROM sandbox_sessions WHERE transaction_id = 'txn_cli_refused'"
                            ).fetchone() == (0,)


def test_its_webhooks_are_signed_with_the_given_secret_and_refunds_work(configured, receiver):
    hook = receiver()
    created = create(configured, "txn_cli_paid", callback_url=hook.url)
    assert created.status_code == 200
    pay(created.json()["payment_url"])
    [delivery] = hook.wait_for(1, timeout=30)
    body = delivery["body"].decode()
    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    event = Webhook(GIVEN_SECRET).verify(body, headers)
    assert event["data"]["transaction_id"] == "txn_cli_paid" and event["data"]["status"] == "success"
    with pytest.raises(WebhookVerificationError):
        Webhook(app_development_defaults()["secret"]).verify(body, headers)
    refund = requests.post(f"{configured.url}/refunds", json={"transaction_id": "txn_cli_paid", "amount": 500},
                           headers={**auth(GIVEN_KEY), "Idempotency-Key": "rf_cli_1"}, timeout=10)
    assert refund.status_code == 200 and refund.json()["status"] == "succeeded"


# -- defaults -----------------------------------------------------------------------------------------


def test_without_configuration_it_uses_the_app_s_development_key_and_secret(tmp_path, receiver):
    defaults = app_development_defaults()
    database = tmp_path / "default-key-sandbox.db"  # the database only: the default file is the repository's
    served = _start(clean_env(SANDBOX_DATABASE_URL=f"sqlite:///{database}",
                              DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}"))
    try:
        hook = receiver()
        assert create(served, "txn_cli_default", key=GIVEN_KEY).status_code == 401
        created = create(served, "txn_cli_default", key=defaults["key"], callback_url=hook.url)
        assert created.status_code == 200, created.text
        pay(created.json()["payment_url"])
        [delivery] = hook.wait_for(1, timeout=30)
        headers = {k.lower(): v for k, v in delivery["headers"].items()}
        event = Webhook(defaults["secret"]).verify(delivery["body"].decode(), headers)
        assert event["data"]["transaction_id"] == "txn_cli_default"
        assert database.exists()
    finally:
        _stop(served.proc)


def test_the_default_port_is_the_one_the_app_s_default_gateway_url_names():
    from urllib.parse import urlsplit

    from app.sandbox import cli

    [port] = [p for p in cli.serve.params if p.name == "port"]
    default_url = urlsplit(app_development_defaults()["url"])
    assert (default_url.hostname, default_url.port) == ("127.0.0.1", port.default)

"""The sandbox over real HTTP (serve_in_thread) and its CLI."""

from __future__ import annotations

import threading

import pytest
import requests
from click.testing import CliRunner

from app.sandbox import cli, server

from .support import AUTH, form_token, session_body


@pytest.fixture
def served(settings):
    running = server.serve_in_thread("127.0.0.1", 0, {**settings, "SANDBOX_PUBLIC_URL": None})
    yield running
    running.stop()


def test_pay_over_real_http(served):
    assert served.url.startswith("http://127.0.0.1:") and served.port > 0
    created = requests.post(f"{served.url}/create-session", json=session_body("tx_http"),
                            headers={**AUTH, "Idempotency-Key": "tx_http"}, timeout=5)
    assert created.status_code == 200
    payment_url = created.json()["payment_url"]
    assert payment_url.startswith(served.url + "/pay/")
    browser = requests.Session()
    page = browser.get(payment_url, timeout=5)
    form = {"csrf_token": form_token(page.text), "card_number": "4242 4242 4242 4242",
            "expiry": "12/39", "cvc": "123", "name": "Ada"}
    paid = browser.post(payment_url, data=form, allow_redirects=False, timeout=5)
    assert paid.status_code == 303 and paid.headers["Location"] == "http://shop.test/payment/tx_http"
    status = requests.get(f"{served.url}/status/tx_http", headers=AUTH, timeout=5).json()
    assert status["status"] == "success"


def test_concurrent_creates_under_one_key_make_one_session(served):
    answers = []

    def create():
        answers.append(requests.post(f"{served.url}/create-session", json=session_body("tx_race"),
                                     headers={**AUTH, "Idempotency-Key": "tx_race"}, timeout=10))

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["session_id"] for a in answers}) == 1


def test_timeout_fault_over_http_then_retry_finds_the_session(served, settings):
    requests.post(f"{served.url}/_admin/faults", headers={"Authorization": f"Bearer {settings['SANDBOX_ADMIN_KEY']}"},
                  json={"fail_create_session": 1, "fail_create_session_mode": "timeout",
                        "create_session_timeout_seconds": 0.5}, timeout=5)
    call = dict(json=session_body("tx_slow"), headers={**AUTH, "Idempotency-Key": "tx_slow"})
    with pytest.raises(requests.Timeout):
        requests.post(f"{served.url}/create-session", timeout=0.2, **call)
    retry = None
    for _ in range(20):  # the stalled request finishes its work after 0.5 s
        retry = requests.post(f"{served.url}/create-session", timeout=5, **call)
        if requests.get(f"{served.url}/status/tx_slow", headers=AUTH, timeout=5).status_code == 200:
            break
    assert retry.status_code == 200 and retry.json()["session_id"].startswith("cs_")


def test_busy_port_leaves_nothing_running(served, settings):
    with pytest.raises(OSError):
        server.serve_in_thread("127.0.0.1", served.port, {**settings, "SANDBOX_DELIVERY_WORKER": True})


def test_cli_serve_runs_in_the_foreground(monkeypatch):
    calls = []

    def serve_forever(host, port, on_ready):
        calls.append((host, port))
        on_ready(f"http://{host}:{port}")

    monkeypatch.setattr(server, "serve_forever", serve_forever)
    result = CliRunner().invoke(cli.sandbox, ["serve", "--port", "5999", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert calls == [("0.0.0.0", 5999)]
    assert "Sandbox gateway on http://0.0.0.0:5999 (dashboard: /_admin/)" in result.output
    assert CliRunner().invoke(cli.sandbox, ["serve"]).exit_code == 0 and calls[-1] == ("127.0.0.1", 5001)


def test_cli_refuses_a_bad_port():
    result = CliRunner().invoke(cli.sandbox, ["serve", "--port", "99999"])
    assert result.exit_code == 2


def test_cli_on_a_busy_port_says_only_that(served):
    result = CliRunner().invoke(cli.sandbox, ["serve", "--port", str(served.port)])
    assert result.exit_code == 1
    assert f"Cannot serve on 127.0.0.1:{served.port}" in result.output
    assert "Sandbox gateway on" not in result.output  # it never served, so it never said it would

"""Production surface: security headers, proxies, rate limits, readiness and metrics."""

import json
import re
from html.parser import HTMLParser

import pytest
import responses

from config import DEV_GATEWAY_API_KEY, DEV_WEBHOOK_SECRET
from tests.conftest import TEST_REDIS_URL, place_order, post_webhook, start_payment, status_event


def test_security_headers_on_pages_and_json(client):
    page = client.get("/nothing", headers={"Accept": "text/html"})
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "form-action 'self' http://gateway.test" in csp
    assert "Strict-Transport-Security" not in page.headers  # plain http in tests
    api = client.get("/api/products")
    assert api.headers["X-Content-Type-Options"] == "nosniff"
    # Nothing per person is kept by a browser or proxy; the static files are.
    assert page.headers["Cache-Control"] == api.headers["Cache-Control"] == "no-store"
    assert client.get("/ops/login").headers["Cache-Control"] == "no-store"
    assert "no-store" not in client.get("/static/js/payment.js").headers.get("Cache-Control", "")


def _form_action(csp: str) -> list[str]:
    return next(d.split()[1:] for d in csp.split("; ") if d.startswith("form-action"))


@pytest.mark.parametrize(("gateway_url", "pages", "allowed"), [
    ("https://api.gateway.example/v1", (), ["'self'", "https://api.gateway.example"]),
    ("https://api.gateway.example", ("https://pay.gateway.example", "https://pay.gateway.example/x"),
     ["'self'", "https://api.gateway.example", "https://pay.gateway.example"]),
    # the sandbox run standalone may answer with a payment_url on the other loopback name
    ("http://localhost:5174", (), ["'self'", "http://127.0.0.1:5174", "http://localhost:5174"]),
])
def test_pay_may_be_redirected_to_every_origin_of_the_gateways_pages(make_app, gateway_url, pages, allowed):
    app = make_app(PAYMENT_GATEWAY_URL=gateway_url, PAYMENT_PAGE_ORIGINS=pages)
    csp = app.test_client().get("/").headers["Content-Security-Policy"]
    assert _form_action(csp) == allowed


def test_a_payment_url_that_is_not_a_web_address_is_a_gateway_failure(client, gateway):
    gateway.add(responses.POST, "http://gateway.test/create-session",
                json={"session_id": "cs_1", "payment_url": "javascript:alert(1)"})
    order = place_order(client)
    response = client.post("/initiate-payment", json={"order_id": order["order_id"]})
    assert response.status_code == 502 and response.get_json()["error"] == "gateway_unavailable"
    assert "javascript:" not in client.get(f"/payment/{response.get_json()['transaction_id']}").get_data(as_text=True)


def test_hsts_behind_a_tls_proxy(make_app, database_url):
    app = make_app(PROXY_FIX_HOPS=1)
    response = app.test_client().get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    untrusted = make_app(PROXY_FIX_HOPS=0).test_client().get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in untrusted.headers


def test_rate_limited_orders_answer_429_json(make_app, database_url):
    from tests.conftest import prepare_database

    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_ORDERS="2/minute", RATELIMIT_STORAGE_URI="memory://")
    prepare_database(app, database_url)
    client = app.test_client()
    body = {"items": [{"sku": "TEE-BLACK", "quantity": 1}]}
    codes = [client.post("/api/orders", json=body).status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    limited = client.post("/api/orders", json=body)
    assert limited.get_json()["error"] == "rate_limited"
    assert limited.get_json()["message"] == \
        "Too many requests; please wait a moment and try again (limit: 2 per 1 minute)."
    assert "Retry-After" in limited.headers


def test_readyz_ok_and_failing_when_the_database_is_down(client, make_app):
    ok = client.get("/readyz")
    assert ok.status_code == 200 and ok.get_json()["checks"]["database"] == "ok"
    dead = make_app(SQLALCHEMY_DATABASE_URI="postgresql+psycopg://postgres@127.0.0.1:1/none",
                    SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"connect_timeout": 2}})
    down = dead.test_client().get("/readyz")
    assert down.status_code == 503
    body = down.get_json()
    assert body["error"] == "not_ready" and body["checks"]["database"].startswith("failing")
    assert dead.test_client().get("/healthz").status_code == 200


def test_readyz_says_degraded_when_the_configured_redis_is_down(make_app, database_url):
    """Still 200: checkout goes on without Redis, and failing every instance at once would not."""
    from tests.conftest import prepare_database

    broken = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    prepare_database(broken, database_url)
    answer = broken.test_client().get("/readyz")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "degraded" and body["checks"] == {"database": "ok", "redis": "failing: ConnectionError"}


@pytest.mark.skipif(not TEST_REDIS_URL, reason="Redis readiness check skipped: TEST_REDIS_URL is not set")
def test_readyz_ok_with_a_working_redis(make_app, database_url):
    from tests.conftest import prepare_database

    working = make_app(REDIS_URL=TEST_REDIS_URL)
    prepare_database(working, database_url)  # readiness also needs the schema
    answer = working.test_client().get("/readyz")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["checks"]["redis"] == "ok"


def _metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_metrics_move_after_a_payment(client, gateway):
    before = client.get("/metrics").get_data(as_text=True)
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    middle = client.get("/metrics").get_data(as_text=True)
    assert _metric(middle, "checkout_pending_transactions") == 1
    post_webhook(client, status_event(tx_id, "success", 1999))
    after = client.get("/metrics")
    assert after.headers["Content-Type"].startswith("text/plain")
    text = after.get_data(as_text=True)
    assert _metric(text, "checkout_fulfillments_total", result="fulfilled") == \
        _metric(before, "checkout_fulfillments_total", result="fulfilled") + 1
    assert _metric(text, "checkout_webhooks_total", outcome="applied") == \
        _metric(before, "checkout_webhooks_total", outcome="applied") + 1
    assert _metric(text, "checkout_status_moves_total", source="webhook", to_status="success", outcome="applied") \
        >= 1
    assert _metric(text, "checkout_pending_transactions") == 0
    assert 'endpoint="/initiate-payment"' in text
    assert _metric(text, "checkout_gateway_call_duration_seconds_count", operation="create-session", result="ok") >= 1


def test_invented_methods_share_one_metrics_series(client):
    labels = {"method": "other", "endpoint": "unmatched", "status": "405"}
    before = _metric(client.get("/metrics").get_data(as_text=True), "checkout_http_requests_total", **labels)
    for number in range(40):
        assert client.open("/", method=f"M{number}").status_code == 405
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="M' not in text
    assert _metric(text, "checkout_http_requests_total", **labels) == before + 40


@pytest.mark.parametrize("env", [{}, {"SECRET_KEY": "x"}])
def test_production_refuses_development_settings(env, monkeypatch):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from app import create_app; create_app()"],
                          env={"APP_ENV": "production", "PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to start in production" in done.stderr + done.stdout
    assert "DATABASE_URL" in done.stderr + done.stdout


REAL = {"SECRET_KEY": "x" * 32, "DATABASE_URL": "postgresql+psycopg://app@db.internal/shop",
        "PAYMENT_GATEWAY_API_KEY": "sk_live_real", "PAYMENT_WEBHOOK_SECRET": "whsec_cmVhbC1zZWNyZXQ=",
        "PAYMENT_GATEWAY_URL": "https://gateway.example"}


def _production_problems(env: dict) -> list[str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import json; from config import ProductionConfig as P; print(json.dumps(P.problems()))"],
                          env={"APP_ENV": "production", "PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_production_with_real_settings_has_no_problems():
    assert _production_problems(REAL) == []


@pytest.mark.parametrize("change, named", [
    ({"PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET + "\n"}, "PAYMENT_WEBHOOK_SECRET"),
    ({"PAYMENT_WEBHOOK_SECRET": f"whsec_cmVhbC1zZWNyZXQ= {DEV_WEBHOOK_SECRET}"}, "PAYMENT_WEBHOOK_SECRET"),
    ({"PAYMENT_GATEWAY_API_KEY": f" {DEV_GATEWAY_API_KEY}\n"}, "PAYMENT_GATEWAY_API_KEY"),
    ({"PAYMENT_GATEWAY_URL": "http://localhost:5001/"}, "PAYMENT_GATEWAY_URL"),
    ({"PAYMENT_GATEWAY_URL": "HTTP://127.0.0.1:5001"}, "PAYMENT_GATEWAY_URL"),
])
def test_production_refuses_development_values_in_disguise(change, named):
    problems = _production_problems({**REAL, **change})
    assert len(problems) == 1 and named in problems[0]


@pytest.mark.parametrize("secret", ["whsec_not-base64!", "   ", "whsec_"])
def test_a_malformed_webhook_secret_stops_the_start_not_every_webhook(make_app, secret):
    with pytest.raises(RuntimeError, match="configuration error: PAYMENT_WEBHOOK_SECRET"):
        make_app(PAYMENT_WEBHOOK_SECRET=secret)


def test_refused_webhooks_are_rate_limited_but_good_ones_are_not(make_app, database_url):
    from tests.conftest import prepare_database

    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_WEBHOOK_FAILURES="3/minute", RATELIMIT_STORAGE_URI="memory://")
    prepare_database(app, database_url)
    client = app.test_client()
    for _ in range(5):  # accepted deliveries never count
        assert post_webhook(client, status_event("txn_unknown", "success", 1)).status_code == 200
    codes = [client.post("/payment-callback", data=b"{}", headers={"webhook-id": "x"}).status_code
             for _ in range(4)]
    assert codes == [400, 400, 400, 429]
    # The same address, its refusals used up: a signed delivery still gets through.
    assert post_webhook(client, status_event("txn_unknown", "success", 1)).status_code == 200


class _Forms(HTMLParser):
    """Every <form> of a page: its method, action and the hidden inputs inside it."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self._open = {"method": (attrs.get("method") or "get").lower(), "action": attrs.get("action"),
                          "hidden": {}}
            self.forms.append(self._open)
        elif tag == "input" and self._open is not None and (attrs.get("type") or "").lower() == "hidden":
            self._open["hidden"][attrs.get("name")] = attrs.get("value")

    def handle_endtag(self, tag):
        if tag == "form":
            self._open = None


def _forms(html: str) -> list[dict]:
    parser = _Forms()
    parser.feed(html)
    parser.close()
    return parser.forms


def test_every_form_on_every_page_carries_a_csrf_token(client, gateway):
    """Contract section 6: every form carries a hidden csrf_token (ops pages are covered in tests/ops)."""
    order = place_order(client)
    order_id = order["order_id"]
    tx_id = start_payment(client, gateway, order_id)["transaction_id"]
    pages = {  # each page and the form actions it is known to show in this state
        "/": {"/checkout"},
        f"/checkout/{order_id}": {f"/checkout/{order_id}/pay"},
        f"/payment/{tx_id}": {f"/payment/{tx_id}/cancel", f"/checkout/{order_id}/pay"},
        "/payment-status": {"/payment-status"},
        "/ops/login": {"/ops/login"},
    }
    for path, actions in pages.items():
        response = client.get(path)
        assert response.status_code == 200, path
        forms = _forms(response.get_data(as_text=True))
        assert {form["action"] for form in forms} == actions, path
        for form in forms:
            assert form["hidden"].get("csrf_token"), (path, form)


def _login_attempts(client, addresses, peer: str) -> list[int]:
    from tests.ops.conftest import csrf_token

    token = csrf_token(client, "/ops/login")
    return [client.post("/ops/login", data={"csrf_token": token, "email": "a@example.test", "password": "wrong-guess"},
                        headers={"X-Forwarded-For": address}, environ_base={"REMOTE_ADDR": peer}).status_code
            for address in addresses]


def test_x_forwarded_for_from_a_peer_that_is_no_proxy_does_not_escape_the_login_limit(make_app, database_url):
    # Production trusts one proxy hop. A client reaching the app itself (not through the
    # proxy) must not name a new address per request and so never meet the per-address limit.
    from tests.conftest import prepare_database

    app = make_app(PROXY_FIX_HOPS=1, RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="2/minute",
                   RATELIMIT_STORAGE_URI="memory://", FORWARDED_ALLOW_IPS="127.0.0.1, 10.1.0.0/16")
    prepare_database(app, database_url)
    spoofed = [f"198.51.100.{n}" for n in range(1, 5)]
    assert _login_attempts(app.test_client(), spoofed, peer="203.0.113.7") == [200, 200, 429, 429]
    # Through the proxies (FORWARDED_ALLOW_IPS, networks too) each client has its own budget.
    assert _login_attempts(app.test_client(), spoofed, peer="127.0.0.1") == [200, 200, 200, 200]
    assert _login_attempts(app.test_client(), ["192.0.2.1"] * 3, peer="10.1.2.3") == [200, 200, 429]


def test_forwarded_allow_ips_star_trusts_any_peer_and_nonsense_refuses_to_start(make_app):
    from config import ConfigurationError

    app = make_app(PROXY_FIX_HOPS=1, FORWARDED_ALLOW_IPS="*")
    response = app.test_client().get("/healthz", headers={"X-Forwarded-Proto": "https"},
                                     environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    for nonsense in ("proxy.internal", "10.1.2.3/16"):  # a name; a network with host bits set, as gunicorn
        with pytest.raises(ConfigurationError, match="FORWARDED_ALLOW_IPS"):
            make_app(PROXY_FIX_HOPS=1, FORWARDED_ALLOW_IPS=nonsense)


def test_x_forwarded_for_from_an_unlisted_peer_is_reported_once(make_app, caplog):
    """A proxy left out of FORWARDED_ALLOW_IPS makes every client count as its address: said in
    the log, once per process, not on every request."""
    app = make_app(PROXY_FIX_HOPS=1, FORWARDED_ALLOW_IPS="127.0.0.1")
    client = app.test_client()
    with caplog.at_level("WARNING", logger="app.security"):
        client.get("/healthz", environ_base={"REMOTE_ADDR": "10.0.0.9"})  # no header: nothing to say
        assert not caplog.records
        for _ in range(3):
            client.get("/healthz", headers={"X-Forwarded-For": "198.51.100.1"},
                       environ_base={"REMOTE_ADDR": "10.0.0.9"})
    [record] = caplog.records
    assert "10.0.0.9" in record.getMessage() and "FORWARDED_ALLOW_IPS" in record.getMessage()


def test_an_ipv6_client_cannot_escape_the_login_limit_by_changing_address_in_its_64(make_app, database_url):
    # A host is given a whole /64 and may send from any address in it: the limit counts the network.
    from tests.conftest import prepare_database

    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="2/minute", RATELIMIT_STORAGE_URI="memory://")
    prepare_database(app, database_url)
    client = app.test_client()
    codes = [_login_attempts(client, ["-"], peer=f"2001:db8:1:2::{n:x}")[0] for n in range(1, 5)]
    assert codes == [200, 200, 429, 429]
    # another /64 (another host) has its own budget, and IPv4 clients are counted one by one
    assert _login_attempts(client, ["-"], peer="2001:db8:1:3::1") == [200]
    ipv4 = _login_attempts(client, ["-"], peer="192.0.2.1") + _login_attempts(client, ["-"], peer="192.0.2.2")
    assert ipv4 == [200, 200]

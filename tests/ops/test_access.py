"""Every /ops route is for logged-in staff; only admins act."""

from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from app.auth import sessions
from app.extensions import db
from app.models import TransactionEvent, User
from tests.ops.conftest import ADMIN, PASSWORD, VIEWER, csrf_token, login, paid_transaction, post_form

PUBLIC = {"auth.login", "static"}
STAFF_POSTS = {"auth.logout"}  # a POST any logged-in staff member may make


def ops_rules(app):
    """Every rule under /ops except the login page, with sample arguments filled in."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/ops") or rule.endpoint in PUBLIC:
            continue
        url = rule.rule
        for arg in rule.arguments:
            url = url.replace(f"<{arg}>", f"sample_{arg}")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, url))
    return found


def events_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(TransactionEvent))


def test_the_route_list_covers_the_console(app):
    endpoints = {endpoint for endpoint, _, _ in ops_rules(app)}
    assert {"ops.index", "ops.transactions", "ops.transaction", "ops.webhooks", "ops.recheck", "ops.cancel",
            "ops.refund", "ops.review", "ops.retry_refund", "ops.transactions_csv", "auth.logout"} <= endpoints


def test_anonymous_users_are_sent_to_login_everywhere(app, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    before = events_count(app)
    token = csrf_token(client, "/ops/login")  # a valid token: the refusal is about who, not CSRF
    for endpoint, method, url in ops_rules(app):
        url = url.replace("sample_transaction_id", tx_id)
        data = {"csrf_token": token, "amount": "100"} if method == "POST" else None
        response = client.open(url, method=method, data=data)
        if endpoint == "auth.logout":
            assert response.status_code == 303 and urlsplit(response.location).path == "/ops/login"
            continue
        assert response.status_code == 302, (method, url, response.status_code)
        assert urlsplit(response.location).path == "/ops/login", (method, url, response.location)
    assert events_count(app) == before  # nothing happened on anyone's behalf


@pytest.mark.parametrize(("method", "path"), [("GET", "/ops/nope"), ("GET", "/ops/transactions/x/y"),
                                             ("POST", "/ops/anything"), ("GET", "/ops/logout"), ("GET", "/ops")])
def test_anonymous_users_are_sent_to_login_from_unknown_ops_addresses_too(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 302, response.status_code
    assert urlsplit(response.location).path == "/ops/login"


def test_staff_still_get_404_and_405_on_unknown_ops_addresses(admin_client):
    assert admin_client.get("/ops/nope").status_code == 404
    assert admin_client.get("/ops/transactions/txn_any/recheck").status_code == 405  # POST only


def test_a_typed_logout_address_asks_before_logging_out(admin_client, client):
    page = admin_client.get("/ops/logout")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'action="/ops/logout"' in html and 'name="csrf_token"' in html
    assert admin_client.get("/ops/transactions").status_code == 200  # still logged in: a GET changes nothing
    assert client.get("/ops/logout").location == "/ops/login"


def test_anonymous_post_without_a_token_is_refused_too(client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    response = client.post(f"/ops/transactions/{tx_id}/refund", data={"amount": "100"})
    assert response.status_code == 400


def test_login_page_redirect_keeps_where_you_were_going(client):
    response = client.get("/ops/webhooks")
    assert response.status_code == 302
    assert response.location.startswith("/ops/login?next=")


def test_viewers_read_everything_and_act_on_nothing(app, viewer_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    before = events_count(app)
    calls_before = len(gateway.calls)
    for endpoint, method, url in ops_rules(app):
        url = url.replace("sample_transaction_id", tx_id)
        if method == "GET":
            response = viewer_client.get(url)
            assert response.status_code in (200, 302), (url, response.status_code)
            if endpoint == "ops.index":
                assert urlsplit(response.location).path == "/ops/transactions"
            continue
        if endpoint in STAFF_POSTS:
            continue
        response = post_form(viewer_client, url, {"amount": "100"})
        assert response.status_code == 403, (url, response.status_code)
        html = response.get_data(as_text=True)
        assert "Only ops admins" in html and 'class="ops"' in html and "Back to the transactions" in html
    assert events_count(app) == before
    assert len(gateway.calls) == calls_before  # no gateway call on a viewer's behalf


def test_admins_see_every_page(admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    for url in ("/ops/transactions", f"/ops/transactions/{tx_id}", "/ops/webhooks"):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert "<h1>" in response.get_data(as_text=True)
    assert admin_client.get("/ops/transactions/txn_unknown").status_code == 404


# -- login and logout -----------------------------------------------------------------------


def test_login_form_has_email_password_and_a_hidden_csrf_token(client):
    html = client.get("/ops/login").get_data(as_text=True)
    assert 'name="email"' in html and 'name="password"' in html and 'type="password"' in html
    assert 'name="csrf_token" type="hidden"' in html or ('type="hidden"' in html and 'name="csrf_token"' in html)
    assert '<label for="email">' in html and '<label for="password">' in html


@pytest.mark.parametrize("email, password", [
    (ADMIN, "wrong password"),
    ("nobody@example.test", PASSWORD),
    ("", ""),
])
def test_bad_credentials_are_refused_alike(client, staff, email, password):
    response = login(client, email, password)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "role=\"alert\"" in html
    assert client.get("/ops/transactions").status_code == 302


def test_login_is_case_insensitive_on_email_and_goes_where_asked(client, staff):
    token = csrf_token(client)
    response = client.post("/ops/login?next=/ops/webhooks",
                           data={"csrf_token": token, "email": "  Admin@Example.TEST ", "password": PASSWORD})
    assert response.status_code == 303 and response.location == "/ops/webhooks"


@pytest.mark.parametrize("target", ["https://evil.example/ops", "//evil.example/ops", "/shop", "/\\evil.example",
                                    "/ops\r\nX-Injected: 1", "/ops/webhooks\n", "/ops\t", "//[", "http://[/ops"])
def test_login_never_redirects_off_the_console(client, staff, target):
    token = csrf_token(client)
    response = client.post("/ops/login", query_string={"next": target},
                           data={"csrf_token": token, "email": ADMIN, "password": PASSWORD})
    assert response.status_code == 303 and response.location == "/ops/transactions"


def test_a_logged_in_visit_to_login_with_a_control_character_in_next_goes_to_the_list(admin_client):
    response = admin_client.get("/ops/login", query_string={"next": "/ops\r\nX-Injected: 1"})
    assert response.status_code == 302 and response.location == "/ops/transactions"


def test_session_cookie_is_httponly_and_samesite(client, staff):
    response = login(client, ADMIN)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_logout_is_a_csrf_protected_post(admin_client):
    assert admin_client.get("/ops/logout").status_code == 200  # a page that asks, not a logout
    assert admin_client.post("/ops/logout").status_code == 400  # no token
    assert admin_client.get("/ops/transactions").status_code == 200
    response = post_form(admin_client, "/ops/logout")
    assert response.status_code == 303 and urlsplit(response.location).path == "/ops/login"
    assert admin_client.get("/ops/transactions").status_code == 302


def test_login_attempts_are_rate_limited_per_address(app, make_app, staff):
    limited = make_app(RATELIMIT_ENABLED=True)
    client = limited.test_client()
    token = csrf_token(client)
    answers = [client.post("/ops/login", data={"csrf_token": token, "email": ADMIN, "password": "nope"}).status_code
               for _ in range(11)]
    assert answers[:10] == [200] * 10 and answers[10] == 429
    assert client.get("/ops/login").status_code == 200  # only POSTs count
    other = limited.test_client()
    other_token = csrf_token(other)
    response = other.post("/ops/login", data={"csrf_token": other_token, "email": ADMIN, "password": PASSWORD},
                          environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert response.status_code == 303


def test_no_rate_limit_when_disabled(client, staff):
    token = csrf_token(client)
    answers = {client.post("/ops/login", data={"csrf_token": token, "email": ADMIN, "password": "nope"}).status_code
               for _ in range(15)}
    assert answers == {200}


def test_viewer_login_then_admin_login(app, staff):
    for email in (VIEWER, ADMIN):
        c = app.test_client()
        assert login(c, email).status_code == 303
        assert c.get("/ops/transactions").status_code == 200


def test_session_cookie_is_secure_when_served_over_https(make_app, database_url):
    from tests.conftest import prepare_database
    from tests.ops.conftest import add_user

    app = make_app(PUBLIC_BASE_URL="https://shop.example")
    prepare_database(app, database_url)
    add_user(app, ADMIN, "admin")
    client = app.test_client()
    cookie = login(client, ADMIN).headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_every_form_of_the_console_carries_a_csrf_token(admin_client, gateway):
    import re

    from tests.ops.conftest import paid_transaction

    _, tx_id, _ = paid_transaction(admin_client, gateway)
    for path in ("/ops/transactions", f"/ops/transactions/{tx_id}", "/ops/webhooks"):
        html = admin_client.get(path).get_data(as_text=True)
        forms = re.findall(r"<form\b.*?</form>", html, re.S)
        assert forms and all('name="csrf_token"' in form for form in forms), path


def test_a_form_sent_after_the_session_ended_returns_to_its_page_after_login(app, admin_client, client, gateway):
    """The re-check form's address answers POST only: login must not send the browser there."""
    _, tx_id, _ = paid_transaction(client, gateway)
    token = csrf_token(admin_client, f"/ops/transactions/{tx_id}")
    with app.app_context():
        sessions.end_user_sessions(db.session.scalar(select(User.id).where(User.email == ADMIN)), "test")
    response = admin_client.post(f"/ops/transactions/{tx_id}/recheck", data={"csrf_token": token})
    assert response.status_code == 302
    assert response.location == f"/ops/login?next=/ops/transactions/{tx_id}"
    again = admin_client.post(response.location, data={"csrf_token": csrf_token(admin_client), "email": ADMIN,
                                                       "password": PASSWORD})
    assert again.status_code == 303 and again.location == f"/ops/transactions/{tx_id}"
    assert admin_client.get(again.location).status_code == 200

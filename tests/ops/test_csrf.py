"""Every ops form carries a hidden csrf_token; a POST without a valid one is refused."""

import re

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Refund, Transaction
from tests.conftest import GATEWAY, place_order, start_payment
from tests.ops.conftest import ADMIN, add_user, csrf_token, login, paid_transaction, post_form


@pytest.fixture
def csrf_app(make_app, app):
    """The app with CSRF explicitly on, whatever the test configuration's default is."""
    built = make_app(WTF_CSRF_ENABLED=True, FULFILLMENT_HANDLER="tests.fulfillment_probe:record")
    add_user(built, ADMIN, "admin")
    return built


@pytest.fixture
def admin(csrf_app):
    client = csrf_app.test_client()
    assert login(client, ADMIN).status_code == 303
    return client


def refunded(app, tx_id):
    with app.app_context():
        return db.session.scalar(select(Transaction.refunded_amount).where(Transaction.id == tx_id))


@pytest.mark.parametrize("token", [None, "", "not-a-token", "FOREIGN"])
def test_actions_without_a_valid_token_are_refused(csrf_app, admin, gateway, token):
    client = csrf_app.test_client()
    _, tx_id, _ = paid_transaction(client, gateway)
    if token == "FOREIGN":  # a real token, but of another session
        other = csrf_app.test_client()
        token = csrf_token(other, "/ops/login")
    data = {"amount": "100"} | ({} if token is None else {"csrf_token": token})
    for action in ("refund", "recheck", "review", "cancel"):
        response = admin.post(f"/ops/transactions/{tx_id}/{action}", data=data)
        assert response.status_code == 400, action
        assert "form expired" in response.get_data(as_text=True)
    assert refunded(csrf_app, tx_id) == 0
    with csrf_app.app_context():
        assert db.session.scalar(select(Refund)) is None
    assert not [c for c in gateway.calls if "/refunds" in c.request.url]


def test_the_same_action_with_the_page_token_goes_through(csrf_app, admin, gateway):
    client = csrf_app.test_client()
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post("http://gateway.test/refunds", json={"refund_id": "re_1", "status": "succeeded"})
    token = csrf_token(admin, f"/ops/transactions/{tx_id}")
    response = admin.post(f"/ops/transactions/{tx_id}/refund", data={"csrf_token": token, "amount": "100"})
    assert response.status_code == 303
    assert refunded(csrf_app, tx_id) == 100


def test_login_without_a_token_is_refused(csrf_app):
    client = csrf_app.test_client()
    response = client.post("/ops/login", data={"email": ADMIN, "password": "correct horse battery"})
    assert response.status_code == 400
    assert client.get("/ops/transactions").status_code == 302


def test_every_post_form_on_every_page_carries_the_token(csrf_app, admin, gateway):
    client = csrf_app.test_client()
    _, tx_id, _ = paid_transaction(client, gateway)
    pages = ["/ops/transactions", f"/ops/transactions/{tx_id}", "/ops/webhooks"]
    seen = 0
    for page in pages:
        html = admin.get(page).get_data(as_text=True)
        for form in re.findall(r"<form\b.*?</form>", html, flags=re.S):
            if 'method="post"' in form:
                seen += 1
                assert re.search(r'type="hidden"[^>]*name="csrf_token"|name="csrf_token"[^>]*type="hidden"', form), form
    assert seen >= 4  # logout on each page, refund forms, re-check
    login_page = csrf_app.test_client().get("/ops/login").get_data(as_text=True)
    assert 'name="csrf_token"' in login_page


def test_the_filter_forms_token_in_urls_is_accepted_by_no_post(csrf_app, admin, gateway):
    client = csrf_app.test_client()
    _, tx_id, _ = paid_transaction(client, gateway)
    html = admin.get("/ops/transactions").get_data(as_text=True)
    get_forms = [f for f in re.findall(r"<form\b.*?</form>", html, flags=re.S) if 'method="get"' in f]
    assert len(get_forms) == 1
    leaked = re.search(r'name="csrf_token" value="([^"]+)"', get_forms[0]).group(1)
    # The filter form submits it into the query string, where history and access logs keep it.
    assert admin.get(f"/ops/transactions?status=success&csrf_token={leaked}").status_code == 200
    for action in ("refund", "cancel"):
        response = admin.post(f"/ops/transactions/{tx_id}/{action}", data={"csrf_token": leaked, "amount": "100"})
        assert response.status_code == 400, action
    assert admin.post("/ops/logout", data={"csrf_token": leaked}).status_code == 400
    assert refunded(csrf_app, tx_id) == 0
    assert admin.get("/ops/transactions").status_code == 200  # still logged in


def test_the_forms_only_some_payments_show_carry_the_token_and_retry_needs_it(csrf_app, admin, gateway):
    """Cancel (a pending payment), Mark reviewed (a flagged one) and Retry (a refund the gateway did
    not answer) appear only in those states, which the pages above do not reach."""
    client = csrf_app.test_client()
    pending = start_payment(client, gateway, place_order(client)["order_id"])["transaction_id"]
    _, held, _ = paid_transaction(client, gateway)
    gateway.post(f"{GATEWAY}/refunds", status=503)
    assert post_form(admin, f"/ops/transactions/{held}/refund", {"amount": "700"}).status_code == 502
    with csrf_app.app_context():
        refund_id = db.session.scalar(select(Refund.id).where(Refund.transaction_id == held))
    expected = {pending: [f"/ops/transactions/{pending}/cancel"],
                held: [f"/ops/transactions/{held}/review", f"/ops/transactions/{held}/refunds/{refund_id}/retry"]}
    for tx_id, actions in expected.items():
        html = admin.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
        forms = {re.search(r'action="([^"]+)"', form).group(1): form
                 for form in re.findall(r"<form\b.*?</form>", html, flags=re.S)}
        for action in actions:
            assert action in forms, (action, sorted(forms))
            assert re.search(r'type="hidden"[^>]*name="csrf_token"|name="csrf_token"[^>]*type="hidden"',
                             forms[action]), forms[action]
    sent = len([c for c in gateway.calls if c.request.url.endswith("/refunds")])
    for data in ({}, {"csrf_token": "not-a-token"}):
        response = admin.post(f"/ops/transactions/{held}/refunds/{refund_id}/retry", data=data)
        assert response.status_code == 400 and "form expired" in response.get_data(as_text=True)
    assert len([c for c in gateway.calls if c.request.url.endswith("/refunds")]) == sent
    with csrf_app.app_context():
        assert db.session.get(Refund, refund_id).status == "requested"

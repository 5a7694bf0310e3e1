"""Stage 2 of a pass: expire pending transactions older than the expiry window."""

import pytest
import requests
import responses
from sqlalchemy import update

from app.domain.status import Status
from app.extensions import db
from app.models import Transaction
from app.services.gateway_reports import CloseUnanswered, close_session
from tests import fulfillment_probe
from tests.conftest import GATEWAY

from .support import (
    EXPIRES_AFTER, answer_expire, answer_status, expire_calls, order_status, pending_payment, poller_lines, reconcile,
    row, set_age, status_calls,
)


@pytest.mark.parametrize(("age", "expired"), [(EXPIRES_AFTER - 5, False), (EXPIRES_AFTER + 5, True)])
def test_only_transactions_older_than_the_expiry_window_are_expired(app, client, gateway, age, expired):
    _, tx_id = pending_payment(app, client, gateway, age)
    answer_status(gateway, tx_id, "pending")
    answer_expire(gateway, tx_id, 200)
    summary = reconcile(app)
    assert expire_calls(gateway, tx_id) == (1 if expired else 0)
    # before the deadline it is still a status check; after it, only the expiry
    assert status_calls(gateway, tx_id) == (0 if expired else 1)
    assert row(app, tx_id).status == ("expired" if expired else "pending")
    assert (summary.due, summary.expired) == (1, 1 if expired else 0)


def test_a_lowered_expiry_window_applies_to_transactions_already_pending(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, 600)
    answer_expire(gateway, tx_id, 200)
    app.config["PAYMENT_EXPIRES_AFTER"] = 300
    assert reconcile(app).expired == 1
    assert row(app, tx_id).status == "expired"


def test_expired_at_the_gateway_becomes_expired(app, client, gateway):
    order_id, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    answer_expire(gateway, tx_id, 200)
    summary = reconcile(app)
    assert (summary.due, summary.expired, summary.changed, summary.errors) == (1, 1, 0, 0)
    tx = row(app, tx_id)
    assert tx.status == "expired" and tx.lease_until is None
    assert order_status(app, order_id) == "open"
    assert ("status", "applied") in [line[:2] for line in poller_lines(app, tx_id)]
    assert reconcile(app).due == 0
    assert expire_calls(gateway, tx_id) == 1


def test_a_409_means_the_shopper_paid_so_it_succeeds_and_fulfills_once(app, client, gateway):
    order_id, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    answer_expire(gateway, tx_id, 409)
    answer_status(gateway, tx_id, "success")  # the 409 carries no amount: the pass asks
    summary = reconcile(app)
    assert (summary.expired, summary.changed, summary.errors) == (0, 1, 0)
    assert row(app, tx_id).status == "success"
    assert order_status(app, order_id) == "fulfilled"
    for _ in range(2):
        assert reconcile(app).due == 0
    assert fulfillment_probe.calls == [(order_id, tx_id)]
    assert expire_calls(gateway, tx_id) == 1


def test_a_409_for_other_money_is_flagged_not_paid(app, client, gateway):
    order_id, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    answer_expire(gateway, tx_id, 409)
    answer_status(gateway, tx_id, "success", amount=1)
    reconcile(app)
    tx = row(app, tx_id)
    assert tx.status == "pending" and tx.needs_review and tx.review_reason == "amount_mismatch"
    assert order_status(app, order_id) == "open"
    assert fulfillment_probe.calls == []


def test_without_a_gateway_session_it_is_expired_locally(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == tx_id).values(gateway_session_id=None))
        db.session.commit()
    assert reconcile(app).expired == 1
    assert row(app, tx_id).status == "expired"
    assert expire_calls(gateway) == 0


@pytest.mark.parametrize("failure", [requests.ConnectionError("refused"), requests.ReadTimeout("slow"), 502])
def test_a_gateway_error_leaves_it_pending_for_the_next_pass(app, client, gateway, failure):
    _, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    url = f"{GATEWAY}/sessions/cs_{tx_id}/expire"
    if isinstance(failure, int):
        gateway.add(responses.POST, url, status=failure, json={"error": "bad_gateway"})
    else:
        gateway.add(responses.POST, url, body=failure)
    summary = reconcile(app)
    assert (summary.due, summary.expired, summary.errors) == (1, 0, 1)
    tx = row(app, tx_id)
    assert tx.status == "pending" and tx.lease_until is None
    lines = poller_lines(app, tx_id)
    assert len(lines) == 1 and lines[0][:2] == ("poll", "error") and "expiring the gateway session" in lines[0][2]

    gateway.replace(responses.POST, url, json={"status": "expired"})
    assert reconcile(app).expired == 1  # the very next pass, no backoff
    assert row(app, tx_id).status == "expired"


def test_a_flagged_transaction_is_not_expired_but_still_asked_about(app, client, gateway):
    """Flagged rows are never expired by the pass (ops decide), but they are not forgotten:
    the pass asks the gateway, and a real payment with the right money is applied."""
    _, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == tx_id)
                           .values(needs_review=True, review_reason="amount_mismatch"))
        db.session.commit()
    answer_expire(gateway, tx_id, 409)
    answer_status(gateway, tx_id, "pending")
    assert reconcile(app).due == 1
    assert (expire_calls(gateway, tx_id), status_calls(gateway, tx_id)) == (0, 1)
    assert row(app, tx_id).status == "pending" and fulfillment_probe.calls == []
    with app.app_context():  # the next check is due (backoff over)
        db.session.execute(update(Transaction).where(Transaction.id == tx_id).values(next_check_at=None))
        db.session.commit()
    gateway.remove(responses.GET, f"{GATEWAY}/status/{tx_id}")
    answer_status(gateway, tx_id, "success")
    reconcile(app)
    assert expire_calls(gateway, tx_id) == 0
    assert row(app, tx_id).status == "success" and len(fulfillment_probe.calls) == 1


def test_one_failing_transaction_does_not_stop_the_others(app, client, gateway):
    ids = [pending_payment(app, client, gateway, EXPIRES_AFTER + 60 + i)[1] for i in range(5)]
    broken = ids[2]
    for tx_id in ids:
        if tx_id == broken:
            gateway.add(responses.POST, f"{GATEWAY}/sessions/cs_{tx_id}/expire", body=requests.ConnectionError("x"))
        else:
            answer_expire(gateway, tx_id, 200)
    summary = reconcile(app, workers=2)
    assert (summary.due, summary.expired, summary.errors) == (5, 4, 1)
    assert [row(app, t).status for t in ids] == ["expired", "expired", "pending", "expired", "expired"]


def _session_unknown(gateway, tx_id):
    gateway.add(responses.POST, f"{GATEWAY}/sessions/cs_{tx_id}/expire", status=404, json={"error": "not_found"})


def test_a_session_and_payment_the_gateway_does_not_know_is_expired_not_retried_forever(app, client, gateway):
    order_id, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    _session_unknown(gateway, tx_id)
    gateway.add(responses.GET, f"{GATEWAY}/status/{tx_id}", status=404, json={"error": "not_found"})
    summary = reconcile(app)
    assert (summary.due, summary.expired, summary.errors) == (1, 1, 0)
    assert row(app, tx_id).status == "expired" and order_status(app, order_id) == "open"
    assert any("knows neither the session nor the payment" in line[2] for line in poller_lines(app, tx_id))
    assert reconcile(app).due == 0  # done: the next pass does not ask again
    assert expire_calls(gateway, tx_id) == 1


@pytest.mark.parametrize(("says", "becomes", "fulfilled"), [("failure", "failure", False), ("success", "success", True)])
def test_an_unknown_session_follows_what_the_gateway_says_of_the_payment(app, client, gateway, says, becomes,
                                                                         fulfilled):
    order_id, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    _session_unknown(gateway, tx_id)
    answer_status(gateway, tx_id, says)
    summary = reconcile(app)
    assert summary.errors == 0
    assert row(app, tx_id).status == becomes
    assert (order_status(app, order_id) == "fulfilled") == fulfilled


def test_an_unknown_session_of_a_payment_still_pending_is_flagged_for_ops(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    _session_unknown(gateway, tx_id)
    answer_status(gateway, tx_id, "pending")
    reconcile(app)
    tx = row(app, tx_id)
    assert tx.status == "pending" and tx.needs_review and tx.review_reason == "gateway_inconsistent"
    assert any("has no such session" in line[2] for line in poller_lines(app, tx_id))


def test_a_mismatch_already_flagged_is_not_recorded_again_at_every_check(app, client, gateway):
    """Checked for as long as it stays pending, but the same mismatch is recorded once, not hourly."""
    _, tx_id = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == tx_id)
                           .values(needs_review=True, review_reason="amount_mismatch"))
        db.session.commit()
    answer_status(gateway, tx_id, "success", amount=1)
    for _ in range(3):
        with app.app_context():  # the next check is due
            db.session.execute(update(Transaction).where(Transaction.id == tx_id).values(next_check_at=None))
            db.session.commit()
        assert reconcile(app).checked == 1
    assert status_calls(gateway, tx_id) == 3 and poller_lines(app, tx_id) == []
    assert row(app, tx_id).status == "pending" and fulfillment_probe.calls == []


def test_an_unanswered_cancel_is_what_the_pass_records_when_it_closes_the_session(app, client, gateway):
    """Ops cancelled, the gateway never answered the expire: when the pass later closes the
    session itself, that close is the cancel, as the gateway's own expiry report would be."""
    order_id, tx_id = pending_payment(app, client, gateway, 60)
    gateway.add(responses.POST, f"{GATEWAY}/sessions/cs_{tx_id}/expire", body=requests.ConnectionError("no answer"))
    with app.app_context(), pytest.raises(CloseUnanswered):
        close_session(tx_id, Status.CANCELLED, source="ops", summary="cancelled by ops", actor="ops@example.com")
    assert (row(app, tx_id).status, row(app, tx_id).closing_as) == ("pending", "cancelled")
    gateway.replace(responses.POST, f"{GATEWAY}/sessions/cs_{tx_id}/expire", json={"status": "expired"})
    set_age(app, tx_id, EXPIRES_AFTER + 60)

    summary = reconcile(app)

    assert row(app, tx_id).status == "cancelled"
    assert (summary.expired, summary.errors) == (1, 0)
    assert "asked to close as cancelled earlier" in poller_lines(app, tx_id)[-1][2]
    assert order_status(app, order_id) == "open"

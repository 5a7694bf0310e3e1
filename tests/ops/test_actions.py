"""Admin actions: re-check, cancel, mark reviewed; each on the timeline with the staff email."""

import re

import pytest
import requests
from sqlalchemy import select, update

from app.extensions import db
from app.models import Transaction, TransactionEvent
from app.services.status_moves import flag_for_review
from tests import fulfillment_probe
from tests.conftest import GATEWAY, place_order, post_webhook, start_payment, status_event
from tests.ops.conftest import ADMIN, paid_transaction, post_form


@pytest.fixture
def pending(client, gateway):
    order = place_order(client)
    return order, start_payment(client, gateway, order["order_id"])["transaction_id"]


def tx_state(app, tx_id):
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        return tx.status, tx.needs_review, tx.review_reason, tx.reviewed_by


def ops_lines(app, tx_id):
    with app.app_context():
        return [(e.kind, e.summary, e.outcome, e.actor, e.source) for e in db.session.scalars(
            select(TransactionEvent).where(TransactionEvent.transaction_id == tx_id, TransactionEvent.source == "ops")
            .order_by(TransactionEvent.id))]


def test_recheck_applies_what_the_gateway_says(app, admin_client, pending, gateway):
    order, tx_id = pending
    gateway.get(f"{GATEWAY}/status/{tx_id}", json={"transaction_id": tx_id, "status": "success",
                                                   "amount": 1999, "currency": "USD"})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/recheck")
    assert response.status_code == 303
    assert tx_state(app, tx_id)[0] == "success"
    assert fulfillment_probe.calls == [(order["order_id"], tx_id)]
    lines = ops_lines(app, tx_id)
    assert ("ops", f"re-check by {ADMIN}: gateway says success", "ok", ADMIN, "ops") in lines
    assert any(kind == "status" and outcome == "applied" and actor == ADMIN for kind, _, outcome, actor, _ in lines)
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert "The gateway says success; the payment is now success." in page


def _cancel_then_recheck(admin_client, gateway, tx_id: str, gateway_says: str):
    """Cancel the pending payment from its page, then re-check it with the gateway saying ``gateway_says``."""
    gateway.post(f"{GATEWAY}/sessions/cs_{tx_id}/expire", json={"status": "expired"})
    post_form(admin_client, f"/ops/transactions/{tx_id}/cancel")
    gateway.get(f"{GATEWAY}/status/{tx_id}", json={"transaction_id": tx_id, "status": gateway_says, "amount": 1999,
                                                   "currency": "USD"})
    return post_form(admin_client, f"/ops/transactions/{tx_id}/recheck")


def test_recheck_that_the_table_refuses_says_what_stays(app, admin_client, pending, gateway):
    _, tx_id = pending
    page = _cancel_then_recheck(admin_client, gateway, tx_id, "failure")
    assert tx_state(app, tx_id)[0] == "cancelled"
    assert ("The gateway says failure, but this payment stays cancelled: a cancelled payment never becomes "
            "failure.") in admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert page.status_code == 303


def test_recheck_after_a_cancel_reads_the_gateways_expiry_as_that_cancel(app, admin_client, pending, gateway):
    """The gateway calls a session we closed on a cancel expired; that is the cancel, nothing to fix."""
    _, tx_id = pending
    _cancel_then_recheck(admin_client, gateway, tx_id, "expired")
    assert tx_state(app, tx_id)[0] == "cancelled"
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert ("The gateway says expired (it closed the session on our cancel, so that is cancelled), as recorded "
            "here; nothing changed.") in page


def test_recheck_when_the_gateway_does_not_know_the_payment(app, admin_client, pending, gateway):
    _, tx_id = pending
    gateway.get(f"{GATEWAY}/status/{tx_id}", status=404, json={"error": "not_found"})
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/recheck").status_code == 303
    assert tx_state(app, tx_id)[0] == "pending"
    assert ops_lines(app, tx_id)[-1][2] == "noop"


def test_recheck_with_the_gateway_down_says_so_and_changes_nothing(app, admin_client, pending, gateway):
    _, tx_id = pending
    gateway.get(f"{GATEWAY}/status/{tx_id}", status=503)
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/recheck")
    assert response.status_code == 502
    assert "did not complete the re-check" in response.get_data(as_text=True)
    assert tx_state(app, tx_id)[0] == "pending"
    assert ops_lines(app, tx_id)[-1][2] == "error"


@pytest.mark.parametrize("amount", [1, -5, 2 ** 31, 10 ** 40])
def test_recheck_success_for_another_amount_is_flagged_not_applied(app, admin_client, pending, gateway, amount):
    _, tx_id = pending
    gateway.get(f"{GATEWAY}/status/{tx_id}", json={"transaction_id": tx_id, "status": "success",
                                                   "amount": amount, "currency": "USD"})
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/recheck").status_code == 303
    assert tx_state(app, tx_id)[:3] == ("pending", True, "amount_mismatch")


def test_cancel_expires_the_session_then_cancels(app, admin_client, pending, gateway):
    _, tx_id = pending
    gateway.post(f"{GATEWAY}/sessions/cs_{tx_id}/expire", json={"status": "expired"})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/cancel")
    assert response.status_code == 303
    assert tx_state(app, tx_id)[0] == "cancelled"
    assert [c.request.url for c in gateway.calls][-1] == f"{GATEWAY}/sessions/cs_{tx_id}/expire"
    lines = ops_lines(app, tx_id)
    assert ("status", f"cancel by {ADMIN}: gateway session expired", "applied", ADMIN, "ops") in lines
    # a second cancel is refused: the payment is no longer pending
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/cancel")
    assert response.status_code == 409
    assert "Only a pending payment can be cancelled" in response.get_data(as_text=True)


def test_cancel_when_the_shopper_already_paid_records_the_success(app, admin_client, pending, gateway):
    order, tx_id = pending
    gateway.post(f"{GATEWAY}/sessions/cs_{tx_id}/expire", status=409, json={"status": "success"})
    gateway.get(f"{GATEWAY}/status/{tx_id}", json={"transaction_id": tx_id, "status": "success", "amount": 1999,
                                                   "currency": "USD"})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/cancel")
    assert response.status_code == 303
    assert tx_state(app, tx_id)[0] == "success"
    assert fulfillment_probe.calls == [(order["order_id"], tx_id)]
    assert "already paid" in admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)


def test_cancel_when_the_gateway_says_paid_for_other_money_flags_and_applies_nothing(
        app, admin_client, pending, gateway):
    order, tx_id = pending
    gateway.post(f"{GATEWAY}/sessions/cs_{tx_id}/expire", status=409, json={"status": "success"})
    gateway.get(f"{GATEWAY}/status/{tx_id}", json={"transaction_id": tx_id, "status": "success", "amount": 1,
                                                   "currency": "USD"})
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/cancel").status_code == 303
    assert tx_state(app, tx_id)[0] == "pending"
    assert fulfillment_probe.calls == []


def test_cancel_with_the_gateway_down_leaves_the_payment_pending(app, admin_client, pending, gateway):
    _, tx_id = pending
    gateway.post(f"{GATEWAY}/sessions/cs_{tx_id}/expire", status=500)
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/cancel").status_code == 502
    assert tx_state(app, tx_id)[0] == "pending"


def test_mark_reviewed_clears_the_flag_and_records_who(app, admin_client, client, pending, gateway):
    _, tx_id = pending
    gateway.post(f"{GATEWAY}/sessions/cs_{tx_id}/expire", json={"status": "expired"})
    post_form(admin_client, f"/ops/transactions/{tx_id}/cancel")
    post_webhook(client, status_event(tx_id, "success", 1999))  # the gateway holds the money: flagged
    assert tx_state(app, tx_id) == ("success", True, "success_after_cancellation", None)
    listing = admin_client.get("/ops/transactions?flagged=1").get_data(as_text=True)
    assert tx_id in listing and "Flagged: success_after_cancellation" in listing

    assert 'name="reason" value="success_after_cancellation"' in admin_client.get(
        f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert review(admin_client, tx_id, "success_after_cancellation").status_code == 303
    assert tx_state(app, tx_id) == ("success", False, "success_after_cancellation", ADMIN)
    assert ops_lines(app, tx_id)[-1][:4] == (
        "ops", f"marked reviewed by {ADMIN} (flag was: success_after_cancellation)", "ok", ADMIN)
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert f"Reviewed by {ADMIN}" in page
    assert review(admin_client, tx_id, "success_after_cancellation").status_code == 409


def review(admin_client, tx_id: str, seen: str, version: str | None = None):
    return post_form(admin_client, f"/ops/transactions/{tx_id}/review",
                     {"reason": seen, **({} if version is None else {"flagged_at": version})})


def shown_flag(admin_client, tx_id: str) -> tuple[str, str]:
    """The flag the transaction page shows and carries in its Mark reviewed form."""
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    return (re.search(r'name="reason" value="([^"]*)"', page).group(1),
            re.search(r'name="flagged_at" value="([^"]*)"', page).group(1))


def test_the_same_reason_raised_again_after_the_page_loaded_is_not_cleared_unseen(app, admin_client, client,
                                                                                   pending):
    """The reason text alone cannot tell a flag from the same reason raised again (an unanswered
    refund settled, then another unanswered): the page carries when it was raised."""
    _, tx_id = pending
    with app.app_context():
        flag_for_review(tx_id, "refund_outcome_unknown")
        db.session.commit()
    seen, version = shown_flag(admin_client, tx_id)
    assert seen == "refund_outcome_unknown" and version
    with app.app_context():  # settled by the system, then raised again, while the page stayed open
        db.session.execute(update(Transaction).where(Transaction.id == tx_id).values(needs_review=False))
        flag_for_review(tx_id, "refund_outcome_unknown")
        db.session.commit()
    refused = review(admin_client, tx_id, seen, version)
    assert refused.status_code == 409 and tx_state(app, tx_id)[1] is True
    assert review(admin_client, tx_id, *shown_flag(admin_client, tx_id)).status_code == 303
    assert tx_state(app, tx_id)[1] is False


def test_a_cancel_the_gateway_never_answered_is_still_the_cancel_when_it_expires(app, admin_client, client,
                                                                                 pending, gateway):
    """The expire was sent and no answer came: the gateway may have closed the session, so the
    page says so, and the expiry it then reports is recorded as this cancel, by this admin."""
    _, tx_id = pending
    gateway.post(f"{GATEWAY}/sessions/cs_{tx_id}/expire", body=requests.ConnectionError("no answer"))
    answer = post_form(admin_client, f"/ops/transactions/{tx_id}/cancel")
    assert answer.status_code == 502 and "It may still close the session" in answer.get_data(as_text=True)
    assert tx_state(app, tx_id)[0] == "pending"
    assert post_webhook(client, status_event(tx_id, "expired", 1999)).status_code == 200
    assert tx_state(app, tx_id)[0] == "cancelled"


def test_a_refund_owed_flag_raised_after_the_page_loaded_is_not_cleared_unseen(app, admin_client, client, gateway):
    """The reviewer saw an amount mismatch; a late success then made a refund owed on it."""
    order = place_order(client)
    first = start_payment(client, gateway, order["order_id"])["transaction_id"]
    post_webhook(client, status_event(first, "cancelled", 1999))
    post_webhook(client, status_event(first, "success", 1998))  # other money: flagged, not applied
    second = start_payment(client, gateway, order["order_id"])["transaction_id"]
    post_webhook(client, status_event(second, "success", 1999))  # pays the order
    seen = tx_state(app, first)[2]
    assert seen == "amount_mismatch"
    post_webhook(client, status_event(first, "success", 1999))  # the late success: a refund is owed
    status, flagged, reason, _ = tx_state(app, first)
    assert (status, flagged) == ("success", True)
    assert reason == "amount_mismatch, duplicate_payment_refund_owed"  # both reasons kept

    refused = review(admin_client, first, seen)
    assert refused.status_code == 409 and "duplicate_payment_refund_owed" in refused.get_data(as_text=True)
    assert tx_state(app, first)[1] is True
    assert review(admin_client, first, "").status_code == 409  # a form without the reason clears nothing
    assert review(admin_client, first, reason).status_code == 303
    assert tx_state(app, first)[1] is False


def test_a_flag_already_open_is_not_repeated(app, client, pending):
    _, tx_id = pending
    for amount in (1998, 1990):
        post_webhook(client, status_event(tx_id, "success", amount))
    assert tx_state(app, tx_id)[1:3] == (True, "amount_mismatch")


def test_actions_on_an_unknown_transaction_are_404(admin_client):
    for action in ("recheck", "cancel", "refund", "review"):
        assert post_form(admin_client, f"/ops/transactions/txn_nope/{action}", {"amount": "1"}).status_code == 404


def test_refund_of_a_paid_transaction_from_the_listing_flow(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    found = admin_client.get("/ops/transactions", query_string={"q": tx_id}).get_data(as_text=True)
    assert f'data-transaction-id="{tx_id}"' in found

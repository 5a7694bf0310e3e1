"""The transaction page says what each open review reason means and what to do about it."""

import re

from app.domain.status import FLAGGED_MOVES
from app.ops.reasons import REASONS, explain
from app.services import gateway_reports, refunds, status_moves
from tests.conftest import place_order, post_webhook, start_payment, status_event

EVERY_REASON_RAISED = {
    gateway_reports.MISMATCH, gateway_reports.INCONSISTENT, gateway_reports.REFUND_BEFORE_SUCCESS,
    refunds.OUTCOME_UNKNOWN, refunds.REFUNDED_ELSEWHERE, refunds.MADE_AFTER_ALL, status_moves.DUPLICATE_PAYMENT,
    *FLAGGED_MOVES.values(),
}


def test_every_reason_the_app_raises_has_a_meaning():
    assert set(REASONS) == EVERY_REASON_RAISED


def test_open_reasons_are_explained_in_order_and_unknown_ones_left_out():
    explained = explain("amount_mismatch, something_new, duplicate_payment_refund_owed")
    assert [code for code, _ in explained] == ["amount_mismatch", "duplicate_payment_refund_owed"]
    assert explain(None) == [] and explain("") == []


def _shown_reasons(admin_client, tx_id: str) -> list[str]:
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    return re.findall(r'<li data-reason="([^"]+)"><strong>[^<]+</strong>: ([^<]+)</li>', page)


def test_a_flagged_payment_shows_what_each_reason_means(app, admin_client, client, gateway):
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    assert _shown_reasons(admin_client, tx_id) == []  # not flagged: nothing to explain
    post_webhook(client, status_event(tx_id, "success", 1998))  # other money: flagged
    post_webhook(client, status_event(tx_id, "refunded", 1998))  # a refund before any success: flagged too

    shown = _shown_reasons(admin_client, tx_id)

    assert [code for code, _ in shown] == ["amount_mismatch", "refund_reported_before_success"]
    assert shown[0][1] == REASONS["amount_mismatch"].replace("'", "&#39;")

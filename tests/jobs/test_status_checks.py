"""Stage 3 of a pass: ask the gateway about pending transactions older than the check window."""

from datetime import timedelta

import pytest
import requests
import responses

from app.models.clock import utcnow
from tests import fulfillment_probe
from tests.conftest import GATEWAY

from .support import (
    CHECK_AFTER, TEE_PRICE, answer_status, make_due, order_status, pending_payment, poller_lines, reconcile, row, set_age,
    status_calls,
)


@pytest.mark.parametrize(("age", "checked"), [(CHECK_AFTER - 5, False), (CHECK_AFTER + 5, True)])
def test_only_transactions_older_than_the_check_window_are_checked(app, client, gateway, age, checked):
    _, tx_id = pending_payment(app, client, gateway, age)
    answer_status(gateway, tx_id, "pending")
    summary = reconcile(app)
    assert status_calls(gateway, tx_id) == (1 if checked else 0)
    assert (summary.due, summary.checked) == ((1, 1) if checked else (0, 0))


def test_a_lowered_window_applies_to_transactions_already_pending(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, 120)
    answer_status(gateway, tx_id, "pending")
    assert reconcile(app).due == 0
    app.config["PAYMENT_STATUS_CHECK_AFTER"] = 60
    assert reconcile(app).due == 1
    assert status_calls(gateway, tx_id) == 1


def test_success_is_applied_and_fulfills_the_order_once(app, client, gateway):
    order_id, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "success")
    summary = reconcile(app)
    assert (summary.due, summary.checked, summary.changed, summary.errors) == (1, 1, 1, 0)
    tx = row(app, tx_id)
    assert tx.status == "success"
    assert tx.lease_until is None and tx.next_check_at is None
    assert tx.check_attempts == 1 and tx.last_checked_at is not None
    assert order_status(app, order_id) == "fulfilled"
    assert fulfillment_probe.calls == [(order_id, tx_id)]
    assert ("status", "applied", "poll: gateway says success") in poller_lines(app, tx_id)
    # nothing left to do on the next pass
    assert reconcile(app).due == 0
    assert status_calls(gateway, tx_id) == 1
    assert fulfillment_probe.calls == [(order_id, tx_id)]


def test_failure_is_applied_and_fulfills_nothing(app, client, gateway):
    order_id, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "failure")
    assert reconcile(app).changed == 1
    assert row(app, tx_id).status == "failure"
    assert order_status(app, order_id) == "open"
    assert fulfillment_probe.calls == []


def test_a_success_for_another_amount_is_flagged_not_applied(app, client, gateway):
    order_id, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "success", amount=1)
    assert reconcile(app).changed == 0
    tx = row(app, tx_id)
    assert tx.status == "pending"
    assert tx.needs_review and tx.review_reason == "amount_mismatch"
    assert order_status(app, order_id) == "open"
    assert fulfillment_probe.calls == []


def test_still_pending_is_rechecked_on_a_backoff(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "pending")

    before = utcnow()
    assert reconcile(app).checked == 1
    tx = row(app, tx_id)
    assert tx.status == "pending" and tx.check_attempts == 1 and tx.lease_until is None
    assert before + timedelta(seconds=59) <= tx.next_check_at <= utcnow() + timedelta(seconds=61)

    # the next pass a minute later (here: at once) does not ask again while backing off
    assert reconcile(app).due == 0
    assert status_calls(gateway, tx_id) == 1

    for attempt, backoff in ((2, 300), (3, 900)):  # made due at once: each check waits longer
        make_due(app, tx_id)
        before = utcnow()
        assert reconcile(app).checked == 1
        assert status_calls(gateway, tx_id) == attempt
        tx = row(app, tx_id)
        assert tx.check_attempts == attempt
        assert (before + timedelta(seconds=backoff - 1) <= tx.next_check_at
                <= utcnow() + timedelta(seconds=backoff + 1))


def test_a_transaction_the_gateway_does_not_know_is_recorded_and_rescheduled(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    gateway.add(responses.GET, f"{GATEWAY}/status/{tx_id}", status=404, json={"error": "not_found"})
    summary = reconcile(app)
    assert (summary.checked, summary.changed, summary.errors) == (1, 0, 0)
    tx = row(app, tx_id)
    assert tx.status == "pending" and tx.lease_until is None
    assert tx.next_check_at > utcnow()
    assert [line[:2] for line in poller_lines(app, tx_id)] == [("poll", "unknown")]


@pytest.mark.parametrize("failure", [
    requests.ConnectionError("connection refused"),
    requests.ReadTimeout("read timed out"),
    503,
    500,
])
def test_gateway_trouble_is_recorded_and_the_transaction_stays_pending(app, client, gateway, failure):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    url = f"{GATEWAY}/status/{tx_id}"
    if isinstance(failure, int):
        gateway.add(responses.GET, url, status=failure, json={"error": "oops"})
    else:
        gateway.add(responses.GET, url, body=failure)
    summary = reconcile(app)
    assert (summary.due, summary.checked, summary.errors) == (1, 0, 1)
    tx = row(app, tx_id)
    assert tx.status == "pending" and tx.lease_until is None
    assert tx.next_check_at > utcnow()
    lines = poller_lines(app, tx_id)
    assert len(lines) == 1 and lines[0][:2] == ("poll", "error")
    assert "status check failed" in lines[0][2]

    # retried once the backoff has passed, and then it works
    gateway.replace(responses.GET, url, json={"transaction_id": tx_id, "status": "success", "amount": 1999,
                                              "currency": "USD"})
    make_due(app, tx_id)
    assert reconcile(app).changed == 1
    assert row(app, tx_id).status == "success"


def test_a_malformed_answer_is_an_error_on_that_transaction_only(app, client, gateway):
    ids = [pending_payment(app, client, gateway, CHECK_AFTER + 60 + i)[1] for i in range(4)]
    broken = ids[1]
    huge = ids[3]  # an amount no money column holds: a mismatch like any other, flagged
    for tx_id in ids:
        if tx_id == broken:
            gateway.add(responses.GET, f"{GATEWAY}/status/{tx_id}", body="<html>", status=200)
        else:
            answer_status(gateway, tx_id, "success", amount=10 ** 40 if tx_id == huge else TEE_PRICE)
    summary = reconcile(app)
    assert (summary.due, summary.changed, summary.errors) == (4, 2, 1)
    assert [row(app, t).status for t in ids] == ["success", "pending", "success", "pending"]
    assert (row(app, huge).needs_review, row(app, huge).review_reason) == (True, "amount_mismatch")
    assert len(fulfillment_probe.calls) == 2


def test_a_move_the_table_refuses_is_recorded_and_nothing_changes(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "refunded")
    summary = reconcile(app)
    assert (summary.checked, summary.changed) == (1, 0)
    tx = row(app, tx_id)
    assert tx.status == "pending" and tx.lease_until is None and tx.next_check_at > utcnow()
    assert ("status", "refused") in [line[:2] for line in poller_lines(app, tx_id)]


def test_many_due_transactions_are_checked_in_batches(app, client, gateway):
    ids = [pending_payment(app, client, gateway, CHECK_AFTER + 60)[1] for _ in range(11)]
    for tx_id in ids:
        answer_status(gateway, tx_id, "pending")
    set_age(app, ids, CHECK_AFTER + 60)  # one created_at for all: batches must not stop at a tie
    summary = reconcile(app, batch_size=3, workers=2)
    assert (summary.due, summary.checked) == (11, 11)
    assert all(status_calls(gateway, t) == 1 for t in ids)

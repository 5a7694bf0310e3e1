"""Refunds: integer minor units above 0, never more than remains, even submitted at once."""

import json
import re
import threading
import time
from datetime import timedelta

import pytest
import responses
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update

from app.extensions import db
from app.models import Order, Refund, Transaction, TransactionEvent
from app.models.clock import utcnow
from app.services import refunds
from app.services.errors import ServiceError
from app.services.status_moves import flag_for_review
from tests import fulfillment_probe
from tests.conftest import GATEWAY, place_order, post_webhook, start_payment, status_event
from tests.jobs.support import reconcile
from tests.ops.conftest import ADMIN, paid_transaction, post_form

REFUNDS_URL = f"{GATEWAY}/refunds"


def gateway_refunds(mock, *, delay: float = 0.0):
    """The gateway's refund endpoint: each Idempotency-Key gets one refund id."""
    seen = {}

    def answer(request):
        if delay:
            time.sleep(delay)
        key = request.headers["Idempotency-Key"]
        seen.setdefault(key, f"re_{len(seen) + 1}")
        return 200, {}, json.dumps({"refund_id": seen[key], "status": "succeeded"})

    mock.add_callback(responses.POST, REFUNDS_URL, callback=answer)
    return seen


def refund_calls(mock) -> list[dict]:
    return [json.loads(c.request.body) | {"key": c.request.headers["Idempotency-Key"]}
            for c in mock.calls if c.request.url == REFUNDS_URL]


def state(app, tx_id):
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        rows = list(db.session.scalars(select(Refund).where(Refund.transaction_id == tx_id).order_by(Refund.created_at)))
        return tx.status, tx.refunded_amount, [(r.amount, r.status) for r in rows]


@pytest.mark.parametrize("amount", ["", "   ", "0", "-5", "abc", "12.5", "1e3", "5 USD", "1_000", "0x10", "9" * 13, "²", "1²", "٣"])
def test_refund_amount_must_be_a_whole_number_above_zero(app, admin_client, client, gateway, amount):
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": amount})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert html.count('role="alert"') == 1  # announced once; the field points at its message
    assert 'aria-describedby="refund-hint refund-error"' in html and 'id="refund-error"' in html
    assert state(app, tx_id) == ("success", 0, [])
    assert refund_calls(gateway) == []


@pytest.mark.parametrize("amount", [2000, 10**9])
def test_refund_above_what_remains_is_refused(app, admin_client, client, gateway, amount):
    _, tx_id, total = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": str(amount)})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert f"At most {total} minor units (19.99 USD) remain" in html
    assert html.count('role="alert"') == 1  # announced once; the field points at it and has the focus
    field = re.search(r'<input[^>]*id="refund-amount"[^>]*>', html).group(0)
    assert 'aria-invalid="true"' in field and 'aria-describedby="refund-hint refund-error"' in field
    assert "autofocus" in field
    assert state(app, tx_id) == ("success", 0, [])
    assert refund_calls(gateway) == []


@pytest.mark.parametrize("amount", [2**31 - 1000, 2**31 - 1, 2**31, 10**12 - 1])
def test_a_huge_refund_after_a_partial_one_is_refused_not_an_overflow(app, admin_client, client, gateway, amount):
    # refunded 1000 + a value near 2**31 leaves PostgreSQL's integer range if ever summed
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "1000"}).status_code == 303
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": str(amount)})
    assert response.status_code == 422
    assert "At most 999 minor units" in response.get_data(as_text=True)
    assert state(app, tx_id) == ("partially_refunded", 1000, [(1000, "succeeded")])


def test_partial_then_the_rest_then_nothing(app, admin_client, client, gateway):
    order, tx_id, total = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "500"})
    assert response.status_code == 303 and response.location.endswith(f"/ops/transactions/{tx_id}")
    assert state(app, tx_id) == ("partially_refunded", 500, [(500, "succeeded")])
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert "Refunded 5.00 USD." in page and "partially refunded" in page
    assert f"refund of 5.00 USD requested by {ADMIN}" in page
    assert "refund of 5.00 USD succeeded" in page
    assert "Refund the remaining 14.99 USD in full" in page

    with app.app_context():
        first = db.session.scalar(select(Refund))
        assert refund_calls(gateway) == [{"transaction_id": tx_id, "amount": 500, "key": first.id}]
        moves = list(db.session.scalars(select(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "status",
            TransactionEvent.to_status == "partially_refunded")))
        assert [(m.outcome, m.actor, m.source) for m in moves] == [("applied", ADMIN, "ops")]

    # the full-refund button posts exactly what remains
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": str(total - 500)})
    assert response.status_code == 303
    assert state(app, tx_id) == ("refunded", total, [(500, "succeeded"), (total - 500, "succeeded")])

    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "1"})
    assert response.status_code == 409
    assert "Only a successful payment can be refunded" in response.get_data(as_text=True)
    assert client.get(f"/api/orders/{order['order_id']}").get_json()["status"] == "fulfilled"


def test_a_second_partial_refund_keeps_partially_refunded(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    for amount in ("300", "200"):
        assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": amount}).status_code == 303
    assert state(app, tx_id) == ("partially_refunded", 500, [(300, "succeeded"), (200, "succeeded")])


def test_pending_or_failed_payments_cannot_be_refunded(app, admin_client, client, gateway):
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    gateway_refunds(gateway)
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "100"})
    assert response.status_code == 409
    assert state(app, tx_id) == ("pending", 0, [])


def test_gateway_refusal_releases_the_reservation(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=422, json={"error": "refund_exceeds_capture", "message": "no"})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"})
    assert response.status_code == 502
    assert "refused the refund" in response.get_data(as_text=True)
    assert state(app, tx_id) == ("success", 0, [(700, "failed")])


def test_unanswered_refund_holds_the_amount_and_can_be_retried(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=503)
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"})
    assert response.status_code == 502
    # the page comes back with the field empty: pressing Refund again would be a second refund
    field = re.search(r'<input[^>]*id="refund-amount"[^>]*>', response.get_data(as_text=True)).group(0)
    assert 'value="700"' not in field, field
    assert state(app, tx_id) == ("success", 700, [(700, "requested")])
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert tx.needs_review and tx.review_reason == "refund_outcome_unknown"
        refund_id = db.session.scalar(select(Refund.id))
    # the held amount counts: only 1299 may still be refunded
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "1300"}).status_code == 422

    gateway.replace(responses.POST, REFUNDS_URL, json={"refund_id": "re_late", "status": "succeeded"})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{refund_id}/retry")
    assert response.status_code == 303
    assert state(app, tx_id) == ("partially_refunded", 700, [(700, "succeeded")])
    assert {c["key"] for c in refund_calls(gateway)} == {refund_id}  # every attempt under one key
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{refund_id}/retry")
    assert response.status_code == 409


@pytest.mark.parametrize("says", ["failed", "canceled"])
def test_a_refund_the_gateway_says_failed_releases_the_amount(app, admin_client, client, gateway, says):
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, json={"refund_id": "re_1", "status": says})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"})
    assert response.status_code == 502
    assert f"says the refund {says}" in response.get_data(as_text=True)
    assert state(app, tx_id) == ("success", 0, [(700, "failed")])


@pytest.mark.parametrize("answer", [{"refund_id": "re_1", "status": "pending"},
                                    {"refund_id": "re_1", "status": "requires_action"},
                                    {"refund_id": "re_1"}])
def test_a_refund_the_gateway_has_not_settled_keeps_the_amount_held(app, admin_client, client, gateway, answer):
    # Not "succeeded" is not "failed": a refund still pending at the gateway may yet be paid out,
    # so giving its amount back would let the same money be refunded twice.
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, json=answer)
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"})
    assert response.status_code == 502
    assert "has not confirmed the refund" in response.get_data(as_text=True)
    assert state(app, tx_id) == ("success", 700, [(700, "requested")])
    with app.app_context():
        assert db.session.get(Transaction, tx_id).review_reason == "refund_outcome_unknown"
        refund_id = db.session.scalar(select(Refund.id))
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "1300"}).status_code == 422
    # asked again once the gateway has paid it out: counted once
    gateway.replace(responses.POST, REFUNDS_URL, json={"refund_id": "re_1", "status": "succeeded"})
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{refund_id}/retry").status_code == 303
    assert state(app, tx_id) == ("partially_refunded", 700, [(700, "succeeded")])


@pytest.mark.parametrize("status", [501, 505, 520, 524, 303, 202])
def test_an_answer_that_is_no_refusal_holds_the_amount(app, admin_client, client, gateway, status):
    # A 524 is a CDN in front of the gateway giving up waiting, a 303 points at what the POST
    # made: in both the gateway may have refunded. Only a 4xx says it did not.
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=status, headers={"Location": f"{REFUNDS_URL}/re_1"})
    gateway.get(f"{REFUNDS_URL}/re_1", status=404, json={"error": "not_found"})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"})
    assert response.status_code == 502
    assert state(app, tx_id) == ("success", 700, [(700, "requested")])  # held, not released
    with app.app_context():
        assert db.session.get(Transaction, tx_id).review_reason == "refund_outcome_unknown"
    # so a second refund of the whole amount cannot be sent beside it
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "1999"}).status_code == 422


def test_the_outcome_unknown_flag_stays_until_every_unanswered_refund_is_answered(app, admin_client, client,
                                                                                  gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=503)
    for amount in ("700", "500"):
        assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": amount}).status_code == 502
    with app.app_context():
        first, second = db.session.scalars(select(Refund.id).order_by(Refund.amount.desc())).all()
    gateway.replace(responses.POST, REFUNDS_URL, json={"refund_id": "re_first", "status": "succeeded"})

    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{first}/retry").status_code == 303

    with app.app_context():  # the 500 may still have been made at the gateway: still for review
        tx = db.session.get(Transaction, tx_id)
        assert tx.needs_review and tx.review_reason == "refund_outcome_unknown"
    gateway.replace(responses.POST, REFUNDS_URL, json={"refund_id": "re_second", "status": "succeeded"})
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{second}/retry").status_code == 303
    with app.app_context():
        assert not db.session.get(Transaction, tx_id).needs_review
    assert state(app, tx_id) == ("partially_refunded", 1200, [(700, "succeeded"), (500, "succeeded")])


@pytest.mark.parametrize("amount", [0, -1, 1.5, "5", True, None])
def test_the_service_accepts_only_positive_integers(app, client, gateway, amount):
    _, tx_id, _ = paid_transaction(client, gateway)
    with app.app_context(), pytest.raises(ServiceError) as refused:
        refunds.refund(tx_id, amount, ADMIN)
    assert refused.value.status == 422 and refused.value.code == "invalid_amount"


def _race(app, tx_id, amounts, request_key=None):
    barrier = threading.Barrier(len(amounts))
    outcomes, errors = [], []

    def attempt(amount):
        with app.app_context():
            barrier.wait()
            try:
                made = refunds.refund(tx_id, amount, ADMIN, request_key)
                outcomes.append(("ok", made.id if request_key else amount))
            except ServiceError as exc:
                outcomes.append((exc.code, amount))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(a,)) for a in amounts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return outcomes


def test_two_refunds_submitted_at_once_never_exceed_the_capture(app, client, gateway):
    _, tx_id, total = paid_transaction(client, gateway)
    gateway_refunds(gateway, delay=0.2)  # a slow gateway widens the window between check and refund
    outcomes = _race(app, tx_id, [1500, 1500])
    assert sorted(o for o, _ in outcomes) == ["ok", "refund_exceeds_remaining"]
    assert state(app, tx_id) == ("partially_refunded", 1500, [(1500, "succeeded")])
    assert [c["amount"] for c in refund_calls(gateway)] == [1500]


def test_many_refunds_at_once_add_up_to_at_most_the_capture(app, client, gateway):
    _, tx_id, total = paid_transaction(client, gateway)
    gateway_refunds(gateway, delay=0.05)
    outcomes = _race(app, tx_id, [500] * 8)
    assert sum(1 for o, _ in outcomes if o == "ok") == 3  # 3 x 500 fit in 1999, a 4th does not
    status, reserved, rows = state(app, tx_id)
    assert reserved == 1500 and sum(a for a, s in rows if s == "succeeded") == 1500
    assert status == "partially_refunded"
    assert sum(c["amount"] for c in refund_calls(gateway)) == 1500


def test_two_full_refunds_at_once_refund_once(app, client, gateway):
    _, tx_id, total = paid_transaction(client, gateway)
    gateway_refunds(gateway, delay=0.1)
    outcomes = _race(app, tx_id, [total, total])
    assert sorted(o for o, _ in outcomes) == ["ok", "refund_exceeds_remaining"]
    assert state(app, tx_id) == ("refunded", total, [(total, "succeeded")])
    with app.app_context(), pytest.raises(ServiceError) as late:  # a stale tab's full refund, afterwards
        refunds.refund(tx_id, total, ADMIN)
    assert late.value.code == "not_refundable" and "this one is refunded" in late.value.message
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Refund)) == 1


def test_the_same_form_sent_twice_at_once_refunds_once(app, client, gateway):
    """A double click: both copies carry the form's one-time key, and both get the one refund."""
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway_refunds(gateway, delay=0.3)  # the second copy arrives while the first is at the gateway
    outcomes = _race(app, tx_id, [1000, 1000], request_key="form-key-1")
    with app.app_context():
        refund_id = db.session.scalar(select(Refund.id))
    assert outcomes == [("ok", refund_id), ("ok", refund_id)]
    assert state(app, tx_id) == ("partially_refunded", 1000, [(1000, "succeeded")])
    assert len(refund_calls(gateway)) == 1


def test_a_form_sent_again_gets_its_refund_not_another(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    url = f"/ops/transactions/{tx_id}/refund"
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    keys = re.findall(r'name="request_key" value="([^"]+)"', page)
    assert len(keys) == 2 and len(set(keys)) == 2  # one per form
    assert set(re.findall(r'name="request_key" value="([^"]+)"', admin_client.get(
        f"/ops/transactions/{tx_id}").get_data(as_text=True))).isdisjoint(keys)  # fresh on every page
    for _ in range(2):
        response = post_form(admin_client, url, {"amount": "500", "request_key": keys[0]})
        assert response.status_code == 303
    assert state(app, tx_id) == ("partially_refunded", 500, [(500, "succeeded")])
    response = post_form(admin_client, url, {"amount": "600", "request_key": keys[0]})
    assert response.status_code == 409 and "already used for another refund" in response.get_data(as_text=True)
    assert len(refund_calls(gateway)) == 1


def refund_key(app, tx_id: str) -> str:
    """The one refund's id, the Idempotency-Key its gateway calls carry."""
    with app.app_context():
        return db.session.scalar(select(Refund.id).where(Refund.transaction_id == tx_id))


def test_reloading_an_unanswered_refund_does_not_send_another(app, admin_client, client, gateway):
    """The answer to an unanswered refund is rendered at the form's address; reloading it sends
    the form again, which must not become a second refund under a new key."""
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=503)
    form = {"amount": "500", "request_key": "form-key-2"}
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", form).status_code == 502
    gateway.replace(responses.POST, REFUNDS_URL, json={"refund_id": "re_2", "status": "succeeded"})
    again = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", form)
    assert again.status_code == 409 and "is waiting for the gateway" in again.get_data(as_text=True)
    assert state(app, tx_id) == ("success", 500, [(500, "requested")])
    assert {c["key"] for c in refund_calls(gateway)} == {refund_key(app, tx_id)}  # the first refund's retries only


def cut_off_refund(app, tx_id: str, amount: int, age_seconds: float) -> str:
    """Test data setup: what refund() leaves when its process dies during the gateway call
    (the amount reserved, the row requested, nothing flagged)."""
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == tx_id)
                           .values(refunded_amount=Transaction.refunded_amount + amount))
        record = Refund(transaction_id=tx_id, amount=amount, currency="USD", status="requested", actor=ADMIN,
                        created_at=utcnow() - timedelta(seconds=age_seconds))
        db.session.add(record)
        db.session.commit()
        return record.id


def unanswered_lines(app, tx_id: str) -> list[tuple[str, str]]:
    with app.app_context():
        return [(e.source, e.summary) for e in db.session.scalars(select(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.outcome == "error"))]


def test_a_refund_cut_off_mid_call_is_flagged_once_by_reconciliation(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    old = cut_off_refund(app, tx_id, 500, age_seconds=600)
    _, fresh_tx, _ = paid_transaction(client, gateway)
    cut_off_refund(app, fresh_tx, 500, age_seconds=1)  # may still be in flight: left alone
    reconcile(app)
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert (tx.needs_review, tx.review_reason, tx.refunded_amount) == (True, "refund_outcome_unknown", 500)
        assert db.session.get(Refund, old).flagged_at is not None
        assert db.session.get(Transaction, fresh_tx).needs_review is False
    [(source, summary)] = unanswered_lines(app, tx_id)
    assert source == "poller" and f"refund {old} of 5.00 USD" in summary and "amount held" in summary

    assert review_and_pass(app, admin_client, tx_id) == 1  # reviewed and another pass: not flagged again
    with app.app_context():
        assert db.session.get(Transaction, tx_id).needs_review is False
    gateway.post(REFUNDS_URL, json={"refund_id": "re_after_crash", "status": "succeeded"})
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{old}/retry").status_code == 303
    assert state(app, tx_id) == ("partially_refunded", 500, [(500, "succeeded")])


def test_a_refund_flagged_when_unanswered_is_not_flagged_again(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=503)
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"}).status_code == 502
    with app.app_context():
        db.session.execute(update(Refund).values(created_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    assert review_and_pass(app, admin_client, tx_id) == 1


def review_and_pass(app, admin_client, tx_id: str) -> int:
    """Mark the payment reviewed, run a reconciliation pass; returns its unanswered-refund lines."""
    with app.app_context():
        reason = db.session.get(Transaction, tx_id).review_reason
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/review", {"reason": reason}).status_code == 303
    reconcile(app)
    return len(unanswered_lines(app, tx_id))


def test_nothing_left_to_refund_says_so(app, client, gateway):
    _, tx_id, total = paid_transaction(client, gateway)
    cut_off_refund(app, tx_id, total, age_seconds=1)  # the whole payment held by a refund in progress
    with app.app_context(), pytest.raises(ServiceError) as refused:
        refunds.refund(tx_id, 1, ADMIN)
    assert refused.value.code == "refund_exceeds_remaining"
    assert refused.value.message == ("Nothing remains to be refunded: the whole payment is refunded or held by "
                                     "refunds in progress.")


def test_a_refund_leaves_requested_once_whatever_answers_race(app, client, gateway):
    """A late success after a release, or a second release, must not count the money twice."""
    _, tx_id, _ = paid_transaction(client, gateway)
    refund_id = cut_off_refund(app, tx_id, 500, age_seconds=1)
    with app.app_context():
        record = db.session.get(Refund, refund_id)
        refunds._release(record, ADMIN, "the gateway refused it")  # the amount goes back once
        refunds._release(record, ADMIN, "refused again")  # a racing refusal: nothing more goes back
        assert refunds._leave_requested(refund_id, "succeeded") is False  # a late success cannot count it
        db.session.commit()
    assert state(app, tx_id) == ("success", 0, [(500, "failed")])


def test_the_sweep_leaves_alone_a_refund_that_settles_after_it_was_listed(app, client, gateway, monkeypatch):
    transactions = [paid_transaction(client, gateway)[1] for _ in range(2)]
    listed = {cut_off_refund(app, tx_id, 500, age_seconds=600): tx_id for tx_id in transactions}
    flag = refunds._flag_unanswered
    settled: list[str] = []

    def flag_while_the_other_settles(record, *args, **kwargs):
        if not settled:  # meanwhile the other refund's late answer arrives, in another process
            other = next(refund_id for refund_id in listed if refund_id != record.id)
            with db.engine.begin() as conn:
                conn.execute(update(Refund).where(Refund.id == other).values(status="succeeded"))
            settled.append(other)
        return flag(record, *args, **kwargs)

    monkeypatch.setattr(refunds, "_flag_unanswered", flag_while_the_other_settles)
    with app.app_context():
        assert refunds.flag_unanswered_refunds(timedelta(seconds=60)) == 1
        flags = {tx_id: db.session.get(Transaction, tx_id).needs_review for tx_id in transactions}
    assert flags == {listed[settled[0]]: False, **{t: True for t in transactions if t != listed[settled[0]]}}


def test_a_refund_being_retried_is_not_swept_as_cut_off(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    stuck = cut_off_refund(app, tx_id, 500, age_seconds=600)  # ops press Retry before any sweep

    def answer(_request):  # a reconciliation pass runs while the retried call is in flight
        sweep = threading.Thread(target=lambda: reconcile(app))
        sweep.start()
        sweep.join()
        return 200, {}, json.dumps({"refund_id": "re_retried", "status": "succeeded"})

    gateway.add_callback(responses.POST, REFUNDS_URL, callback=answer)
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{stuck}/retry").status_code == 303
    assert state(app, tx_id) == ("partially_refunded", 500, [(500, "succeeded")])
    with app.app_context():
        assert db.session.get(Transaction, tx_id).needs_review is False
    assert unanswered_lines(app, tx_id) == []


def test_two_retries_at_once_send_the_refund_once(app, admin_client, client, gateway):
    """Two admins press Retry together: one send, one "in flight" answer, never a second send
    whose refusal could release the refund the first made."""
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=503)
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "1999"}).status_code == 502
    stuck = refund_key(app, tx_id)
    gateway.remove(responses.POST, REFUNDS_URL)
    gateway_refunds(gateway, delay=0.3)  # the gateway is back, and slow: both presses land in one send
    before = len(refund_calls(gateway))
    barrier = threading.Barrier(2)
    outcomes = []

    def press_retry():
        with app.app_context():
            barrier.wait()
            try:
                outcomes.append(refunds.retry_refund(tx_id, stuck, ADMIN).status)
            except ServiceError as exc:
                outcomes.append(exc.code)

    threads = [threading.Thread(target=press_retry) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["refund_in_flight", "succeeded"]
    assert len(refund_calls(gateway)) == before + 1
    assert state(app, tx_id) == ("refunded", 1999, [(1999, "succeeded")])


def test_a_refund_still_being_sent_cannot_be_retried(app, admin_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    sending = cut_off_refund(app, tx_id, 500, age_seconds=1)  # sent a second ago, no answer yet
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert "being sent…" in page and f"/refunds/{sending}/retry" not in page  # no Retry offered
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{sending}/retry")
    assert response.status_code == 409 and "being sent to the gateway right now" in response.get_data(as_text=True)
    assert refund_calls(gateway) == []
    assert state(app, tx_id) == ("success", 500, [(500, "requested")])


def test_a_gateway_409_on_a_refund_keeps_it_held_and_flagged(app, admin_client, client, gateway):
    """A 409 says the gateway is busy with this key (or in conflict with it), not that nothing moved."""
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=409, json={"error": "idempotency_key_in_use"})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"})
    assert response.status_code == 502 and "did not say what became of the refund" in response.get_data(as_text=True)
    assert state(app, tx_id) == ("success", 700, [(700, "requested")])
    with app.app_context():
        assert db.session.get(Transaction, tx_id).review_reason == "refund_outcome_unknown"


def test_a_refund_recorded_failed_that_the_gateway_confirms_is_counted(app, client, gateway):
    """Should a refund ever be released while the gateway made it, its confirmation corrects the books."""
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    with app.app_context():
        record = Refund(transaction_id=tx_id, amount=600, currency="USD", status="failed", actor=ADMIN)
        db.session.add(record)
        db.session.commit()
        refunds._send(record.id, ADMIN)
    assert state(app, tx_id) == ("partially_refunded", 600, [(600, "succeeded")])
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert tx.needs_review and tx.review_reason == "refund_recorded_failed_but_made"
        assert any("was recorded as failed, but the gateway confirms it" in e.summary for e in tx.events)


def test_a_gateway_409_whose_error_is_an_object_keeps_the_refund_held(app, admin_client, client, gateway):
    # the shape some gateways give "a request with this key is in progress"
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=409, json={"error": {"type": "idempotency_error", "message": "in progress"}})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"})
    assert response.status_code == 502
    assert state(app, tx_id) == ("success", 700, [(700, "requested")])
    with app.app_context():
        assert db.session.get(Transaction, tx_id).review_reason == "refund_outcome_unknown"


def test_a_gateway_409_not_refundable_is_final_and_releases_the_amount(app, admin_client, client, gateway):
    """The sandbox's 409 for a payment it holds no money for: a refusal, not a request in progress."""
    _, tx_id, _ = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=409, json={"error": "not_refundable", "message": "The payment is pending."})
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"})
    assert response.status_code == 502 and "nothing was refunded" in response.get_data(as_text=True)
    assert state(app, tx_id) == ("success", 0, [(700, "failed")])


@pytest.mark.parametrize("other_reason", [None, "duplicate_payment_refund_owed"])
def test_the_unknown_outcome_flag_is_settled_once_the_refund_is_answered(app, admin_client, client, gateway,
                                                                          other_reason):
    _, tx_id, _ = paid_transaction(client, gateway)
    if other_reason:
        with app.app_context():
            flag_for_review(tx_id, other_reason)
            db.session.commit()
    gateway.post(REFUNDS_URL, status=503)
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": "700"}).status_code == 502
    with app.app_context():
        assert db.session.get(Transaction, tx_id).review_reason.endswith("refund_outcome_unknown")
    gateway.replace(responses.POST, REFUNDS_URL, json={"refund_id": "re_late", "status": "succeeded"})
    assert post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{refund_key(app, tx_id)}/retry"
                     ).status_code == 303
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        if other_reason:  # the other reason still needs a person
            assert (tx.needs_review, tx.review_reason) == (True, other_reason)
        else:
            assert (tx.needs_review, tx.reviewed_by) == (False, "system")
        assert any(e.summary.startswith("every refund's outcome is known now") for e in tx.events)


def test_a_refund_the_gateway_reports_made_there_is_counted(app, admin_client, client, gateway):
    """Ops refunded the whole payment in the gateway's own dashboard: its webhook says refunded."""
    _, tx_id, amount = paid_transaction(client, gateway)
    assert post_webhook(client, status_event(tx_id, "refunded", amount)).status_code == 200
    assert state(app, tx_id) == ("refunded", amount, [])
    with app.app_context():
        assert not db.session.get(Transaction, tx_id).needs_review
    page = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert 'name="amount"' not in page  # nothing is offered for refunding any more


def test_a_partial_refund_made_at_the_gateway_is_flagged(app, admin_client, client, gateway):
    _, tx_id, amount = paid_transaction(client, gateway)
    assert post_webhook(client, status_event(tx_id, "partially_refunded", amount)).status_code == 200
    assert state(app, tx_id) == ("partially_refunded", 0, [])
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert tx.needs_review and tx.review_reason == "partial_refund_made_at_gateway"
    # a partial refund from here leaves nothing to flag: what it refunded is counted
    _, other_id, _ = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    assert post_form(admin_client, f"/ops/transactions/{other_id}/refund", {"amount": "700"}).status_code == 303
    assert post_webhook(client, status_event(other_id, "partially_refunded", amount)).status_code == 200
    with app.app_context():
        assert not db.session.get(Transaction, other_id).needs_review


def test_a_refund_from_here_failing_after_the_gateway_refunded_all_keeps_all_counted(app, client, gateway):
    """A refund from here is in flight when the gateway reports the payment wholly refunded (done
    in its dashboard), then refuses ours: the whole amount stays counted as refunded."""
    _, tx_id, amount = paid_transaction(client, gateway)

    def refuse_after_the_webhook(_request):
        assert post_webhook(client, status_event(tx_id, "refunded", amount)).status_code == 200
        return 409, {}, json.dumps({"error": "not_refundable", "message": "Already refunded."})

    gateway.add_callback(responses.POST, REFUNDS_URL, callback=refuse_after_the_webhook)
    with app.app_context(), pytest.raises(ServiceError) as refused:
        refunds.refund(tx_id, 700, ADMIN)
    assert refused.value.code == "refund_refused"
    assert state(app, tx_id) == ("refunded", amount, [(700, "failed")])


def test_a_partial_refund_at_the_gateway_during_a_refund_from_here_is_flagged_when_ours_fails(app, client, gateway):
    """Ours holds 700 when the gateway reports a partial refund (not flagged: 700 is counted);
    then the gateway refuses ours. Nothing is counted any more, so the payment is flagged then."""
    _, tx_id, amount = paid_transaction(client, gateway)

    def refuse_after_the_webhook(_request):
        assert post_webhook(client, status_event(tx_id, "partially_refunded", amount)).status_code == 200
        with app.app_context():
            assert not db.session.get(Transaction, tx_id).needs_review
        return 422, {}, json.dumps({"error": "refund_exceeds_capture", "message": "Too much."})

    gateway.add_callback(responses.POST, REFUNDS_URL, callback=refuse_after_the_webhook)
    with app.app_context(), pytest.raises(ServiceError):
        refunds.refund(tx_id, 700, ADMIN)
    assert state(app, tx_id) == ("partially_refunded", 0, [(700, "failed")])
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert tx.needs_review and tx.review_reason == "partial_refund_made_at_gateway"


def test_the_unknown_outcome_settles_only_the_flag_it_read(app, client, gateway, monkeypatch):
    """Another send of a refund times out (raising refund_outcome_unknown again) between the
    settling's read and its write: that new flag stays."""
    _, tx_id, _ = paid_transaction(client, gateway)
    with app.app_context():
        if db.engine.url.get_backend_name() != "postgresql":
            pytest.skip("an interleaving of two writers inside one function: PostgreSQL only (SQLite serialises them)")
        flag_for_review(tx_id, refunds.OUTCOME_UNKNOWN)
        db.session.commit()
    real_utcnow, raised = refunds.utcnow, []

    def raised_again_meanwhile():  # called by the settling between its read and its write
        if not raised:
            def flag_again():
                with app.app_context():
                    flag_for_review(tx_id, refunds.OUTCOME_UNKNOWN)
                    db.session.commit()
            other = threading.Thread(target=flag_again)
            other.start()
            other.join(10)
            raised.append(True)
        return real_utcnow()

    monkeypatch.setattr(refunds, "utcnow", raised_again_meanwhile)
    with app.app_context():
        refunds._outcome_known(tx_id, None)
        db.session.commit()
        assert raised and db.session.get(Transaction, tx_id).needs_review


def _order_row(app, order_id):
    with app.app_context():
        return db.session.get(Order, order_id)


def _status_lines(app, tx_id):
    with app.app_context():
        return [(e.source, e.outcome, e.to_status) for e in db.session.scalars(select(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "status")
            .order_by(TransactionEvent.id))]


def _fulfillment_lines(app, tx_id):
    with app.app_context():
        return [(e.outcome, e.summary) for e in db.session.scalars(select(TransactionEvent).where(
            TransactionEvent.transaction_id == tx_id, TransactionEvent.kind == "fulfillment")
            .order_by(TransactionEvent.id))]


@pytest.mark.parametrize(("refund", "ships"), [("full", False), ("partial", True)])
def test_an_order_refunded_in_full_before_it_was_fulfilled_is_not_fulfilled_later(app, client, gateway,
                                                                                   refund, ships):
    """The handler failed at payment time (the order waits, paid), then ops refunded: a refund of
    everything means the goods must not go out when the next pass retries; a partial one ships."""
    fulfillment_probe.reset(fail_times=1)
    order, tx_id, amount = paid_transaction(client, gateway)
    assert _order_row(app, order["order_id"]).status == "paid"
    gateway_refunds(gateway)
    with app.app_context():
        refunds.refund(tx_id, amount if refund == "full" else 700, ADMIN)

    summary = reconcile(app)

    assert _order_row(app, order["order_id"]).status == ("fulfilled" if ships else "paid")
    assert fulfillment_probe.calls == ([(order["order_id"], tx_id)] if ships else [])
    assert summary.fulfilled == (1 if ships else 0)
    held = [line for line in _fulfillment_lines(app, tx_id) if line[0] == "held"]
    assert held == ([] if ships else [("held", "refunded in full before the order was fulfilled: "
                                               "the order will not be handed to the fulfillment handler")])
    assert reconcile(app).fulfilled == 0 and len(fulfillment_probe.calls) == (1 if ships else 0)


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_an_order_waits_while_a_full_refund_of_it_is_unanswered(app, admin_client, client, gateway, outcome):
    """The handler failed at payment time, then ops refunded everything and the gateway did not
    answer: the money may have gone back, so the next passes must not ship. Once the refund is
    answered, a made one holds the order for good and a failed one lets it ship."""
    fulfillment_probe.reset(fail_times=1)
    order, tx_id, amount = paid_transaction(client, gateway)
    gateway.post(REFUNDS_URL, status=503)
    response = post_form(admin_client, f"/ops/transactions/{tx_id}/refund", {"amount": str(amount)})
    assert response.status_code == 502
    assert state(app, tx_id) == ("success", amount, [(amount, "requested")])

    assert reconcile(app).fulfilled == 0 and reconcile(app).fulfilled == 0
    assert _order_row(app, order["order_id"]).status == "paid" and fulfillment_probe.calls == []

    with app.app_context():
        refund_id = db.session.scalar(select(Refund.id))
    gateway.replace(responses.POST, REFUNDS_URL, json={"refund_id": "re_1", "status": outcome})
    post_form(admin_client, f"/ops/transactions/{tx_id}/refunds/{refund_id}/retry")
    summary = reconcile(app)
    ships = outcome == "failed"
    assert _order_row(app, order["order_id"]).status == ("fulfilled" if ships else "paid")
    assert fulfillment_probe.calls == ([(order["order_id"], tx_id)] if ships else [])
    assert summary.fulfilled == (1 if ships else 0)


@pytest.mark.parametrize(("amounts", "becomes"), [((700,), "partially_refunded"), ((700, 1299), "refunded")])
def test_a_refund_confirmed_but_not_yet_in_the_status_is_settled_by_the_next_pass(app, client, gateway, monkeypatch,
                                                                                   amounts, becomes):
    """The process stopped after recording the gateway's confirmation and before moving the
    payment: nothing else would move it (the gateway's own report of it may never come)."""
    order, tx_id, _ = paid_transaction(client, gateway)
    gateway_refunds(gateway)
    for number, amount in enumerate(amounts):
        if number == len(amounts) - 1:
            monkeypatch.setattr(refunds, "_settle_status", lambda *args, **kwargs: None)  # stops here
        with app.app_context():
            refunds.refund(tx_id, amount, ADMIN)
    monkeypatch.undo()
    stuck = "success" if len(amounts) == 1 else "partially_refunded"
    assert state(app, tx_id) == (stuck, sum(amounts), [(amount, "succeeded") for amount in amounts])

    reconcile(app)

    assert state(app, tx_id) == (becomes, sum(amounts), [(amount, "succeeded") for amount in amounts])
    moves = _status_lines(app, tx_id)
    assert moves[-1] == ("poller", "applied", becomes)
    reconcile(app)  # settled: the next pass has nothing to do
    assert _status_lines(app, tx_id) == moves


@pytest.mark.parametrize(("reported", "ships"), [("refunded", False), ("partially_refunded", True)])
def test_a_refund_reported_before_the_success_follows_it_before_any_fulfillment(app, client, gateway,
                                                                                reported, ships):
    """The gateway's deliveries came out of order: the refund (made in its dashboard) arrives
    while the payment is still pending here, the success after it."""
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    for _ in range(2):  # delivered twice (two deliveries of the gateway's): said once
        assert post_webhook(client, status_event(tx_id, reported, 1999)).status_code == 200
    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert (tx.status, tx.refund_reported, tx.needs_review) == ("pending", reported, True)
        assert tx.review_reason == "refund_reported_before_success"
        assert sum("before reporting its success" in e.summary for e in tx.events) == 1

    assert post_webhook(client, status_event(tx_id, "success", 1999)).status_code == 200

    with app.app_context():
        tx = db.session.get(Transaction, tx_id)
        assert tx.status == reported
        assert tx.refunded_amount == (1999 if reported == "refunded" else 0)
        moves = [(e.from_status, e.to_status) for e in tx.events if e.kind == "status" and e.outcome == "applied"]
        assert moves == [("pending", "success"), ("success", reported)]
    assert _order_row(app, order["order_id"]).status == ("fulfilled" if ships else "paid")
    assert fulfillment_probe.calls == ([(order["order_id"], tx_id)] if ships else [])
    reconcile(app)
    assert len(fulfillment_probe.calls) == (1 if ships else 0)


def test_a_refund_refused_by_a_change_that_is_over_says_so(app, client, gateway):
    """The payment became refundable between the reservation (refused: still pending) and the
    read that explains the refusal: "at most 19.99 remain" for a 19.99 refund made no sense."""
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    with app.app_context():
        if db.engine.url.get_backend_name() != "postgresql":
            pytest.skip("a second writer between two statements of one transaction: PostgreSQL only")
        other = db.engine

        def paid_meanwhile(_conn, _cursor, statement, *_args):  # right after the reservation's UPDATE
            if statement.startswith("UPDATE transactions SET refunded_amount"):
                with other.connect() as writer:
                    writer.execute(update(Transaction).where(Transaction.id == tx_id).values(status="success"))
                    writer.commit()

        sa_event.listen(other, "after_cursor_execute", paid_meanwhile)
        try:
            with pytest.raises(ServiceError) as refused:
                refunds.refund(tx_id, 1999, ADMIN)
        finally:
            sa_event.remove(other, "after_cursor_execute", paid_meanwhile)
    assert refused.value.code == "payment_changed"
    assert state(app, tx_id) == ("success", 0, [])

"""Claims: several passes (threads, processes) never check one transaction at the same time."""

import re
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
import requests
import responses
import sqlalchemy as sa
from sqlalchemy import update

from app.extensions import db
from app.jobs import claims
from app.jobs.reconcile import _in_context, check_one, write_back
from app.models import Transaction
from app.models.clock import utcnow
from tests.conftest import GATEWAY

from .support import (
    CHECK_AFTER, EXPIRES_AFTER, answer_status, expire_calls, pending_payment, reconcile, row, set_age, status_calls,
)


def counting_gateway(gateway, delay: float = 0.01) -> Counter:
    """Answer every status check "pending" after ``delay``; count the calls per transaction id."""
    calls: Counter = Counter()
    lock = threading.Lock()

    def answer(request):
        tx_id = request.url.rsplit("/", 1)[1]
        with lock:
            calls[tx_id] += 1
        time.sleep(delay)
        return 200, {}, f'{{"transaction_id": "{tx_id}", "status": "pending", "amount": 1999, "currency": "USD"}}'

    gateway.add_callback(responses.GET, re.compile(re.escape(f"{GATEWAY}/status/") + ".+"), callback=answer)
    return calls


def run_together(apps, **kwargs) -> list:
    """Start one pass per app at the same instant, each in its own thread; return their summaries."""
    barrier = threading.Barrier(len(apps))
    summaries, errors = [None] * len(apps), []

    def one(i, app):
        barrier.wait()
        try:
            summaries[i] = reconcile(app, **kwargs)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i, a)) for i, a in enumerate(apps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    return summaries


def test_concurrent_passes_check_each_transaction_exactly_once(app, make_app, client, gateway):
    ids = [pending_payment(app, client, gateway, CHECK_AFTER + 60 + i % 7)[1] for i in range(40)]
    calls = counting_gateway(gateway)
    # two apps, two engines and connection pools: as two processes would
    other = make_app(FULFILLMENT_HANDLER="tests.fulfillment_probe:record")
    summaries = run_together([app, other, app], batch_size=4, workers=3)
    assert {t: calls[t] for t in ids} == {t: 1 for t in ids}
    assert sum(s.due for s in summaries) == 40
    assert sum(s.checked for s in summaries) == 40
    assert all(row(app, t).lease_until is None and row(app, t).check_attempts == 1 for t in ids)


def test_a_row_leased_by_another_pass_is_left_alone_until_the_lease_runs_out(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "pending")
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == tx_id)
                           .values(lease_until=utcnow() + timedelta(minutes=5)))
        db.session.commit()
    assert reconcile(app).due == 0
    assert status_calls(gateway, tx_id) == 0

    # the claimer died: its lease runs out and another pass takes the row over
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == tx_id)
                           .values(lease_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert reconcile(app).due == 1
    assert status_calls(gateway, tx_id) == 1
    assert row(app, tx_id).lease_until is None


def test_postgresql_claims_skip_rows_locked_by_another_transaction(app, client, gateway, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite runs one instance")
    ids = [pending_payment(app, client, gateway, CHECK_AFTER + 60 + i)[1] for i in range(3)]
    for tx_id in ids:
        answer_status(gateway, tx_id, "pending")
    locker = sa.create_engine(database_url)
    try:
        with locker.connect() as conn:
            conn.execute(sa.text("SELECT id FROM transactions WHERE id = :id FOR UPDATE"), {"id": ids[1]})
            passes: list = []
            running = threading.Thread(target=lambda: passes.append(reconcile(app)), daemon=True)
            running.start()
            running.join(30)  # a guard against hanging, not a measurement
            finished_under_the_lock = not running.is_alive()
            conn.rollback()
            running.join(30)
    finally:
        locker.dispose()
    assert finished_under_the_lock, "the pass queued behind the row lock instead of skipping the row"
    [summary] = passes
    assert summary.due == 2
    assert [status_calls(gateway, t) for t in ids] == [1, 0, 1]
    assert reconcile(app).due == 1  # the lock is gone: its turn now


def test_a_pass_never_claims_a_row_twice_even_one_it_released_still_due(app, client, gateway):
    ids = [pending_payment(app, client, gateway, EXPIRES_AFTER + 60)[1] for _ in range(5)]
    set_age(app, ids, EXPIRES_AFTER + 60)  # one created_at for all
    for tx_id in ids:  # the gateway is down: each stays pending and due for the next pass
        gateway.add(responses.POST, f"{GATEWAY}/sessions/cs_{tx_id}/expire", body=requests.ConnectionError("down"))
    summaries = []
    worker = threading.Thread(target=lambda: summaries.append(reconcile(app, batch_size=2, workers=1)), daemon=True)
    worker.start()
    worker.join(30)
    assert summaries, "the pass did not finish"
    assert (summaries[0].due, summaries[0].errors) == (5, 5)
    assert [expire_calls(gateway, t) for t in ids] == [1] * 5


def claim_aged(app, tx_id: str, *, age: float, left: float):
    """Claim ``tx_id`` as a pass would have ``age`` seconds ago, with ``left`` seconds of lease remaining."""
    with app.app_context():
        now = utcnow()
        [claim] = claims.claim_batch([Transaction.id == tx_id], now=now - timedelta(seconds=age),
                                     lease_until=now + timedelta(seconds=left), after=None, limit=1)
        return claim


def test_a_claim_queued_past_half_its_lease_is_renewed_before_its_gateway_call(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "pending")
    claim = claim_aged(app, tx_id, age=150, left=60)  # a 210 s lease, 150 s of it spent waiting
    before = utcnow()
    quiet = _in_context(app, check_one, claim)
    after = utcnow()
    assert quiet.outcome == "pending" and status_calls(gateway, tx_id) == 1
    renewed = quiet.release.claim.lease
    # a whole lease again (210 s), from the moment of the call, however long the call took
    assert before + timedelta(seconds=210) <= renewed <= after + timedelta(seconds=210)
    assert row(app, tx_id).lease_until == renewed  # held in the database; the pass releases it with this token
    with app.app_context():
        write_back([quiet])
    assert row(app, tx_id).lease_until is None and row(app, tx_id).check_attempts == 1


def test_a_queued_claim_another_process_took_over_is_dropped_without_a_gateway_call(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "pending")
    claim = claim_aged(app, tx_id, age=250, left=-40)  # our lease ran out while we waited
    theirs = utcnow() + timedelta(minutes=3)
    with app.app_context():  # another process claimed the row in the meantime
        db.session.execute(update(Transaction).where(Transaction.id == tx_id).values(lease_until=theirs))
        db.session.commit()
    assert _in_context(app, check_one, claim) == "raced"
    assert status_calls(gateway, tx_id) == 0
    assert row(app, tx_id).lease_until == theirs  # their claim untouched


def test_a_fresh_claim_is_used_as_it_is(app, client, gateway):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    claim = claim_aged(app, tx_id, age=10, left=200)
    with app.app_context():
        assert claims.hold(claim, utcnow()) is claim
    assert row(app, tx_id).lease_until == claim.lease

"""A delivery's required writes as two PostgreSQL statements: the least its round trips can be.

Yardstick SQL for bench/webhooks.py, not app code. The first statement does in one
data-modifying CTE what a success delivery must commit together: the compare-and-set from
pending (amount and currency in its WHERE), the order paid with its claim, the dedup row and
two timeline lines. It runs in autocommit, so it is its own transaction: one round trip, no
BEGIN or COMMIT. The second marks the order fulfilled with its timeline line, after the
(built-in, no-op) handler. It leaves out everything the app decides in Python: other
statuses, refusals, flags, duplicate payments, retries on a lost race.
"""

from __future__ import annotations

import sqlalchemy as sa

MOVE = sa.text("""
WITH moved AS (
    UPDATE transactions SET status = 'success', updated_at = now()
    WHERE id = :t AND status = 'pending' AND amount = :a AND currency = :c
    RETURNING id, order_id),
paid AS (
    UPDATE orders SET status = 'paid', paid_transaction_id = :t, paid_at = now(), updated_at = now(),
        fulfillment_claimed_at = now(), fulfillment_attempts = fulfillment_attempts + 1
    WHERE id = (SELECT order_id FROM moved) AND status = 'open'
    RETURNING id),
delivery AS (
    INSERT INTO webhook_events (gateway, webhook_id, transaction_id, event_type, status, amount, currency,
        outcome, payload, received_at)
    VALUES ('sandbox', :w, :t, 'payment.status_changed', 'success', :a, :c, 'applied', '{}', now())),
lines AS (
    INSERT INTO transaction_events (transaction_id, kind, source, outcome, summary, created_at)
    SELECT :t, 'webhook', 'webhook', 'ok', 'webhook', now()
    UNION ALL SELECT id, 'status', 'webhook', 'applied', 'moved', now() FROM moved)
SELECT (SELECT order_id FROM moved) AS order_id, (SELECT count(*) FROM paid) AS paid
""")

FULFIL = sa.text("""
WITH done AS (
    UPDATE orders SET status = 'fulfilled', fulfilled_at = now(), updated_at = now(), fulfillment_claimed_at = NULL
    WHERE id = :o AND status = 'paid'
    RETURNING id)
INSERT INTO transaction_events (transaction_id, kind, source, outcome, summary, created_at)
SELECT :t, 'fulfillment', 'webhook', 'ok', 'order fulfilled', now() FROM done
""")


def deliver(engine: sa.Engine, transaction_id: str, amount: int, currency: str, webhook_id: str) -> None:
    """Apply one success delivery in two autocommitted statements."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(MOVE, {"t": transaction_id, "a": amount, "c": currency, "w": webhook_id}).one()
        if row.paid:
            conn.execute(FULFIL, {"o": row.order_id, "t": transaction_id})

"""Webhook throughput: the real /payment-callback against a bare verify-and-UPDATE endpoint.

Starts gunicorn on PostgreSQL, creates N pending transactions for each side, sends one signed
success webhook per transaction with 32 concurrent clients, and prints both throughputs, the
ratio and p50/p99. Target ratio: at least 0.7.  Usage: python -m bench.webhooks [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import uuid
from functools import partial

import sqlalchemy as sa

from app.gateways.signing import sign
from bench.harness import compare_rounds, fresh_database, gunicorn, median_ratio_line, migrate, per_round, run_load
from config import DEV_WEBHOOK_SECRET


def order_of(tx_id: str) -> str:
    """The id of the order seeded for a transaction."""
    return f"ord_{tx_id}"


def seed_pending(database_url: str, prefix: str, n: int) -> list[str]:
    """N open orders with one pending transaction each; returns the transaction ids."""
    engine = sa.create_engine(database_url)
    ids = [f"txn_{prefix}{i:07d}{uuid.uuid4().hex[:8]}" for i in range(n)]
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO orders (id, status, total, currency, access_code, fulfillment_attempts, created_at, "
            "updated_at) VALUES (:o, 'open', 1999, 'USD', 'CODE', 0, now(), now())"),
            [{"o": order_of(t)} for t in ids])
        conn.execute(sa.text(
            "INSERT INTO transactions (id, order_id, amount, currency, status, gateway, expires_at, needs_review, "
            "refunded_amount, check_attempts, created_at, updated_at) VALUES (:t, :o, 1999, 'USD', 'pending', "
            "'sandbox', now() + interval '30 minutes', false, 0, 0, now(), now())"),
            [{"t": t, "o": order_of(t)} for t in ids])
    engine.dispose()
    return ids


def webhook_jobs(url: str, ids: list[str]):
    def job_for(tx_id):
        body = json.dumps({"type": "payment.status_changed", "timestamp": "2026-01-01T00:00:00Z",
                           "data": {"transaction_id": tx_id, "session_id": "cs_x", "status": "success",
                                    "amount": 1999, "currency": "USD"}}).encode()
        headers = {**sign(DEV_WEBHOOK_SECRET, f"msg_{uuid.uuid4().hex}", body).as_dict(),
                   "Content-Type": "application/json"}
        return lambda s: s.post(url, data=body, headers=headers, timeout=30).status_code == 200

    return [job_for(t) for t in ids]


def count_fulfilled(database_url: str, tx_ids: list[str]) -> int:
    """How many of the orders seeded for these transactions are fulfilled."""
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        count = conn.scalar(sa.text("SELECT count(*) FROM orders WHERE status = 'fulfilled' AND id = ANY(:ids)"),
                            {"ids": [order_of(t) for t in tx_ids]})
    engine.dispose()
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers, the same for both sides")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/real rounds, n webhooks each")
    args = parser.parse_args()
    database_url = fresh_database("checkout_bench_webhooks")
    migrate(database_url)
    env = {"DATABASE_URL": database_url, "PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET}
    real_ids, bare_ids, floor_ids, real_floor_ids = (seed_pending(database_url, p, args.n * args.rounds)
                                                     for p in ("r", "b", "f", "q"))
    warm_ids = seed_pending(database_url, "w", 100)

    def rounds_of(ids: list[str], url: str):
        return per_round(ids, args.n, partial(webhook_jobs, url))

    print(f"webhooks: n={args.n} x {args.rounds} rounds, concurrency={args.concurrency} "
          f"(gunicorn gevent, {args.workers} worker(s), PostgreSQL)")
    with gunicorn("wsgi:app", env, args.workers) as app_url, \
            gunicorn("bench.baseline:app", env, args.workers) as bare_url:
        run_load("warm-up", webhook_jobs(app_url + "/payment-callback", warm_ids[:50]), args.concurrency)
        run_load("warm-up", webhook_jobs(bare_url + "/bare/webhook", warm_ids[50:]), args.concurrency)
        pairs = compare_rounds("POST /payment-callback", rounds_of(real_ids, app_url + "/payment-callback"),
                               "bare verify+UPDATE", rounds_of(bare_ids, bare_url + "/bare/webhook"),
                               args.rounds, args.concurrency)
        print("yardstick, not the target: the same load at the floor endpoint (the contract's statements as "
              "raw SQL, no logic)")
        floor_pairs = compare_rounds(
            "POST /payment-callback", rounds_of(real_floor_ids, app_url + "/payment-callback"),
            "floor: required SQL only", rounds_of(floor_ids, bare_url + "/bare/webhook-floor"),
            args.rounds, args.concurrency)
    real_fulfilled = count_fulfilled(database_url, real_ids + real_floor_ids)
    floor_fulfilled = count_fulfilled(database_url, floor_ids)
    print(f"orders fulfilled: real runs {real_fulfilled} of {len(real_ids) + len(real_floor_ids)}, "
          f"floor runs {floor_fulfilled} of {len(floor_ids)}")
    print(median_ratio_line("webhooks against the bare baseline", pairs, 0.7))
    print(median_ratio_line("webhooks against the floor (yardstick, no target)", floor_pairs, None))


if __name__ == "__main__":
    main()

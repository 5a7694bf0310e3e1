"""Webhook throughput: the real /payment-callback against a bare verify-and-UPDATE endpoint.

Starts gunicorn on PostgreSQL, creates N pending transactions for each side, sends one signed
success webhook per transaction with 32 concurrent clients, and prints both throughputs, the
ratio and p50/p99. Target ratio: at least 0.7.  Usage: python -m bench.webhooks [--n 2000]
[--yardsticks]. With --yardsticks it also measures endpoints that split the gap between the two
(YARDSTICKS below), each against the bare baseline in its own rounds.
"""

from __future__ import annotations

import argparse
import json
import uuid
from functools import partial

import requests
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


def statement_sharing(app_url: str) -> str:
    """How many deliveries' writes shared a statement on the app's side (group commit), from /metrics."""
    sums, counts = {}, {}
    for line in requests.get(app_url + "/metrics", timeout=10).text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            if line.startswith(f"checkout_group_write_items{suffix}{{"):
                writer = line.split('writer="', 1)[1].split('"', 1)[0]
                into[writer] = float(line.rsplit(" ", 1)[1])
    return ", ".join(f"{writer} {sums[writer] / counts[writer]:.1f} items per statement "
                     f"({counts[writer]:.0f} statements)" for writer in sorted(counts) if counts[writer]) or "none"


# Yardsticks, each measured against the bare baseline in its own alternating rounds (--yardsticks):
# (label, which server, path, whether it pays and fulfils the order). None is a target;
# together they say where the time goes.
YARDSTICKS = [
    ("floor: SQL, statement per write", "bare", "/bare/webhook-floor", True),
    ("floor: SQL as 2 statements", "bare", "/bare/webhook-single-statement", True),
    ("app stack: the one UPDATE", "yardsticks", "/bench/update", False),
    ("app stack: 2 statements", "yardsticks", "/bench/single-statement", True),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers, the same for both sides")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/real rounds, n webhooks each")
    parser.add_argument("--yardsticks", action="store_true",
                        help="also measure the yardstick endpoints against the bare baseline (no targets)")
    args = parser.parse_args()
    database_url = fresh_database("checkout_bench_webhooks")
    migrate(database_url)
    env = {"DATABASE_URL": database_url, "PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET}
    per_side = args.n * args.rounds
    real_ids, bare_ids = seed_pending(database_url, "r", per_side), seed_pending(database_url, "b", per_side)
    warm_ids = seed_pending(database_url, "w", 100)

    def rounds_of(ids: list[str], url: str):
        return per_round(ids, args.n, partial(webhook_jobs, url))

    print(f"webhooks: n={args.n} x {args.rounds} rounds, concurrency={args.concurrency} "
          f"(gunicorn gevent, {args.workers} worker(s), PostgreSQL)")
    yardstick_lines, paid_by = [], {"real": real_ids}
    with gunicorn("wsgi:app", env, args.workers) as app_url, \
            gunicorn("bench.baseline:app", env, args.workers) as bare_url:
        run_load("warm-up", webhook_jobs(app_url + "/payment-callback", warm_ids[:50]), args.concurrency)
        run_load("warm-up", webhook_jobs(bare_url + "/bare/webhook", warm_ids[50:]), args.concurrency)
        pairs = compare_rounds("POST /payment-callback", rounds_of(real_ids, app_url + "/payment-callback"),
                               "bare verify+UPDATE", rounds_of(bare_ids, bare_url + "/bare/webhook"),
                               args.rounds, args.concurrency)
        sharing = statement_sharing(app_url)
        if args.yardsticks:
            with gunicorn("bench.app_yardsticks:app", env, args.workers) as yardsticks_url:
                servers = {"bare": bare_url, "yardsticks": yardsticks_url}
                for number, (label, server, path, fulfils) in enumerate(YARDSTICKS):
                    print(f"yardstick, not a target: {label}")
                    ids, again = (seed_pending(database_url, f"{kind}{number}", per_side) for kind in "yb")
                    warm = seed_pending(database_url, f"v{number}", 50)
                    run_load("warm-up", webhook_jobs(servers[server] + path, warm), args.concurrency)
                    yardstick_pairs = compare_rounds(label, rounds_of(ids, servers[server] + path),
                                                     "bare verify+UPDATE", rounds_of(again, bare_url + "/bare/webhook"),
                                                     args.rounds, args.concurrency)
                    yardstick_lines.append(median_ratio_line(f"yardstick {label}", yardstick_pairs, None))
                    if fulfils:
                        paid_by[label] = ids
    for label, ids in paid_by.items():
        print(f"orders fulfilled, {label}: {count_fulfilled(database_url, ids)} of {len(ids)}")
    print(f"group commit, warm-up included: {sharing}")
    print(median_ratio_line("webhooks against the bare baseline", pairs, 0.7))
    for line in yardstick_lines:
        print(line)


if __name__ == "__main__":
    main()

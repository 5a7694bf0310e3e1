"""Benchmark: one reconciliation pass against the design article's loop, on the same data.

Builds its own PostgreSQL database (default ``checkout_bench_reconcile`` on the server of
BENCH_DATABASE_URL, else postgresql+psycopg://postgres@127.0.0.1:5432/test), bulk-loads
``--rows`` transactions (default 1,000,000) of which ``--due`` (default 1,000) are pending and
older than the check window, starts a stub gateway in its own process that answers
``GET /status/<id>`` after ``--latency`` (default 50 ms) with "pending" or, for one in
``--success-every``, "success", then times:

1. ``app.jobs.reconcile.run_pass()`` as the app runs it, the process's first pass (and, for
   information, the same pass again once the due rows are reset: a warm process);
2. after resetting the due rows, the article's loop: load every pending row, and for each
   one older than the window ask the gateway, one call after the other, and commit.

Usage:  .venv/bin/python bench/reconcile.py [--rows 1000000] [--due 1000] [--keep]
Targets (issue 5): the pass in at most 2 s, at least 25 times faster than the loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK_AFTER = 900
PRICE, CURRENCY = 1999, "USD"


def succeeds(tx_id: str, every: int) -> bool:
    """Which due transactions the stub reports paid (the same answer in both processes)."""
    return int(hashlib.sha1(tx_id.encode()).hexdigest(), 16) % every == 0


# -- the stub gateway (runs in its own process so it does not share our GIL) ---------------

def serve_stub(port: int, latency: float, every: int) -> None:
    class StubGateway(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real gateway would
        disable_nagle_algorithm = True  # else headers and body meet the client's delayed ACK: +40 ms

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if not self.path.startswith("/status/"):
                self.send_error(404)
                return
            tx_id = self.path.rsplit("/", 1)[1]
            time.sleep(latency)
            status = "success" if succeeds(tx_id, every) else "pending"
            body = json.dumps({"transaction_id": tx_id, "status": status, "amount": PRICE,
                               "currency": CURRENCY}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    Server(("127.0.0.1", port), StubGateway).serve_forever()


def start_stub(latency: float, every: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve-stub", str(port), "--latency", str(latency),
                             "--success-every", str(every)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("stub gateway did not start")


# -- the data ------------------------------------------------------------------------------

def libpq_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def load(url: str, rows: int, due: int, pending_recent: int) -> tuple[list[str], list[str]]:
    """COPY the orders and transactions in; returns the due transaction ids and their order ids."""
    import psycopg

    rng = random.Random(7)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    shared_orders = [f"ord_{secrets.token_urlsafe(9)}" for _ in range(1000)]
    due_ids = [f"txn_{secrets.token_urlsafe(16)}" for _ in range(due)]
    due_orders = [f"ord_{secrets.token_urlsafe(9)}" for _ in range(due)]
    terminal = ["success"] * 70 + ["failure"] * 15 + ["expired"] * 10 + ["cancelled"] * 5
    order_cols = "id, status, total, currency, access_code, fulfillment_attempts, created_at, updated_at"
    tx_cols = ("id, order_id, amount, currency, status, gateway, gateway_session_id, expires_at, needs_review, "
               "refunded_amount, check_attempts, created_at, updated_at")
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY orders ({order_cols}) FROM STDIN") as copy:
            for oid in shared_orders + due_orders:
                copy.write_row((oid, "open", PRICE, CURRENCY, "BENCHCODE00", 0, now, now))
        with cur.copy(f"COPY transactions ({tx_cols}) FROM STDIN") as copy:
            for i in range(rows):
                if i < due:
                    tx_id, order_id, status = due_ids[i], due_orders[i], "pending"
                    created = now - timedelta(seconds=CHECK_AFTER + 30 + rng.random() * 800)
                elif i < due + pending_recent:
                    tx_id, order_id, status = f"txn_{secrets.token_urlsafe(16)}", rng.choice(shared_orders), "pending"
                    created = now - timedelta(seconds=rng.random() * (CHECK_AFTER - 120))
                else:
                    tx_id, order_id = f"txn_{secrets.token_urlsafe(16)}", rng.choice(shared_orders)
                    status = rng.choice(terminal)
                    created = now - timedelta(seconds=3600 + rng.random() * 90 * 86400)
                copy.write_row((tx_id, order_id, PRICE, CURRENCY, status, "sandbox", f"cs_{tx_id}",
                                created + timedelta(seconds=1800), False, 0, 0, created, created))
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE orders")
        cur.execute("VACUUM ANALYZE transactions")
    return due_ids, due_orders


def reset(url: str, due_ids: list[str], due_orders: list[str]) -> None:
    """Put the due rows back as they were before the pass (bench data setup)."""
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("DELETE FROM transaction_events WHERE transaction_id = ANY(%s)", (due_ids,))
        conn.execute("UPDATE transactions SET status = 'pending', next_check_at = NULL, check_attempts = 0, "
                     "lease_until = NULL, last_checked_at = NULL, needs_review = false, review_reason = NULL "
                     "WHERE id = ANY(%s)", (due_ids,))
        conn.execute("UPDATE orders SET status = 'open', paid_transaction_id = NULL, paid_at = NULL, "
                     "fulfilled_at = NULL, fulfillment_claimed_at = NULL, fulfillment_attempts = 0 "
                     "WHERE id = ANY(%s)", (due_orders,))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE transactions")


def count_success(url: str, due_ids: list[str]) -> int:
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute("SELECT count(*) FROM transactions WHERE id = ANY(%s) AND status = 'success'",
                            (due_ids,)).fetchone()[0]


# -- the two contenders --------------------------------------------------------------------

def article_loop() -> tuple[int, float]:
    """The design article's check_pending_payments, with our adapter and apply_status.

    Returns how many it checked and the seconds spent waiting on the gateway. Like the
    article's code it commits after each check, and (Flask-SQLAlchemy's default) each commit
    expires every loaded row, so the next one is read again: part of the article's cost.
    """
    from flask import current_app
    from sqlalchemy import select

    from app.domain.status import Status
    from app.extensions import db
    from app.gateways.registry import get_gateway
    from app.models import Transaction
    from app.models.clock import utcnow
    from app.services.status_moves import apply_status

    window = current_app.config["PAYMENT_STATUS_CHECK_AFTER"]
    checked, waiting = 0, 0.0
    pending = db.session.scalars(select(Transaction).where(Transaction.status == "pending")).unique().all()
    for transaction in pending:
        if (utcnow() - transaction.created_at).total_seconds() > window:
            asked = time.perf_counter()
            answer = get_gateway().fetch_status(transaction.id)
            waiting += time.perf_counter() - asked
            checked += 1
            if answer is not None and answer.status != Status.PENDING:
                apply_status(transaction.id, answer.status, source="poller")
            db.session.commit()
    return checked, waiting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--pending-recent", type=int, default=20_000,
                        help="pending rows younger than the check window (the loop loads them too)")
    parser.add_argument("--latency", type=float, default=0.05, help="stub gateway latency, seconds")
    parser.add_argument("--success-every", type=int, default=10, help="one due transaction in N is paid")
    parser.add_argument("--database", default="checkout_bench_reconcile")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--serve-stub", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub(args.serve_stub, args.latency, args.success_every)
        return
    if args.due + args.pending_recent > args.rows:
        raise SystemExit("--rows must be at least --due + --pending-recent")

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("APP_ENV", "development")
    from bench.harness import drop_database, fresh_database

    url = fresh_database(args.database)
    stub, stub_url = start_stub(args.latency, args.success_every)
    try:
        from app import create_app
        from app.extensions import db
        from app.jobs.reconcile import run_pass

        app = create_app({
            "SQLALCHEMY_DATABASE_URI": url, "PAYMENT_GATEWAY_URL": stub_url, "SCHEDULER_ENABLED": False,
            "PAYMENT_STATUS_CHECK_AFTER": CHECK_AFTER, "PAYMENT_EXPIRES_AFTER": 1800, "LOG_LEVEL": "WARNING",
        })
        with app.app_context():
            db.create_all()
        started = time.perf_counter()
        due_ids, due_orders = load(url, args.rows, args.due, args.pending_recent)
        print(f"loaded {args.rows:,} transactions ({args.due:,} due, {args.pending_recent:,} pending but recent) "
              f"in {time.perf_counter() - started:.1f}s into {args.database}")
        paid = sum(succeeds(t, args.success_every) for t in due_ids)

        def timed(run):
            """``run()`` in an app context: its result and how long it took."""
            with app.app_context():
                started = time.perf_counter()
                result = run()
                seconds = time.perf_counter() - started
                db.session.remove()
            return result, seconds

        summary, pass_seconds = timed(run_pass)
        print(f"reconcile pass:  {pass_seconds:7.3f}s  {summary.line()}")
        assert summary.due == args.due and summary.checked == args.due and summary.errors == 0, summary
        assert count_success(url, due_ids) == paid

        # The same pass again in the same process, as the scheduler's next one would run: its
        # database and gateway connections are open and its statements compiled. For information;
        # the target is judged on the first pass above.
        reset(url, due_ids, due_orders)
        again, warm_seconds = timed(run_pass)
        print(f"the pass again:  {warm_seconds:7.3f}s  (warm: connections open, statements compiled)")
        assert again.checked == args.due and again.errors == 0 and count_success(url, due_ids) == paid

        reset(url, due_ids, due_orders)
        (checked, waiting), loop_seconds = timed(article_loop)
        print(f"article's loop:  {loop_seconds:7.3f}s  checked={checked} one by one "
              f"({waiting:.1f}s of it waiting on the gateway; {waiting / pass_seconds:.1f}x the pass)")
        assert checked == args.due and count_success(url, due_ids) == paid

        ratio = loop_seconds / pass_seconds
        verdict = "met" if pass_seconds <= 2.0 and ratio >= 25 else "NOT met"
        print(f"ratio: {ratio:.1f}x faster; targets (pass <= 2 s, >= 25x): {verdict}")
        with app.app_context():
            db.engine.dispose()
    finally:
        stub.terminate()
        stub.wait(10)
        if not args.keep:
            drop_database(args.database)


if __name__ == "__main__":
    main()

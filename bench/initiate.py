"""Initiation throughput: the real /initiate-payment against a bare one-INSERT endpoint.

Both call a gateway stub that answers create-session at once (0 ms), both run under gunicorn
on PostgreSQL, 32 concurrent clients, one initiation per order. Target ratio: at least 0.5.
Usage: python -m bench.initiate [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import uuid
from functools import partial

import sqlalchemy as sa
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from bench.harness import (compare_rounds, free_port, fresh_database, gunicorn, median_ratio_line, migrate,
                           per_round, run_load)


@Request.application
def stub_gateway(request: Request) -> Response:
    """create-session answered at once, idempotent on the key like a real gateway."""
    key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
    body = {"session_id": f"cs_{key}", "payment_url": f"http://gateway.invalid/pay/cs_{key}"}
    return Response(json.dumps(body), mimetype="application/json")


def serve_stub_gateway():
    """The 0 ms gateway stub on a free loopback port, in a daemon thread; call .shutdown() to stop."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the stub's request log
    stub = make_server("127.0.0.1", free_port(), stub_gateway, threaded=True)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    return stub


def seed_orders(database_url: str, n: int) -> list[str]:
    ids = [f"ord_b{uuid.uuid4().hex[:20]}" for _ in range(n)]
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO orders (id, status, total, currency, access_code, fulfillment_attempts, created_at, "
            "updated_at) VALUES (:o, 'open', 1999, 'USD', 'CODE', 0, now(), now())"), [{"o": o} for o in ids])
    engine.dispose()
    return ids


def jobs(url: str, order_ids: list[str]):
    def job_for(order_id):
        return lambda s: s.post(url, json={"order_id": order_id}, timeout=30).status_code == 201

    return [job_for(o) for o in order_ids]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/real rounds, n requests each")
    args = parser.parse_args()
    database_url = fresh_database("checkout_bench_initiate")
    migrate(database_url)
    stub = serve_stub_gateway()
    env = {"DATABASE_URL": database_url, "PAYMENT_GATEWAY_URL": f"http://127.0.0.1:{stub.server_port}"}
    real_orders, bare_orders = (seed_orders(database_url, args.n * args.rounds) for _ in range(2))
    warm = seed_orders(database_url, 100)

    def rounds_of(orders: list[str], url: str):
        return per_round(orders, args.n, partial(jobs, url))

    print(f"initiate: n={args.n} x {args.rounds} rounds, concurrency={args.concurrency} "
          "(gunicorn gevent, 1 worker, PostgreSQL, stub 0 ms)")
    try:
        with gunicorn("wsgi:app", env) as app_url, gunicorn("bench.baseline:app", env) as bare_url:
            run_load("warm-up", jobs(app_url + "/initiate-payment", warm[:50]), args.concurrency)
            run_load("warm-up", jobs(bare_url + "/bare/initiate", warm[50:]), args.concurrency)
            pairs = compare_rounds("POST /initiate-payment", rounds_of(real_orders, app_url + "/initiate-payment"),
                                   "bare INSERT + gateway", rounds_of(bare_orders, bare_url + "/bare/initiate"),
                                   args.rounds, args.concurrency)
    finally:
        stub.shutdown()
    print(median_ratio_line("initiate against the bare baseline", pairs, 0.5))


if __name__ == "__main__":
    main()

"""Mixed load on the production shape: two gunicorn workers on PostgreSQL and Redis.

Each simulated shopper places an order, starts the payment, polls its status, and the gateway
(a 0 ms stub) confirms it by webhook, while open Socket.IO clients wait on their pages. The
same number of requests then goes to the bare baseline endpoints under the same gunicorn
settings. Prints throughput, p99 per route, the error count (must be 0) and the ratio.
Usage: python -m bench.load [--shoppers 500] [--sockets 50]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import requests
import socketio

from app.gateways.signing import sign
from bench.harness import fresh_database, gunicorn, migrate
from bench.initiate import seed_orders, serve_stub_gateway
from config import DEV_WEBHOOK_SECRET

REDIS_URL = "redis://127.0.0.1:6379/0"


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)

    def timed(self, route: str, call, ok=lambda r: r.status_code < 400):
        started = time.perf_counter()
        try:
            response = call()
            good = ok(response)
        except requests.RequestException:
            response, good = None, False
        with self.lock:
            self.latencies[route].append(time.perf_counter() - started)
            if not good:
                self.errors[route] += 1
        return response

    def count(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def report(self, seconds: float) -> None:
        for route, values in sorted(self.latencies.items()):
            ordered = sorted(values)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
            print(f"  {route:<34} {len(values):6d} req   p99 {p99:8.2f} ms   errors {self.errors[route]}")
        print(f"  total {self.count()} requests in {seconds:.2f} s = {self.count() / seconds:.1f} req/s, "
              f"errors {sum(self.errors.values())}")


def webhook(tx_id: str) -> tuple[bytes, dict]:
    body = json.dumps({"type": "payment.status_changed", "timestamp": "2026-01-01T00:00:00Z", "data": {
        "transaction_id": tx_id, "session_id": "cs", "status": "success", "amount": 1999, "currency": "USD"}}).encode()
    return body, {**sign(DEV_WEBHOOK_SECRET, f"msg_{uuid.uuid4().hex}", body).as_dict(),
                  "Content-Type": "application/json"}


def shopper(url: str, rec: Recorder, local: threading.local) -> None:
    s = getattr(local, "s", None) or requests.Session()
    local.s = s
    order = rec.timed("POST /api/orders", lambda: s.post(f"{url}/api/orders", json={
        "items": [{"sku": "TEE-BLACK", "quantity": 1}]}, timeout=30))
    if order is None or order.status_code != 201:
        return
    started = rec.timed("POST /initiate-payment", lambda: s.post(f"{url}/initiate-payment", json={
        "order_id": order.json()["order_id"]}, timeout=30))
    if started is None or started.status_code != 201:
        return
    tx_id = started.json()["transaction_id"]
    rec.timed("GET /check-payment-status", lambda: s.get(f"{url}/check-payment-status/{tx_id}", timeout=30))
    body, headers = webhook(tx_id)
    rec.timed("POST /payment-callback", lambda: s.post(f"{url}/payment-callback", data=body, headers=headers,
                                                        timeout=30))
    rec.timed("GET /check-payment-status", lambda: s.get(f"{url}/check-payment-status/{tx_id}", timeout=30),
              ok=lambda r: r.status_code == 200 and r.json()["status"] == "success")


def bare_shopper(url: str, rec: Recorder, local: threading.local, order_id: str) -> None:
    s = getattr(local, "s", None) or requests.Session()
    local.s = s
    started = rec.timed("bare initiate", lambda: s.post(f"{url}/bare/initiate", json={"order_id": order_id},
                                                        timeout=30))
    if started is None or started.status_code != 201:
        return
    tx_id = started.json()["transaction_id"]
    for _ in range(3):
        body, headers = webhook(tx_id)
        rec.timed("bare webhook", lambda: s.post(f"{url}/bare/webhook", data=body, headers=headers, timeout=30))
    body, headers = webhook(tx_id)
    rec.timed("bare webhook", lambda: s.post(f"{url}/bare/webhook", data=body, headers=headers, timeout=30))


def open_sockets(url: str, count: int) -> list[socketio.Client]:
    clients = []
    for _ in range(count):
        client = socketio.Client(reconnection=False)
        client.connect(url, transports=["websocket"], wait_timeout=10)
        client.emit("join", {"transaction_id": "txn_waiting_page"})
        clients.append(client)
    return clients


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shoppers", type=int, default=500)
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    database_url = fresh_database("checkout_bench_load")
    migrate(database_url)
    stub = serve_stub_gateway()
    env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET, "SOCKETIO_CHANNEL": f"load-{uuid.uuid4().hex[:6]}",
           "PAYMENT_GATEWAY_URL": f"http://127.0.0.1:{stub.server_port}"}
    bare_orders = seed_orders(database_url, args.shoppers)
    with gunicorn("wsgi:app", env, workers=2) as app_url, gunicorn("bench.baseline:app", env, workers=2) as bare_url:
        sockets = open_sockets(app_url, args.sockets)
        real, local = Recorder(), threading.local()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda _: shopper(app_url, real, local), range(args.shoppers)))
        real_seconds = time.perf_counter() - started
        connected = sum(1 for c in sockets if c.connected)
        for client in sockets:
            client.disconnect()
        bare, bare_local = Recorder(), threading.local()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda o: bare_shopper(bare_url, bare, bare_local, o), bare_orders))
        bare_seconds = time.perf_counter() - started
    stub.shutdown()
    print(f"load: {args.shoppers} shoppers, {args.concurrency} concurrent, {args.sockets} open sockets "
          f"({connected} still connected at the end); gunicorn gevent x2 workers, PostgreSQL, Redis")
    print("real app:")
    real.report(real_seconds)
    print("bare baseline (same request count: 1 INSERT+gateway, 4 verify+UPDATE per shopper):")
    bare.report(bare_seconds)
    ratio = (real.count() / real_seconds) / (bare.count() / bare_seconds)
    print(f"load: ratio {ratio:.2f} of the bare baseline's throughput; errors {sum(real.errors.values())}")


if __name__ == "__main__":
    main()

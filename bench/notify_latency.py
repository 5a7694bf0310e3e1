"""Webhook-to-browser latency over Socket.IO, against what a 5 s polling page would see.

Starts the app under gunicorn (gevent, one worker) on a fresh PostgreSQL database, seeds N
pending payments, connects N python-socketio clients (websocket transport), each joined to
its own transaction's room, then sends one signed success webhook per transaction and
times, for each, from just before the webhook is sent to the moment its client receives the
`payment_status_update`. In the same run it measures the real GET /check-payment-status
round trip and simulates a page polling every 5 s with a uniformly random phase: it would
see the change at its first poll after the webhook's commit, plus that poll's round trip.

Target: p99 webhook-to-event latency at most 50 ms on loopback.
Usage: python -m bench.notify_latency [--n 200] [--concurrency 1] [--poll-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
import socketio

from app.gateways.signing import sign
from bench.harness import fresh_database, gunicorn, migrate
from bench.webhooks import seed_pending
from config import DEV_WEBHOOK_SECRET


class Watcher:
    """One browser stand-in: a Socket.IO client joined to one transaction's room."""

    def __init__(self, url: str, tx_id: str):
        self.tx_id = tx_id
        self.joined = threading.Event()
        self.final = threading.Event()
        self.received_at: float | None = None
        self.client = socketio.Client(reconnection=False)
        self.client.on("payment_status_update", self._on_update)
        self.client.connect(url, transports=["websocket"], wait_timeout=10)
        self.client.emit("join", {"transaction_id": tx_id})

    def _on_update(self, data: dict) -> None:
        now = time.perf_counter()
        if data.get("transaction_id") != self.tx_id:
            return
        if data.get("status") == "pending":
            self.joined.set()  # the push on join
        elif data.get("status") == "success" and self.received_at is None:
            self.received_at = now
            self.final.set()

    def close(self) -> None:
        self.client.disconnect()


def webhook(tx_id: str) -> tuple[bytes, dict]:
    body = json.dumps({"type": "payment.status_changed", "timestamp": "2026-01-01T00:00:00Z",
                       "data": {"transaction_id": tx_id, "session_id": f"cs_{tx_id}", "status": "success",
                                "amount": 1999, "currency": "USD"}}).encode()
    headers = {**sign(DEV_WEBHOOK_SECRET, f"msg_{uuid.uuid4().hex}", body).as_dict(),
               "Content-Type": "application/json"}
    return body, headers


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def figures(label: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{label:<34} n={len(ms):<5} mean {statistics.fmean(ms):9.2f} ms   p50 {pct(ms, 50):9.2f} ms   "
            f"p99 {pct(ms, 99):9.2f} ms   max {max(ms):9.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="clients, one transaction each")
    parser.add_argument("--concurrency", type=int, default=1, help="webhooks in flight at once")
    parser.add_argument("--poll-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()

    database_url = fresh_database("checkout_bench_notify")
    migrate(database_url)
    ids = seed_pending(database_url, "n", args.n)
    warm = seed_pending(database_url, "w", 20)
    with gunicorn("wsgi:app", {"DATABASE_URL": database_url, "PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET}) as url:
        watchers = [Watcher(url, tx_id) for tx_id in ids]
        missing = [w.tx_id for w in watchers if not w.joined.wait(10)]
        if missing:
            raise SystemExit(f"{len(missing)} clients got no push on join")
        http = requests.Session()
        for tx_id in warm:  # warm the worker's pools and caches
            body, headers = webhook(tx_id)
            http.post(f"{url}/payment-callback", data=body, headers=headers, timeout=30)

        sent_at: dict[str, float] = {}
        answered_at: dict[str, float] = {}
        local = threading.local()

        def send(watcher: Watcher) -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            body, headers = webhook(watcher.tx_id)
            sent_at[watcher.tx_id] = time.perf_counter()
            answer = session.post(f"{url}/payment-callback", data=body, headers=headers, timeout=30)
            answered_at[watcher.tx_id] = time.perf_counter()
            assert answer.status_code == 200, answer.text

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(send, watchers))
        elapsed = time.perf_counter() - started
        lost = [w.tx_id for w in watchers if not w.final.wait(5)]

        # The polling page's cost: its own request's round trip, measured for real.
        poll_rtts = []
        for tx_id in ids:
            before = time.perf_counter()
            assert http.get(f"{url}/check-payment-status/{tx_id}", timeout=10).json()["status"] == "success"
            poll_rtts.append(time.perf_counter() - before)
        for watcher in watchers:
            watcher.close()

    pushed = [w.received_at - sent_at[w.tx_id] for w in watchers if w.received_at is not None]
    rng = random.Random(args.seed)
    polled = []
    for i, tx_id in enumerate(ids):
        # Committed by the time the webhook's answer arrived; the page polls at phase + k*period.
        committed = answered_at[tx_id] - sent_at[tx_id]
        phase = rng.uniform(0, args.poll_seconds)
        wait = (phase - committed) % args.poll_seconds
        polled.append(committed + wait + poll_rtts[i])

    print(f"notify latency: {args.n} Socket.IO clients (websocket), one transaction each; webhooks sent "
          f"{args.concurrency} at a time in {elapsed:.2f} s (gunicorn gevent, 1 worker, PostgreSQL, loopback)")
    print(figures("webhook -> payment_status_update", pushed))
    print(figures("webhook -> 200 answer", [answered_at[t] - sent_at[t] for t in ids]))
    print(figures("GET /check-payment-status RTT", poll_rtts))
    print(figures(f"simulated {args.poll_seconds:g} s polling page", polled))
    print(f"events lost: {len(lost)} of {args.n}; p99 target 50 ms: "
          f"{'met' if pct(pushed, 99) * 1000 <= 50 else 'NOT met'}; the socket page learns the result "
          f"{statistics.fmean(polled) / statistics.fmean(pushed):.0f}x sooner on average")


if __name__ == "__main__":
    main()

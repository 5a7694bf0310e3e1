"""Prometheus metrics: requests, webhook outcomes, status moves, fulfillments, gateway calls.

With several gunicorn workers set PROMETHEUS_MULTIPROC_DIR (prometheus_client's own variable,
read by the library) to an empty directory so /metrics adds up every worker.
"""

from __future__ import annotations

import time

from flask import Flask, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter("checkout_http_requests_total", "HTTP requests answered.", ["method", "endpoint", "status"])
REQUEST_SECONDS = Histogram("checkout_http_request_duration_seconds", "Time to answer a request.", ["endpoint"])
WEBHOOKS = Counter("checkout_webhooks_total", "Webhook deliveries by outcome.", ["outcome"])
STATUS_MOVES = Counter("checkout_status_moves_total", "Status moves asked of apply_status.",
                       ["source", "to_status", "outcome"])
FULFILLMENTS = Counter("checkout_fulfillments_total", "Fulfillment handler runs.", ["result"])
GROUP_WRITE_ITEMS = Histogram("checkout_group_write_items",
                              "Requests' writes sent together in one statement (group commit), by purpose.",
                              ["writer"], buckets=(1, 2, 4, 8, 16, 32, 64))
GATEWAY_SECONDS = Histogram("checkout_gateway_call_duration_seconds", "Gateway API calls, retries included.",
                            ["operation", "result"])


# The state of the books, read from the database at scrape time (so every instance reports the
# same figures: sum or max them, never both). Each is a number to alert on when it stays up.
STATE_GAUGES = {
    "checkout_pending_transactions": "Transactions now pending.",
    "checkout_overdue_pending_transactions":
        "Pending transactions older than PAYMENT_EXPIRES_AFTER and not flagged: each reconciliation pass "
        "expires them, so a count that stays up means reconciliation is not running.",
    "checkout_transactions_needing_review": "Transactions flagged for review and not yet marked reviewed.",
    "checkout_orders_awaiting_fulfillment":
        "Paid orders whose fulfillment handler has not returned (failed or running); not those held "
        "because their payment was refunded in full, which will never be handed to it.",
}


class _StateCollector:
    """Reports STATE_GAUGES from ``read_state()``, a mapping of gauge name to value (-1: unknown)."""

    def __init__(self, read_state):
        self.read_state = read_state

    def collect(self):
        values = self.read_state()
        for name, help_text in STATE_GAUGES.items():
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], values.get(name, -1))
            yield gauge


def render(read_state, multiprocess_dir: str | None) -> tuple[bytes, str]:
    """The exposition text of every metric plus the state gauges."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(_StateCollector(read_state))
    return text + generate_latest(extra), CONTENT_TYPE_LATEST


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def init_app(app: Flask) -> None:
    """Time and count every request by its route pattern (never by raw path)."""

    @app.before_request
    def _start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def _count(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        # Labels come from a closed set: a client's invented method must not mint a new series.
        method = request.method if request.method in KNOWN_METHODS else "other"
        REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        started = g.get("request_started")
        if started is not None:
            REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        return response

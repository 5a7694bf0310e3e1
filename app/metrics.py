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
GATEWAY_SECONDS = Histogram("checkout_gateway_call_duration_seconds", "Gateway API calls, retries included.",
                            ["operation", "result"])


class _PendingCollector:
    """Reports the number of pending transactions, read from the database at scrape time."""

    def __init__(self, count_pending):
        self.count_pending = count_pending

    def collect(self):
        gauge = GaugeMetricFamily("checkout_pending_transactions", "Transactions now pending.")
        gauge.add_metric([], self.count_pending())
        yield gauge


def render(count_pending, multiprocess_dir: str | None) -> tuple[bytes, str]:
    """The exposition text of every metric plus the pending gauge."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(_PendingCollector(count_pending))
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

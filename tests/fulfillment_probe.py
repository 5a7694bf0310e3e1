"""A FULFILLMENT_HANDLER for tests: records each call, and can be told to fail or to take time."""

import threading
import time

_lock = threading.Lock()
calls: list[tuple[str, str]] = []
# Whether the app's database session had a transaction open when the handler was called.
in_transaction: list[bool] = []
failures_left = 0
delay = 0.0


def reset(fail_times: int = 0, takes: float = 0.0) -> None:
    global failures_left, delay
    with _lock:
        calls.clear()
        in_transaction.clear()
        failures_left = fail_times
        delay = takes


def record(order_id: str, transaction_id: str) -> None:
    global failures_left
    from app.extensions import db

    in_transaction.append(db.session().in_transaction())
    with _lock:
        if failures_left > 0:
            failures_left -= 1
            raise RuntimeError("warehouse is down")
    if delay:
        time.sleep(delay)
    with _lock:
        calls.append((order_id, transaction_id))

"""A FULFILLMENT_HANDLER for tests: records each call, and can be told to fail."""

import threading

_lock = threading.Lock()
calls: list[tuple[str, str]] = []
failures_left = 0


def reset(fail_times: int = 0) -> None:
    global failures_left
    with _lock:
        calls.clear()
        failures_left = fail_times


def record(order_id: str, transaction_id: str) -> None:
    global failures_left
    with _lock:
        if failures_left > 0:
            failures_left -= 1
            raise RuntimeError("warehouse is down")
        calls.append((order_id, transaction_id))

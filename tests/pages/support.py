"""Helpers of the page tests: CSRF tokens from rendered forms, orders placed through the pages."""

from __future__ import annotations

import re

from tests.conftest import GATEWAY

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client, path: str = "/") -> str:
    """The hidden csrf_token of the first form on ``path``."""
    html = client.get(path).get_data(as_text=True)
    found = CSRF_FIELD.search(html)
    assert found, f"no csrf_token on {path}"
    return found.group(1)


def order_through_pages(client, items: dict[str, int] | None = None) -> str:
    """Place an order with the catalog's cart form; returns the order id."""
    form = {"csrf_token": csrf_token(client), **{f"qty-{sku}": str(q) for sku, q in (items or {"TEE-BLACK": 1}).items()}}
    response = client.post("/checkout", data=form)
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    location = response.headers["Location"]
    assert location.startswith("/checkout/ord_")
    return location.rsplit("/", 1)[1]


def pay_through_pages(client, gateway_mock, order_id: str) -> str:
    """Press Pay on the checkout page (the gateway mocked); returns the transaction id."""
    from tests.conftest import open_sessions

    if not any(c.url.endswith("/create-session") for c in gateway_mock.registered()):
        open_sessions(gateway_mock)
    response = client.post(f"/checkout/{order_id}/pay", data={"csrf_token": csrf_token(client, f"/checkout/{order_id}")})
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    assert response.headers["Location"].startswith(f"{GATEWAY}/pay/cs_txn_")
    return response.headers["Location"].rsplit("/cs_", 1)[1]


def gateway_status(gateway_mock, tx_id: str, status: str, amount: int, currency: str = "USD") -> None:
    """Make GET /status/<tx_id> answer ``status``."""
    gateway_mock.add("GET", f"{GATEWAY}/status/{tx_id}",
                     json={"transaction_id": tx_id, "status": status, "amount": amount, "currency": currency})


def gateway_expire(gateway_mock, tx_id: str, paid: bool = False, amount: int = 1999) -> None:
    """Make POST /sessions/cs_<tx_id>/expire answer expired (200) or already paid (409).

    When paid, GET /status answers success for ``amount`` (the app asks before believing it).
    """
    gateway_mock.add("POST", f"{GATEWAY}/sessions/cs_{tx_id}/expire",
                     status=409 if paid else 200, json={"status": "success" if paid else "expired"})
    if paid:
        gateway_status(gateway_mock, tx_id, "success", amount)


def calls_to(gateway_mock, suffix: str) -> int:
    return sum(1 for call in gateway_mock.calls if call.request.url.endswith(suffix))

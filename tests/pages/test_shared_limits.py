"""The pages' forms draw on the same per-address budgets as the JSON API they stand beside:
placing orders (POST /checkout and POST /api/orders) and starting payments (Pay and
POST /initiate-payment). Before, the forms had no limit at all."""

from __future__ import annotations

import pytest

from app.extensions import limiter
from tests.conftest import open_sessions, place_order, prepare_database

from .support import csrf_token, order_through_pages, pay_through_pages

ORDER = {"items": [{"sku": "TEE-BLACK", "quantity": 1}]}


@pytest.fixture
def limited(make_app, database_url):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_ORDERS="3/minute", RATELIMIT_INITIATE="3/minute",
                   RATELIMIT_STORAGE_URI="memory://")
    prepare_database(app, database_url)
    limiter.reset()
    yield app
    limiter.reset()


def test_orders_placed_by_form_and_by_api_share_one_budget(limited):
    client = limited.test_client()
    order_through_pages(client)
    assert client.post("/api/orders", json=ORDER).status_code == 201
    order_through_pages(client)
    refused = client.post("/checkout", data={"csrf_token": csrf_token(client), "qty-TEE-BLACK": "1"})
    assert refused.status_code == 429
    assert refused.mimetype == "text/html" and "Too many requests" in refused.get_data(as_text=True)
    assert "Retry-After" in refused.headers
    assert client.post("/api/orders", json=ORDER).status_code == 429
    assert client.get("/").status_code == 200  # the catalog itself is not limited


def test_payments_started_by_pay_and_by_api_share_one_budget(limited, gateway):
    open_sessions(gateway)
    client = limited.test_client()
    orders = [place_order(client)["order_id"] for _ in range(3)]  # the whole order budget
    pay_through_pages(client, gateway, orders[0])
    assert client.post("/initiate-payment", json={"order_id": orders[1]}).status_code == 201
    pay_through_pages(client, gateway, orders[2])
    again = client.post(f"/checkout/{orders[0]}/pay", data={"csrf_token": csrf_token(client, f"/checkout/{orders[0]}")})
    assert again.status_code == 429 and "Too many requests" in again.get_data(as_text=True)
    assert client.post("/initiate-payment", json={"order_id": orders[1]}).status_code == 429
    creates = [c for c in gateway.calls if c.request.url.endswith("/create-session")]
    assert len(creates) == 3  # the refused ones never reached the gateway

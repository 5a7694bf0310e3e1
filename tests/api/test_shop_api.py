"""Contract section 2: products and orders."""

import re

import pytest

from tests.conftest import place_order


def test_products_list_the_demo_catalog(client):
    response = client.get("/api/products")
    assert response.status_code == 200
    products = response.get_json()
    assert {"sku", "name", "price", "currency"} <= set(products[0])
    assert all(isinstance(p["price"], int) for p in products)
    assert "TEE-BLACK" in {p["sku"] for p in products}


def test_order_total_comes_from_the_catalog(client):
    order = place_order(client, [("TEE-BLACK", 2), ("MUG-ENAMEL", 1)])
    assert order["status"] == "open"
    assert order["total"] == 2 * 1999 + 1250
    assert order["currency"] == "USD"
    assert {i["sku"]: i["quantity"] for i in order["items"]} == {"TEE-BLACK": 2, "MUG-ENAMEL": 1}


def test_money_is_json_integers_with_upper_case_currency_codes(client):
    """Contract preamble: money is an integer of minor units with an upper-case ISO 4217 code. The
    JSON type is checked (1999.0 would compare equal to 1999)."""
    def is_code(value):
        return isinstance(value, str) and re.fullmatch(r"[A-Z]{3}", value)

    products = client.get("/api/products").get_json()
    assert products and all(type(p["price"]) is int and is_code(p["currency"]) for p in products), products
    order = place_order(client, [("TEE-BLACK", 2), ("MUG-ENAMEL", 1)])
    assert type(order["total"]) is int and is_code(order["currency"]), order
    assert all(type(line[k]) is int for line in order["items"] for k in ("quantity", "unit_price", "line_total"))
    read = client.get(f"/api/orders/{order['order_id']}").get_json()
    assert type(read["total"]) is int and read["total"] == 2 * 1999 + 1250 and is_code(read["currency"]), read
    assert isinstance(read["order_id"], str) and read["order_id"] == order["order_id"]


def test_a_quantity_of_99_is_accepted(client):
    """Section 2: quantity is an int 1..99, both ends included (0 and 100 are refused below)."""
    order = place_order(client, [("TEE-BLACK", 99), ("MUG-ENAMEL", 1)])
    assert {i["sku"]: i["quantity"] for i in order["items"]} == {"TEE-BLACK": 99, "MUG-ENAMEL": 1}
    assert order["total"] == 99 * 1999 + 1250


def test_order_can_be_read_back(client):
    order = place_order(client)
    response = client.get(f"/api/orders/{order['order_id']}")
    assert response.status_code == 200
    body = response.get_json()
    assert body == {"order_id": order["order_id"], "status": "open", "total": 1999, "currency": "USD",
                    "paid_transaction_id": None, "fulfilled_at": None}


def test_unknown_order_is_404(client):
    response = client.get("/api/orders/ord_nope")
    assert response.status_code == 404
    assert response.get_json()["error"] == "order_not_found"


@pytest.mark.parametrize("body", [
    {"items": []},
    {"items": [{"sku": "NOPE", "quantity": 1}]},
    {"items": [{"sku": "TEE-BLACK", "quantity": 0}]},
    {"items": [{"sku": "TEE-BLACK", "quantity": 100}]},
    {"items": [{"sku": "TEE-BLACK", "quantity": "2"}]},
    {"items": [{"sku": "TEE-BLACK", "quantity": 1.5}]},
    {"items": [{"sku": "TEE-BLACK", "quantity": True}]},
    {"items": [{"sku": 12, "quantity": 1}]},
    {"items": [{"sku": "TEE-BLACK", "quantity": 60}, {"sku": "TEE-BLACK", "quantity": 60}]},
    {"items": "TEE-BLACK"},
    {},
    [],
])
def test_bad_orders_are_422_with_the_error_shape(client, body):
    response = client.post("/api/orders", json=body)
    assert response.status_code == 422
    data = response.get_json()
    assert isinstance(data["error"], str) and isinstance(data["message"], str)


def test_mixed_currencies_are_refused(client, app):
    from app.extensions import db
    from app.models import Product

    with app.app_context():
        db.session.add(Product(sku="EUR-THING", name="Euro thing", price=500, currency="EUR"))
        db.session.commit()
    response = client.post("/api/orders", json={"items": [{"sku": "TEE-BLACK", "quantity": 1},
                                                          {"sku": "EUR-THING", "quantity": 1}]})
    assert response.status_code == 422
    assert response.get_json()["error"] == "mixed_currencies"


def test_an_order_past_the_money_columns_range_is_refused(client, app):
    from app.extensions import db
    from app.models import Product

    with app.app_context():
        db.session.add(Product(sku="CAR", name="A car", price=30_000_000, currency="USD"))
        db.session.commit()
    for items in ([{"sku": "CAR", "quantity": 99}], [{"sku": "CAR", "quantity": 60}, {"sku": "CAR", "quantity": 39}],
                  [{"sku": "CAR", "quantity": 72}]):
        response = client.post("/api/orders", json={"items": items})
        assert response.status_code == 422, items
        assert response.get_json()["error"] == "order_too_large"
    assert client.post("/api/orders", json={"items": [{"sku": "CAR", "quantity": 71}]}).status_code == 201

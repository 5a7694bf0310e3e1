"""The shop's pages: the catalog and its cart form, the checkout page."""

from __future__ import annotations

import re

import pytest

from app.extensions import db
from app.models import Order

from .support import csrf_token, order_through_pages, pay_through_pages


def test_catalog_lists_the_products_in_a_cart_form(client):
    html = client.get("/").get_data(as_text=True)
    assert 'name="csrf_token"' in html
    assert "Black organic cotton tee" in html and "19.99 USD" in html
    assert re.search(r'<label for="qty-TEE-BLACK">', html) and 'id="qty-TEE-BLACK"' in html
    assert "js/cart.js" in html


def test_the_cart_places_an_order_with_catalog_prices(app, client):
    order_id = order_through_pages(client, {"TEE-BLACK": 2, "MUG-ENAMEL": 1, "CAP-WOOL": 0})
    with app.app_context():
        order = db.session.get(Order, order_id)
        assert order.total == 2 * 1999 + 1250 and order.currency == "USD"
        assert sorted((i.sku, i.quantity) for i in order.items) == [("MUG-ENAMEL", 1), ("TEE-BLACK", 2)]


@pytest.mark.parametrize("quantities, message", [
    ({}, "Choose at least one item."),
    ({"TEE-BLACK": "0"}, "Choose at least one item."),
    ({"TEE-BLACK": "-1"}, "Quantities are whole numbers from 0 to 99."),
    ({"TEE-BLACK": "1.5"}, "Quantities are whole numbers from 0 to 99."),
    ({"TEE-BLACK": "100"}, "Quantities are whole numbers from 0 to 99."),
    ({"TEE-BLACK": "²"}, "Quantities are whole numbers from 0 to 99."),  # isdigit() but not int()
    ({"TEE-BLACK": "٣"}, "Quantities are whole numbers from 0 to 99."),
    ({"TEE-BLACK": "9" * 5000}, "Quantities are whole numbers from 0 to 99."),  # past int()'s digit limit
    ({"NOPE": "1"}, "Unknown product: NOPE."),
])
def test_a_bad_cart_is_shown_again_with_the_problem(client, quantities, message):
    form = {"csrf_token": csrf_token(client), **{f"qty-{k}": v for k, v in quantities.items()}}
    response = client.post("/checkout", data=form)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in html and 'role="alert"' in html
    assert "Black organic cotton tee" in html  # the catalog again, values kept


def test_a_cart_without_csrf_token_is_refused(app, client):
    response = client.post("/checkout", data={"qty-TEE-BLACK": "1"})
    assert response.status_code == 400
    assert "<html" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.query(Order).count() == 0


def test_checkout_page_shows_the_summary_pay_and_the_access_code(app, client):
    order_id = order_through_pages(client, {"SOCKS-3": 3})
    html = client.get(f"/checkout/{order_id}").get_data(as_text=True)
    with app.app_context():
        code = db.session.get(Order, order_id).access_code
    assert "Merino socks, three pairs" in html and "72.00 USD" in html
    assert f'action="/checkout/{order_id}/pay"' in html and 'name="csrf_token"' in html
    assert f"{code[:5]}-{code[5:]}" in html


def test_another_browser_sees_the_order_but_not_its_access_code(app, client):
    order_id = order_through_pages(client)
    with app.app_context():
        code = db.session.get(Order, order_id).access_code
    stranger = app.test_client()
    html = stranger.get(f"/checkout/{order_id}").get_data(as_text=True)
    assert "Black organic cotton tee" in html
    assert code not in html and f"{code[:5]}-{code[5:]}" not in html


def test_another_browser_gets_no_link_to_the_payment_or_its_cancel_button(app, client, gateway):
    order_id = order_through_pages(client)
    tx_id = pay_through_pages(client, gateway, order_id)
    assert f"/payment/{tx_id}" in client.get(f"/checkout/{order_id}").get_data(as_text=True)
    stranger = app.test_client().get(f"/checkout/{order_id}").get_data(as_text=True)
    assert f"/payment/{tx_id}" not in stranger


def test_unknown_order_is_an_html_404(client):
    response = client.get("/checkout/ord_missing")
    assert response.status_code == 404
    assert "Page not found" in response.get_data(as_text=True)


def test_json_routes_still_answer_json(client):
    assert client.get("/api/products").status_code == 200
    missing = client.get("/api/orders/ord_missing")
    assert missing.status_code == 404 and missing.get_json()["error"] == "order_not_found"

"""The shopper's pages of the shop: the catalog with its cart, and the checkout page.

The cart is a plain form (one quantity per product) that works without JavaScript; a script
only keeps a running total. Orders placed in this browser are remembered in the signed session
cookie, so their access code is shown here and nowhere else.
"""

from __future__ import annotations

from flask import redirect, render_template, request, session, url_for

from app.domain.money import EXPONENTS, format_minor
from app.extensions import orders_limit
from app.services import catalog, checkout, orders
from app.services.errors import ServiceError
from app.shop import bp

REMEMBERED_ORDERS = 20
QUANTITY_PREFIX = "qty-"


@bp.app_template_filter("money")
def money_filter(amount: int, currency: str) -> str:
    """``{{ 1999|money("USD") }}`` → ``19.99 USD`` (integers only)."""
    return format_minor(amount, currency)


def remember_order(order_id: str) -> None:
    """Note in the session that this browser placed (or proved it holds) the order."""
    held = [o for o in session.get("orders", []) if o != order_id]
    session["orders"] = (held + [order_id])[-REMEMBERED_ORDERS:]


def holds_order(order_id: str) -> bool:
    """True when this browser placed the order or looked it up with its access code."""
    return order_id in session.get("orders", [])


def _catalog_page(error: str | None = None, quantities: dict | None = None, status: int = 200):
    products = catalog.list_products()
    return render_template(
        "shop/catalog.html", products=products, error=error, quantities=quantities or {},
        exponents={p.currency: EXPONENTS.get(p.currency, 2) for p in products},
    ), status


def _cart_lines() -> tuple[list[tuple[str, int]], dict, str | None]:
    """The (sku, quantity) lines of the cart form, the raw values, and a problem if any."""
    lines, raw, problem = [], {}, None
    for key, value in request.form.items():
        if not key.startswith(QUANTITY_PREFIX):
            continue
        sku, text = key[len(QUANTITY_PREFIX):], value.strip()
        raw[sku] = text
        if text in ("", "0"):
            continue
        if not (text.isascii() and text.isdigit() and len(text) <= 2) or int(text) < 1:
            problem = "Quantities are whole numbers from 0 to 99."
            continue
        lines.append((sku, int(text)))
    if problem is None and not lines:
        problem = "Choose at least one item."
    return lines, raw, problem


@bp.get("/")
def catalog_page():
    return _catalog_page()


@bp.post("/checkout")
@orders_limit
def place_order():
    lines, raw, problem = _cart_lines()
    if problem:
        return _catalog_page(problem, raw, 422)
    try:
        order = orders.place_order(lines)
    except ServiceError as exc:
        return _catalog_page(exc.message, raw, exc.status)
    remember_order(order.id)
    return redirect(url_for("shop.checkout_page", order_id=order.id), 303)


@bp.get("/checkout/<order_id>")
def checkout_page(order_id: str):
    order = orders.get_order(order_id)  # 404 page when unknown
    held = holds_order(order.id)
    # Links to the order's payments (where Cancel lives) only for the browser that holds the
    # order; anyone else who has the order number is sent to the lookup, which asks for the code.
    return render_template(
        "shop/checkout.html", order=order, held=held,
        in_progress=checkout.payment_in_progress(order.id) if held else None,
        access_code=checkout.display_access_code(order.access_code) if held else None,
    )

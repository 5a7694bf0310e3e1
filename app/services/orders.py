"""Placing and reading orders. Prices always come from the catalog, never the client."""

from __future__ import annotations

from sqlalchemy import select

from app.domain.money import MAX_MINOR_UNITS, format_minor
from app.extensions import db
from app.models import Order, OrderItem, Product
from app.models.clock import find_by_id
from app.services.errors import ServiceError


def place_order(lines: list[tuple[str, int]]) -> Order:
    """Create an open order from ``(sku, quantity)`` lines; 422 on unknown SKUs or mixed currencies."""
    if not lines:
        raise ServiceError(422, "validation_error", "An order needs at least one item.")
    quantities: dict[str, int] = {}
    for sku, quantity in lines:
        quantities[sku] = quantities.get(sku, 0) + quantity
    products = {
        p.sku: p
        for p in db.session.scalars(select(Product).where(Product.sku.in_(quantities), Product.active.is_(True)))
    }
    unknown = sorted(set(quantities) - set(products))
    if unknown:
        raise ServiceError(422, "unknown_sku", f"Unknown product: {', '.join(unknown)}.", {"skus": unknown})
    too_many = sorted(sku for sku, qty in quantities.items() if qty > 99)
    if too_many:
        raise ServiceError(422, "validation_error", f"At most 99 of one product: {', '.join(too_many)}.")
    currencies = {products[sku].currency for sku in quantities}
    if len(currencies) > 1:
        raise ServiceError(422, "mixed_currencies", "All items of an order must share one currency.")
    order = Order(currency=currencies.pop(), total=0)
    for sku, quantity in quantities.items():
        product = products[sku]
        line_total = product.price * quantity
        order.items.append(
            OrderItem(sku=sku, name=product.name, unit_price=product.price, quantity=quantity, line_total=line_total)
        )
        order.total += line_total
    if order.total > MAX_MINOR_UNITS:  # the money columns are 32-bit; a line is never more than its order
        raise ServiceError(422, "order_too_large",
                           f"An order may total at most {format_minor(MAX_MINOR_UNITS, order.currency)}.")
    db.session.add(order)
    db.session.commit()
    return order


def get_order(order_id: str) -> Order:
    """The order, or a 404 ServiceError."""
    order = find_by_id(Order, order_id)
    if order is None:
        raise ServiceError(404, "order_not_found", "No order has that id.")
    return order

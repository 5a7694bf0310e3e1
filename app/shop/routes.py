"""Routes of the shop blueprint: thin, each calls one service."""

from flask import jsonify

from app.extensions import csrf, orders_limit
from app.http import json_body
from app.services import catalog, orders
from app.shop import bp
from app.shop.pages import remember_order
from app.shop.schemas import OrderRequest


@bp.get("/api/products")
def api_products():
    return jsonify([p.to_dict() for p in catalog.list_products()])


@bp.post("/api/orders")
@csrf.exempt  # JSON only (415 otherwise), which a cross-site form cannot send
@orders_limit
def api_create_order():
    body = json_body(OrderRequest)
    order = orders.place_order([(line.sku, line.quantity) for line in body.items])
    data = order.to_dict(with_items=True)
    data["access_code"] = order.access_code
    remember_order(order.id)  # a browser that places an order by the API holds it, as by the pages
    return jsonify(data), 201


@bp.get("/api/orders/<order_id>")
def api_get_order(order_id: str):
    return jsonify(orders.get_order(order_id).to_dict())

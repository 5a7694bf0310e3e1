"""The product catalog and the demo data."""

from __future__ import annotations

from sqlalchemy import select

from app.extensions import db
from app.models import Product

DEMO_PRODUCTS = [
    ("TEE-BLACK", "Black organic cotton tee", 1999, "USD"),
    ("MUG-ENAMEL", "Enamel camp mug", 1250, "USD"),
    ("CAP-WOOL", "Wool baseball cap", 2900, "USD"),
    ("SOCKS-3", "Merino socks, three pairs", 2400, "USD"),
    ("TOTE-CANVAS", "Heavy canvas tote bag", 1800, "USD"),
    ("POSTER-A2", "Risograph poster, A2", 3500, "USD"),
]


def list_products() -> list[Product]:
    """Active products, in catalog order."""
    return list(db.session.scalars(select(Product).where(Product.active.is_(True)).order_by(Product.id)))


def seed_demo_catalog() -> int:
    """Insert the demo products that are missing; returns how many were added. Idempotent."""
    existing = set(db.session.scalars(select(Product.sku)))
    added = 0
    for sku, name, price, currency in DEMO_PRODUCTS:
        if sku not in existing:
            db.session.add(Product(sku=sku, name=name, price=price, currency=currency))
            added += 1
    db.session.commit()
    return added

"""Orders and their lines. An order is paid once and fulfilled once."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.clock import iso, public_id, utcnow

# Crockford-style alphabet: no I, L, O, U, so a code read aloud is typed right.
_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_access_code() -> str:
    """A 10-character code (50 random bits) only the shopper who placed the order holds."""
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(10))


class OrderStatus(StrEnum):
    OPEN = "open"
    PAID = "paid"
    FULFILLED = "fulfilled"


class Order(db.Model):
    __tablename__ = "orders"
    __table_args__ = (
        # reconciliation's look for paid orders to hand to the handler again, in its order
        Index("ix_orders_awaiting_fulfillment", "fulfillment_attempts", "paid_at",
              postgresql_where=text("status = 'paid'"), sqlite_where=text("status = 'paid'")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: public_id("ord", 12))
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.OPEN.value)
    total: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    access_code: Mapped[str] = mapped_column(String(16), default=new_access_code)
    paid_transaction_id: Mapped[str | None] = mapped_column(String(40))
    paid_at: Mapped[datetime | None]
    fulfilled_at: Mapped[datetime | None]
    # A fulfillment claim: set while a process runs the handler, so no other runs it at once.
    fulfillment_claimed_at: Mapped[datetime | None]
    fulfillment_attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    items: Mapped[list[OrderItem]] = relationship(
        back_populates="order", cascade="all, delete-orphan", order_by="OrderItem.id"
    )

    def to_dict(self, with_items: bool = False) -> dict:
        data = {
            "order_id": self.id,
            "status": self.status,
            "total": self.total,
            "currency": self.currency,
            "paid_transaction_id": self.paid_transaction_id,
            "fulfilled_at": iso(self.fulfilled_at),
        }
        if with_items:
            data["items"] = [item.to_dict() for item in self.items]
        return data


class OrderItem(db.Model):
    __tablename__ = "order_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    unit_price: Mapped[int]
    quantity: Mapped[int]
    line_total: Mapped[int]

    order: Mapped[Order] = relationship(back_populates="items")

    def to_dict(self) -> dict:
        return {
            "sku": self.sku,
            "name": self.name,
            "quantity": self.quantity,
            "unit_price": self.unit_price,
            "line_total": self.line_total,
        }

"""Payment transactions, their audit timeline, and refunds."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import db
from app.models.clock import iso, public_id, utcnow


class Transaction(db.Model):
    __tablename__ = "transactions"
    __table_args__ = (
        Index("ix_transactions_status_created_at", "status", "created_at"),  # the poller's due scan
        Index("ix_transactions_created_at_id", "created_at", "id"),  # ops keyset pagination
        Index("ix_transactions_needs_review", "needs_review"),  # ops "flagged" filter
        # reconciliation's look for refunds reported before a success that came in since
        Index("ix_transactions_refund_reported", "refund_reported",
              postgresql_where=text("refund_reported IS NOT NULL"), sqlite_where=text("refund_reported IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: public_id("txn"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    amount: Mapped[int]  # minor units, always copied from the order
    currency: Mapped[str] = mapped_column(String(3))
    # Written only by app.services.payments.apply_status (and the initial insert).
    status: Mapped[str] = mapped_column(String(24), default="pending")
    gateway: Mapped[str] = mapped_column(String(32))
    gateway_session_id: Mapped[str | None] = mapped_column(String(128), index=True)
    payment_url: Mapped[str | None] = mapped_column(String(2000))
    expires_at: Mapped[datetime]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    needs_review: Mapped[bool] = mapped_column(default=False)
    review_reason: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None]
    reviewed_by: Mapped[str | None] = mapped_column(String(254))
    # When a review reason was last raised (again), so Mark reviewed clears only the flag it saw.
    flagged_at: Mapped[datetime | None]
    refunded_amount: Mapped[int] = mapped_column(default=0)
    # Set just before we ask the gateway to expire the session on someone's request (the
    # shopper's or ops' cancel): the gateway's "expired" that follows is then recorded as this.
    closing_as: Mapped[str | None] = mapped_column(String(24))
    # A refund status the gateway reported before this payment's success was applied (its
    # deliveries came out of order): the success, when it comes, is followed by this refund.
    refund_reported: Mapped[str | None] = mapped_column(String(24))
    # Reconciliation bookkeeping: when to ask the gateway next, how often we asked, who holds it.
    next_check_at: Mapped[datetime | None]
    check_attempts: Mapped[int] = mapped_column(default=0)
    lease_until: Mapped[datetime | None]
    last_checked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    order = relationship("Order", foreign_keys=[order_id])
    events: Mapped[list[TransactionEvent]] = relationship(
        back_populates="transaction", order_by="TransactionEvent.id", cascade="all, delete-orphan"
    )

    def to_status_dict(self) -> dict:
        """The JSON of GET /check-payment-status (contract section 3)."""
        return {
            "transaction_id": self.id,
            "order_id": self.order_id,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "updated_at": iso(self.updated_at),
        }


class TransactionEvent(db.Model):
    """One line of a transaction's timeline: what happened, from where, with what outcome."""

    __tablename__ = "transaction_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # created, gateway, status, webhook, poll, fulfillment, ops, flag
    source: Mapped[str] = mapped_column(String(16))  # api, webhook, poller, ops, shopper, system
    outcome: Mapped[str | None] = mapped_column(String(16))  # applied, refused, noop, ok, received, error
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str | None] = mapped_column(String(24))
    summary: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict | None] = mapped_column(JSON)
    actor: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    transaction: Mapped[Transaction] = relationship(back_populates="events")

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "source": self.source,
            "outcome": self.outcome,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "summary": self.summary,
            "detail": self.detail,
            "actor": self.actor,
            "at": iso(self.created_at),
        }


class Refund(db.Model):
    __tablename__ = "refunds"
    __table_args__ = (Index("uq_refunds_request_key", "request_key", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: public_id("rf", 12))
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"), index=True)
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="requested")  # requested, succeeded, failed
    gateway_refund_id: Mapped[str | None] = mapped_column(String(128))
    actor: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When its transaction was flagged because the gateway's answer to it is not known.
    flagged_at: Mapped[datetime | None]
    retried_at: Mapped[datetime | None]  # when ops last sent it again (Retry)
    # The one-time key of the form that asked for it: the same form sent twice refunds once.
    request_key: Mapped[str | None] = mapped_column(String(64))

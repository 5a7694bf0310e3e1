"""The sandbox gateway's own tables (independent from the app's database).

Money columns are integer minor units. Card data is limited to the last four digits.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.domain.status import Status

# Payment statuses as the protocol reports them: the contract's one list (section 3).
PENDING, SUCCESS, FAILURE = Status.PENDING.value, Status.SUCCESS.value, Status.FAILURE.value
EXPIRED = Status.EXPIRED.value
CANCELLED, REFUNDED, PARTIALLY_REFUNDED = Status.CANCELLED.value, Status.REFUNDED.value, Status.PARTIALLY_REFUNDED.value
PAID_STATUSES = (SUCCESS, PARTIALLY_REFUNDED, REFUNDED)

# Steps of a pending session on the hosted page.
STEP_CONFIRM = "confirm"  # 4000 0000 0000 3220: waiting for Complete / Fail
STEP_PROCESSING = "processing"  # 4000 0000 0000 0077: accepted, settles later

# Delivery states.
QUEUED = "queued"  # waiting for its next attempt
HELD = "held"  # released once the delivery it follows is finished
DELIVERED = "delivered"
GAVE_UP = "failed"  # every attempt failed
DROPPED = "dropped"  # never sent (fault knob)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, returns aware UTC, so SQLite and PostgreSQL behave alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        """Aware datetime in, naive UTC to the database."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        """Naive UTC from the database, aware UTC out."""
        return None if value is None else value.replace(tzinfo=UTC)


class SandboxBase(DeclarativeBase):
    """Declarative base of the sandbox storage only."""


class PaymentSession(SandboxBase):
    """One checkout session created by ``POST /create-session``."""

    __tablename__ = "sandbox_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), unique=True)
    transaction_id: Mapped[str] = mapped_column(String(255), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    merchant_name: Mapped[str] = mapped_column(String(100))
    callback_url: Mapped[str] = mapped_column(String(2048))
    return_url: Mapped[str] = mapped_column(String(2048))
    cancel_url: Mapped[str] = mapped_column(String(2048))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(32), default=PENDING)
    step: Mapped[str | None] = mapped_column(String(32), default=None)
    step_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    settle_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    card_last4: Mapped[str | None] = mapped_column(String(4), default=None)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_sandbox_sessions_status", "status", "step"),)


class Refund(SandboxBase):
    """One refund against a paid session."""

    __tablename__ = "sandbox_refunds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    refund_id: Mapped[str] = mapped_column(String(64), unique=True)
    transaction_id: Mapped[str] = mapped_column(String(255), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(SandboxBase):
    """One webhook delivery: persisted, so a restart of the sandbox loses none.

    A redelivery of the same event (duplicate fault) is a second row with the same
    ``webhook_id``; ``after_delivery_id`` holds a row back until that delivery finishes.
    """

    __tablename__ = "sandbox_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(64), index=True)
    transaction_id: Mapped[str] = mapped_column(String(255), index=True)
    event_status: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    note: Mapped[str | None] = mapped_column(String(200), default=None)
    after_delivery_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_answer: Mapped[str | None] = mapped_column(String(500), default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_sandbox_deliveries_due", "state", "next_attempt_at"),)

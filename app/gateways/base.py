"""The interface every gateway adapter offers, and the domain types it speaks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, Protocol

from app.domain.status import Status


class GatewayError(Exception):
    """The gateway could not be reached or answered nonsense, after any retries."""


class GatewayUnavailable(GatewayError):
    """Connection errors, timeouts, a 429, 500, 502, 503 or 504 that outlasted the retries, or any
    other answer that is not a 4xx (another 5xx, a redirect, a 2xx the protocol does not name):
    whatever the call asked may have been done."""


class GatewayNoAnswer(GatewayUnavailable):
    """No answer at all (connection errors, timeouts): the gateway may have acted on the call."""


class GatewayRejected(GatewayError):
    """The gateway answered with a definite refusal (a 4xx other than 429); retrying the same call
    will not help."""

    def __init__(self, message: str, status_code: int, code: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class WebhookRejected(Exception):
    """A webhook failed verification or parsing; ``reason`` is a snake_case code."""

    def __init__(self, reason: str, message: str, webhook_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.webhook_id = webhook_id


@dataclass(frozen=True)
class SessionRequest:
    transaction_id: str
    amount: int
    currency: str
    callback_url: str
    return_url: str
    cancel_url: str
    expires_at: datetime


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    payment_url: str


@dataclass(frozen=True)
class GatewayStatus:
    """What the gateway says of a payment right now."""

    transaction_id: str
    status: Status
    amount: int
    currency: str


@dataclass(frozen=True)
class RefundResult:
    """The gateway's answer to a refund: its id and the refund's status in the gateway's word."""

    refund_id: str
    status: str | None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def failed(self) -> bool:
        """The gateway says no money moved. Anything but this and ``succeeded`` (pending, a
        status the contract does not name, none) leaves the refund's outcome open."""
        return self.status in REFUND_FAILED


REFUND_FAILED = frozenset({"failed", "canceled", "cancelled"})


@dataclass(frozen=True)
class VerifiedEvent:
    """A webhook whose signature checked out, in domain terms."""

    webhook_id: str
    event_type: str
    transaction_id: str | None
    session_id: str | None
    status: Status | None
    amount: int | None
    currency: str | None
    payload: dict = field(default_factory=dict)


class PaymentGateway(Protocol):
    """What the payment services need from a gateway."""

    name: str

    def create_session(self, request: SessionRequest) -> CreatedSession:
        """Open a hosted payment session; idempotent on the transaction id."""

    def fetch_status(self, transaction_id: str) -> GatewayStatus | None:
        """The gateway's view of the payment, or None when it does not know it."""

    def expire_session(self, session_id: str) -> Status:
        """Close the session: EXPIRED, or SUCCESS when the shopper already paid."""

    def refund(self, transaction_id: str, amount: int, idempotency_key: str) -> RefundResult:
        """Refund ``amount`` minor units of a captured payment."""

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        """Verify and parse a webhook delivery; raises WebhookRejected."""

"""The wire side of the gateway protocol (contract section 4): request parsing, answers, errors.

Parsing never trusts the body: every field is type-checked so bad input becomes a 4xx
``SandboxError`` and never a 500.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from app.sandbox.models import PaymentSession

MAX_AMOUNT = 10**12
MAX_KEY_LENGTH = 255
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class SandboxError(Exception):
    """A refusal answered as ``{"error": code, "message": message, **extra}``."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def as_json(self) -> dict:
        """The JSON body of the answer."""
        return {"error": self.code, "message": self.message, **self.extra}


def invalid(message: str) -> SandboxError:
    """A 422 ``invalid_request`` naming what is wrong."""
    return SandboxError(422, "invalid_request", message)


def require_object(body) -> dict:
    """The parsed JSON body, which must be an object."""
    if not isinstance(body, dict):
        raise SandboxError(400, "invalid_json", "The request body must be a JSON object.")
    return body


def _text(body: dict, name: str, *, max_length: int = 255) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"{name} must be a non-empty string.")
    if len(value) > max_length:
        raise invalid(f"{name} must be at most {max_length} characters.")
    return value


def parse_amount(body: dict) -> int:
    """``amount`` as a positive integer of minor units (no floats, no booleans)."""
    value = body.get("amount")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("amount must be an integer number of minor units.")
    if not 0 < value <= MAX_AMOUNT:
        raise invalid(f"amount must be between 1 and {MAX_AMOUNT}.")
    return value


def _url(body: dict, name: str) -> str:
    value = _text(body, name, max_length=2048)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid(f"{name} must be an absolute http(s) URL.")
    return value


def parse_timestamp(value) -> datetime:
    """An ISO 8601 timestamp with a UTC offset, as aware UTC."""
    if not isinstance(value, str) or len(value) > 64:
        raise invalid("expires_at must be an ISO 8601 timestamp.")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise invalid("expires_at must be an ISO 8601 timestamp.") from None
    if parsed.tzinfo is None:
        raise invalid("expires_at must carry a UTC offset, e.g. 2030-01-01T00:00:00Z.")
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class CreateSessionRequest:
    """A validated ``POST /create-session`` body."""

    transaction_id: str
    amount: int
    currency: str
    callback_url: str
    return_url: str
    cancel_url: str
    expires_at: datetime
    merchant_name: str | None = None

    def fingerprint(self) -> str:
        """A digest of the request, to tell a retry from a different body under one key."""
        fields = asdict(self)
        fields["expires_at"] = self.expires_at.isoformat()
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def parse_create_session(body) -> CreateSessionRequest:
    """Validate a create-session body (contract section 4)."""
    body = require_object(body)
    currency = body.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise invalid("currency must be a three-letter upper-case ISO 4217 code.")
    merchant = body.get("merchant_name")
    if merchant is not None:
        merchant = _text(body, "merchant_name", max_length=100)
    return CreateSessionRequest(
        transaction_id=_text(body, "transaction_id"),
        amount=parse_amount(body),
        currency=currency,
        callback_url=_url(body, "callback_url"),
        return_url=_url(body, "return_url"),
        cancel_url=_url(body, "cancel_url"),
        expires_at=parse_timestamp(body.get("expires_at")),
        merchant_name=merchant,
    )


def parse_refund(body) -> tuple[str, int]:
    """Validate a refund body: ``(transaction_id, amount)``."""
    body = require_object(body)
    return _text(body, "transaction_id"), parse_amount(body)


def idempotency_key(raw: str | None, *, required: bool) -> str | None:
    """The ``Idempotency-Key`` header, checked for presence and length."""
    if raw is None or raw.strip() == "":
        if required:
            raise SandboxError(400, "idempotency_key_required", "The Idempotency-Key header is required.")
        return None
    if len(raw) > MAX_KEY_LENGTH:
        raise SandboxError(400, "invalid_idempotency_key", "Idempotency-Key must be at most 255 characters.")
    return raw


def status_view(session: PaymentSession) -> dict:
    """The ``GET /status`` answer for a session."""
    return {
        "transaction_id": session.transaction_id,
        "status": session.status,
        "amount": session.amount,
        "currency": session.currency,
        "session_id": session.session_id,
        "refunded_amount": session.refunded_amount,
    }


def event_body(session: PaymentSession, status: str, at: datetime) -> str:
    """The exact JSON text of a ``payment.status_changed`` webhook (signed as is)."""
    event = {
        "type": "payment.status_changed",
        "timestamp": at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "data": {
            "transaction_id": session.transaction_id,
            "session_id": session.session_id,
            "status": status,
            "amount": session.amount,
            "currency": session.currency,
        },
    }
    return json.dumps(event, separators=(",", ":"))

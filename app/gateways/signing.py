"""Standard Webhooks signing and verification (https://www.standardwebhooks.com).

Both sides of the protocol live here: the built-in sandbox gateway signs with
``sign`` and the gateway adapters verify with ``verify``. The tests check this
module against the independent ``standardwebhooks`` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The webhook could not be verified; ``reason`` is a short snake_case code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SignedHeaders:
    webhook_id: str
    timestamp: int
    signature: str

    def as_dict(self) -> dict[str, str]:
        """The three headers as sent on the wire."""
        return {
            "webhook-id": self.webhook_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": self.signature,
        }


def decode_secret(secret: str) -> bytes:
    """Return the HMAC key of a ``whsec_``-prefixed base64 secret; ValueError if malformed."""
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not valid base64") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _digest(key: bytes, webhook_id: bytes, timestamp: str, body: bytes) -> bytes:
    signed = webhook_id + b"." + timestamp.encode() + b"." + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def _id_forms(header_value: str) -> tuple[str, list[bytes]]:
    """The webhook-id as text, and the bytes its sender may have signed.

    WSGI hands header values over decoded as Latin-1 (PEP 3333): encoding one back gives the
    bytes that arrived, which a sender sending UTF-8 signed. A sender whose HTTP client put the
    text on the wire as Latin-1 signed the UTF-8 of the text as read. For an ASCII id (every
    real one) the two are the same.
    """
    utf8 = header_value.encode()
    try:
        sent = header_value.encode("latin-1")
    except UnicodeEncodeError:  # not from the wire: the text the sender signed
        return header_value, [utf8]
    try:
        text = sent.decode()
    except UnicodeDecodeError:
        text = header_value
    return text, [sent] if sent == utf8 else [sent, utf8]


def sign(secret: str, webhook_id: str, body: bytes, timestamp: int | None = None) -> SignedHeaders:
    """Sign ``body`` for delivery; the signature header carries one ``v1,`` entry."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    digest = _digest(decode_secret(secret), webhook_id.encode(), str(ts), body)
    return SignedHeaders(webhook_id, ts, "v1," + base64.b64encode(digest).decode())


def verify(
    secrets: list[str] | tuple[str, ...],
    headers,
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> tuple[str, int]:
    """Verify a delivery against any of ``secrets`` and return ``(webhook_id, timestamp)``.

    ``headers`` is any case-insensitive mapping (Flask's request.headers). Several
    space-separated signatures are accepted, so the sender can rotate secrets; the
    comparison is constant-time. Raises SignatureError with a reason code otherwise.
    """
    webhook_id = headers.get("webhook-id") or ""
    ts_raw = headers.get("webhook-timestamp") or ""
    sig_header = headers.get("webhook-signature") or ""
    if not webhook_id or not ts_raw or not sig_header:
        raise SignatureError("missing_headers", "webhook-id, webhook-timestamp and webhook-signature are required.")
    id_text, id_forms = _id_forms(webhook_id)
    if not id_text.isprintable():
        raise SignatureError("invalid_headers", "webhook-id must be printable characters.")
    try:
        ts = int(ts_raw)
    except ValueError:
        raise SignatureError("invalid_timestamp", "webhook-timestamp must be whole seconds since the epoch.") from None
    current = time.time() if now is None else now
    if ts < current - tolerance:
        raise SignatureError("timestamp_too_old", "webhook-timestamp is too old.")
    if ts > current + tolerance:
        raise SignatureError("timestamp_too_new", "webhook-timestamp is in the future.")

    candidates: list[bytes] = []
    for entry in sig_header.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            candidates.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not candidates:
        raise SignatureError("invalid_signature", "No v1 signature was found.")

    matched = False
    for secret in secrets:
        key = decode_secret(secret)
        for signed_id in id_forms:
            expected = _digest(key, signed_id, ts_raw, body)
            for candidate in candidates:
                # Evaluate every pair so timing does not reveal which one matched.
                matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("invalid_signature", "No signature matched.")
    return webhook_id, ts

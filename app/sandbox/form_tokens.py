"""CSRF tokens for the hosted page's forms: an HMAC of the form's purpose and issue time.

Stateless (no cookie), so a shopper's browser and a plain HTTP client that first GETs the
page both work. The key is SANDBOX_FORM_SECRET (random per process unless configured).
"""

from __future__ import annotations

import hashlib
import hmac
import time

MAX_AGE_SECONDS = 2 * 3600


def _signature(secret: str, purpose: str, issued: int) -> str:
    return hmac.new(secret.encode(), f"{purpose}:{issued}".encode(), hashlib.sha256).hexdigest()


def issue_token(secret: str, purpose: str, now: float | None = None) -> str:
    """A token for the form identified by ``purpose`` (e.g. ``pay:<session_id>``)."""
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_signature(secret, purpose, issued)}"


def token_is_valid(secret: str, purpose: str, token: str | None, now: float | None = None) -> bool:
    """True when ``token`` was issued for ``purpose`` with ``secret`` and is not too old."""
    issued_raw, _, signature = (token or "").partition(".")
    if not (issued_raw.isascii() and issued_raw.isdigit()) or len(issued_raw) > 12 or not signature:
        return False
    issued = int(issued_raw)
    current = time.time() if now is None else now
    if not -60 <= current - issued <= MAX_AGE_SECONDS:
        return False
    # as bytes: compare_digest refuses str with non-ASCII characters (TypeError)
    return hmac.compare_digest(signature.encode(), _signature(secret, purpose, issued).encode())

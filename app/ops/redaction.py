"""What the ops pages may show of payloads: secrets, signatures and card data never."""

from __future__ import annotations

import json
import re
from typing import Any

from app import bounded_json

REDACTED = "[redacted]"
_SENSITIVE_KEY = re.compile(
    r"secret|signature|password|passwd|token|authorization|cookie|(api|private|access|secret)[-_]?key"
    r"|card|cvc|cvv|pan$|expiry",
    re.IGNORECASE,
)
# Values that look like credentials wherever they appear in free text.
_SECRET_TEXT = re.compile(r"whsec_[A-Za-z0-9+/=_-]+|sk_[A-Za-z0-9_]+|v1,[A-Za-z0-9+/=]{16,}|Bearer\s+\S+"
                          r"|\b(?:\d[ -]?){13,19}\b")


def redact(value: Any) -> Any:
    """A copy of ``value`` with sensitive keys' values and credential-like strings replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SENSITIVE_KEY.search(k) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_TEXT.sub(REDACTED, value)
    return value


def pretty(value: Any) -> str:
    """Redacted, indented JSON of a stored payload ('' for none)."""
    if value is None:
        return ""
    return json.dumps(redact(value), indent=2, sort_keys=True, default=str)


def pretty_text(text: str | None) -> str:
    """A stored raw body, redacted: parsed and shown as JSON when it is JSON, scrubbed otherwise."""
    if not text:
        return ""
    try:
        return pretty(bounded_json.loads(text))
    except ValueError:  # not JSON, or nested too deep to show as such
        return redact(text)

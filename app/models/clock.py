"""Time and identifiers shared by the models: naive UTC everywhere, random public ids."""

import secrets
from datetime import datetime, timezone


def utcnow() -> datetime:
    """The current time as naive UTC, the form every timestamp column stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def public_id(prefix: str, nbytes: int = 16) -> str:
    """An unguessable id such as ``txn_<22 chars>`` (``nbytes`` random bytes, 128 bits by default)."""
    return f"{prefix}_{secrets.token_urlsafe(nbytes)}"


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 with an explicit UTC ``Z`` for a stored naive-UTC time."""
    return None if dt is None else dt.isoformat(timespec="milliseconds") + "Z"

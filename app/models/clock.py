"""Time and identifiers shared by the models: naive UTC everywhere, random public ids, and
lookups by an id that came from outside."""

import secrets
from datetime import datetime, timezone

from app.extensions import db


def utcnow() -> datetime:
    """The current time as naive UTC, the form every timestamp column stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def public_id(prefix: str, nbytes: int = 16) -> str:
    """An unguessable id such as ``txn_<22 chars>`` (``nbytes`` random bytes, 128 bits by default)."""
    return f"{prefix}_{secrets.token_urlsafe(nbytes)}"


ID_MAX_LENGTH = 40  # the id columns' width


def plausible_id(value: object, longest: int = ID_MAX_LENGTH) -> bool:
    """Whether ``value`` could be one of our ids or tokens (ASCII text of 1-``longest``
    characters, no NUL): others are not looked up at all, so no odd text from outside ever
    reaches the database driver."""
    return isinstance(value, str) and 0 < len(value) <= longest and value.isascii() and "\x00" not in value


def find_by_id(model, value: object):
    """The ``model`` row whose primary key is ``value``, or None (also for anything that
    could not be one of our ids)."""
    return db.session.get(model, value) if plausible_id(value) else None


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 with an explicit UTC ``Z`` for a stored naive-UTC time."""
    return None if dt is None else dt.isoformat(timespec="milliseconds") + "Z"

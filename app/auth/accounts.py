"""Ops staff accounts: creating them and checking their passwords (werkzeug hashes)."""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from app.extensions import db
from app.models import User
from app.models.clock import utcnow

log = logging.getLogger(__name__)
ROLES = ("viewer", "admin")
MIN_PASSWORD_LENGTH = 8
# Checked against when the email is unknown, so a miss costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not-a-real-password-only-equalises-timing")


class AccountError(ValueError):
    """A refused account change, with a sentence for a person."""


def normalize_email(email: str) -> str:
    """The stored form of an email address: trimmed and lower case."""
    return (email or "").strip().lower()


def find_user(email: str) -> User | None:
    """The ops user with this email (compared trimmed and case-blind), or None."""
    email = normalize_email(email)
    return db.session.scalar(select(User).where(func.lower(User.email) == email)) if email else None


def create_user(email: str, password: str, role: str = "viewer") -> User:
    """Create an ops user with a hashed password; raises AccountError on bad input or a taken email."""
    email = normalize_email(email)
    local, _, domain = email.rpartition("@")
    if (not local or not domain or "@" in local or len(email) > 254 or any(c.isspace() for c in email)
            or domain.startswith(".") or domain.endswith(".")):
        raise AccountError(f"{email!r} is not an email address.")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}.")
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters.")
    if find_user(email) is not None:
        raise AccountError(f"an ops user with email {email} already exists.")
    user = User(email=email, password_hash=generate_password_hash(password), role=role)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:  # created by someone else between the check and the insert
        db.session.rollback()
        raise AccountError(f"an ops user with email {email} already exists.") from None
    log.info("ops user %s created with role %s", email, role)
    return user


def authenticate(email: str, password: str) -> User | None:
    """The user whose email and password match, with ``last_login_at`` stamped; None otherwise."""
    user = find_user(email)
    if user is None:
        check_password_hash(_DUMMY_HASH, password or "")
        log.info("ops login refused for unknown email")
        return None
    if not check_password_hash(user.password_hash, password or ""):
        log.info("ops login refused for user id=%s: wrong password", user.id)
        return None
    db.session.execute(update(User).where(User.id == user.id).values(last_login_at=utcnow())
                       .execution_options(synchronize_session=False))
    db.session.commit()
    log.info("ops user id=%s logged in", user.id)
    return user

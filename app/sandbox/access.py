"""Who may call what: the API's bearer key and the admin key (constant-time comparisons)."""

from __future__ import annotations

import hmac
import ipaddress

from flask import Request

from app.sandbox.protocol import SandboxError


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_bearer(request: Request, expected: str) -> None:
    """Raise a 401 SandboxError unless the request carries ``expected`` as its bearer token."""
    if not _same(bearer_token(request), expected):
        raise SandboxError(401, "unauthorized", "A valid Authorization: Bearer key is required.")


def admin_allowed(request: Request, admin_key: str) -> bool:
    """For the developer dashboard: a loopback visitor, or the admin key.

    The key may come as a bearer token or as the password of HTTP Basic auth (any user
    name), so a browser on another machine can log in through its own prompt.
    """
    try:
        if request.remote_addr and ipaddress.ip_address(request.remote_addr).is_loopback:
            return True
    except ValueError:
        pass
    if _same(bearer_token(request), admin_key):
        return True
    basic = request.authorization
    return basic is not None and basic.type == "basic" and _same(basic.password, admin_key)

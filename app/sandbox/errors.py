"""How the sandbox answers refusals and faults: JSON for the API, HTML for pages.

Nothing reaches the client as a stack trace; an unexpected fault is logged with a
reference and answered ``500 internal_error``.
"""

from __future__ import annotations

import logging
import secrets

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from app.sandbox.protocol import SandboxError

log = logging.getLogger(__name__)

_HTML_PREFIXES = ("/pay/",)
_HTML_PATHS = ("/_admin", "/_admin/")


def wants_html() -> bool:
    """True for the hosted page and the dashboard; every other path answers JSON."""
    return request.path.startswith(_HTML_PREFIXES) or request.path in _HTML_PATHS


def _code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def _answer(status: int, code: str, message: str, extra: dict | None = None, headers=None):
    if wants_html():
        title = code.replace("_", " ").capitalize()
        return render_template("error.html", title=title, message=message), status, headers or {}
    return jsonify({"error": code, "message": message, **(extra or {})}), status, headers or {}


def register_error_handlers(app: Flask) -> None:
    """Install the handlers on the sandbox app."""

    @app.errorhandler(SandboxError)
    def _sandbox_error(exc: SandboxError):
        headers = {"WWW-Authenticate": 'Bearer realm="sandbox gateway"'} if exc.status == 401 else None
        return _answer(exc.status, exc.code, exc.message, exc.extra, headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 404 and not wants_html():
            message = "No such endpoint."
        headers = dict(exc.get_headers()) if exc.code == 405 else None
        if headers:
            headers.pop("Content-Type", None)
        return _answer(exc.code or 500, _code(exc), message, None, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        reference = secrets.token_hex(6)
        log.exception("sandbox internal error (reference %s) on %s %s", reference, request.method, request.path)
        return _answer(
            500, "internal_error", f"The sandbox gateway failed unexpectedly (reference {reference}).",
            {"reference": reference},
        )

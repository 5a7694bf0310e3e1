"""HTTP plumbing shared by the blueprints: JSON errors everywhere, JSON body parsing.

Every JSON route answers errors as ``{"error": code, "message": sentence}``; an unknown
path answers JSON under /api/ or when the client prefers JSON, HTML otherwise. No fault
reaches a client as a stack trace: it is logged with a reference the client also sees.
"""

from __future__ import annotations

import logging
import secrets
from typing import TypeVar

from flask import Flask, current_app, jsonify, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from app.bounded_json import MAX_DEPTH
from app.connections import database_error_text, discard_transaction, lost_connection
from app.services.errors import ServiceError

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)

JSON_PREFIXES = ("/api/", "/initiate-payment", "/check-payment-status", "/payment-callback")
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def wants_json() -> bool:
    """True for the JSON API paths, and for clients that prefer JSON to HTML."""
    if request.path.startswith(JSON_PREFIXES):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def error_response(status: int, code: str, message: str, extra: dict | None = None):
    """The JSON error shape of the contract."""
    return jsonify({"error": code, "message": message, **(extra or {})}), status


def _page_or_json(status: int, code: str, message: str, extra: dict | None = None):
    if wants_json():
        return error_response(status, code, message, extra)
    return render_template("error.html", status=status, message=message), status


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def header_text(name: str) -> str | None:
    """A header's value as the client wrote it: WSGI hands headers over as Latin-1, so UTF-8
    text (a key of non-ASCII characters) is decoded back, and counted in characters."""
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value  # not UTF-8: the bytes as they came


def raw_body() -> bytes:
    """The request body, whole. A body sent without Content-Length (chunked) is cut at the size
    limit as it is read; one that reaches the limit is answered 413, like a declared one."""
    data = request.get_data()
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit and len(data) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()  # there was more than the limit
    return data


def json_body(model: type[Model]) -> Model:
    """Parse the request body as JSON into ``model`` (415, 413, 400, 422 as appropriate)."""
    if not request.is_json:
        raise ServiceError(415, "unsupported_media_type", "Send the body as application/json.")
    raw_body()  # read whole (and kept for get_json) or refused as too large
    try:
        data = request.get_json()  # the app's BoundedJSONProvider: too deep is not valid either
    except BadRequest:  # Flask's answer to a body that does not parse (a literal null does)
        raise ServiceError(400, "malformed_json",
                           f"The request body is not valid JSON (or nests deeper than {MAX_DEPTH} levels).") from None
    if not isinstance(data, dict):
        raise ServiceError(422, "validation_error", "The JSON body must be an object.")
    if _has_nul(data):
        raise ServiceError(422, "validation_error", "Text in the body must not contain NUL characters.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]} for err in exc.errors()
        ]
        first = problems[0]
        raise ServiceError(422, "validation_error", f"{first['field'] or 'body'}: {first['problem']}.",
                           {"fields": problems}) from None


def retry_after_only_on_refusals(app: Flask) -> None:
    """Flask-Limiter adds Retry-After to every response of a limited route; it means "wait"
    only on a 429 (or a 503), so it is dropped from the others. Registered before the limiter:
    after-request functions run in reverse order, so this one sees the limiter's headers."""

    @app.after_request
    def _drop_retry_after(response):
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        return response


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a request sending no session cookie (a
    webhook, an API call) gets its new empty session without Flask first building the cookie's
    signer, a few percent of such a request's time. The same session either way."""

    def open_session(self, app: Flask, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    """Register the error handlers and the session interface on ``app``, and refuse NUL
    characters before any route runs."""
    app.session_interface = CookieSessions()

    @app.before_request
    def _refuse_nul():
        # No database stores NUL in text (PostgreSQL refuses it): refuse it at the door, clearly.
        # Field names too: the cart's carry the SKU (qty-<sku>), which reaches a query.
        in_form = request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data") and any(
            "\x00" in key or any("\x00" in v for v in values) for key, values in request.form.lists())
        if ("\x00" in request.path or "\x00" in request.query_string.decode("latin-1")
                or "%00" in request.query_string.decode("latin-1")
                or "\x00" in request.headers.get("Idempotency-Key", "") or in_form):
            raise ServiceError(400, "invalid_characters", "The request contains a NUL character.")

    @app.errorhandler(ServiceError)
    def on_service_error(exc: ServiceError):
        if wants_json():
            return jsonify(exc.to_dict()), exc.status
        return render_template("error.html", status=exc.status, message=exc.message), exc.status

    @app.errorhandler(CSRFError)
    def on_csrf(exc: CSRFError):
        return _page_or_json(400, "csrf_failed",
                             "The form expired or did not come from this site; reload and try again.")

    @app.errorhandler(HTTPException)
    def on_http(exc: HTTPException):
        status = exc.code or 500
        code = HTTP_CODES.get(status, "http_error")
        if status == 413:
            message = "The request body is too large."
        elif status == 405:
            message = "This method is not allowed here."
        elif status == 404:
            message = "Nothing is at this address."
        elif status == 429:
            message = f"Too many requests; please wait a moment and try again (limit: {exc.description})."
        else:
            message = exc.description or "The request could not be handled."
        body, status = _page_or_json(status, code, message)
        allowed = getattr(exc, "valid_methods", None)
        return body, status, ({"Allow": ", ".join(allowed)} if allowed else {})

    @app.errorhandler(Exception)
    def on_fault(exc: Exception):
        reference = secrets.token_hex(6)
        discard_transaction()
        if lost_connection(exc):
            # The database connection broke under the request (a failover, a termination; also a
            # deadlock or a timeout the server ended it with): nothing uncommitted was kept, and
            # trying again in a moment is the remedy.
            log.error("database could not finish ref=%s on %s %s: %s", reference, request.method, request.path,
                      database_error_text(exc))
            body, status = _page_or_json(503, "database_unavailable", "Our database could not finish this request "
                                         "(its connection was lost, or it is failing over); please try again in a "
                                         f"moment (reference {reference}).", {"reference": reference})
            return body, status, {"Retry-After": "2"}
        log.exception("unhandled fault ref=%s on %s %s", reference, request.method, request.path)
        return _page_or_json(500, "internal_error", f"Something went wrong on our side (reference {reference}). "
                             "Please try again.", {"reference": reference})

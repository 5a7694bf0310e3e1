"""Response hardening: security headers, a Content-Security-Policy, and trusted proxy headers."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def content_security_policy(gateway_url: str) -> str:
    """Scripts, styles and sockets from this origin only; forms may go to the gateway's page."""
    gateway = _origin(gateway_url)
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        f"form-action 'self' {gateway}".strip(),
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "object-src 'none'",
    ])


def init_app(app: Flask) -> None:
    """Add the headers to every response and trust PROXY_FIX_HOPS proxies' X-Forwarded-*."""
    policy = content_security_policy(app.config["PAYMENT_GATEWAY_URL"])
    https = app.config["PUBLIC_BASE_URL"].startswith("https://")

    @app.after_request
    def _harden(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", policy)
        if https or request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        return response

    hops = app.config["PROXY_FIX_HOPS"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)

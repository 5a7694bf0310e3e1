"""Response hardening: security headers, a Content-Security-Policy, and trusted proxy headers."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix


LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def _origins(url: str) -> list[str]:
    """The URL's origin; for a loopback host, under both of its names (the sandbox may answer
    with a payment_url on the other one)."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return []
    if parts.hostname not in LOOPBACK_NAMES:
        return [f"{parts.scheme}://{parts.netloc}"]
    port = f":{parts.port}" if parts.port else ""
    return [f"{parts.scheme}://{name}{port}" for name in LOOPBACK_NAMES]


def content_security_policy(gateway_url: str, page_origins: list[str] | tuple[str, ...] = ()) -> str:
    """Scripts, styles and sockets from this origin only; forms may go to the gateway's pages.

    Pay posts here and is redirected to the gateway's payment_url, and browsers hold that
    redirect to ``form-action`` too: the hosted page's origin must be listed, which is the
    gateway's API origin unless PAYMENT_PAGE_ORIGINS names others.
    """
    allowed = list(dict.fromkeys(o for url in (gateway_url, *page_origins) for o in _origins(url)))
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        " ".join(["form-action 'self'", *allowed]),
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "object-src 'none'",
    ])


def init_app(app: Flask) -> None:
    """Add the headers to every response and trust PROXY_FIX_HOPS proxies' X-Forwarded-*."""
    policy = content_security_policy(app.config["PAYMENT_GATEWAY_URL"], app.config["PAYMENT_PAGE_ORIGINS"])
    https = app.config["PUBLIC_BASE_URL"].startswith("https://")

    @app.after_request
    def _harden(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", policy)
        if request.endpoint != "static":
            # Pages and answers about payments, orders and access codes are per person and change:
            # no browser or proxy keeps a copy (a shared machine's Back after logout shows nothing).
            response.headers.setdefault("Cache-Control", "no-store")
        if https or request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        return response

    hops = app.config["PROXY_FIX_HOPS"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)

"""Response hardening: security headers, a Content-Security-Policy, and trusted proxy headers."""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from config import ConfigurationError

log = logging.getLogger(__name__)

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
        app.wsgi_app = TrustedProxyFix(app.wsgi_app, trusted_proxies(app.config["FORWARDED_ALLOW_IPS"]), hops)


def peer_ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as an IP (an IPv6 zone dropped, an IPv4-mapped IPv6 address as its IPv4
    one), or None when it is not an IP address (a unix socket's peer, or other text)."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def trusted_proxies(setting: str | None) -> list | None:
    """FORWARDED_ALLOW_IPS as gunicorn reads it: comma-separated addresses or networks, ``*``
    for any peer (None here)."""
    entries = [entry.strip() for entry in (setting or "").split(",") if entry.strip()]
    if "*" in entries:
        return None
    try:
        # A network with host bits set (10.1.2.3/16) is refused, as gunicorn refuses it.
        return [ipaddress.ip_network(entry) for entry in entries]
    except ValueError:
        raise ConfigurationError(f"configuration error: FORWARDED_ALLOW_IPS must be addresses or networks "
                                 f"separated by commas, or *, got {setting!r}.") from None


class TrustedProxyFix:
    """ProxyFix for requests from the proxies in FORWARDED_ALLOW_IPS only.

    X-Forwarded-For decides the client address every per-address rate limit counts (staff
    login, the access-code lookup, orders, payments) and the address recorded with a refused
    webhook. Believed from any peer, a client that reaches the app without passing the proxy
    names a new address on every request and is never limited. From any other peer the
    headers are ignored, as gunicorn ignores them; a unix socket's peer (no IP) is a proxy.
    """

    def __init__(self, wsgi_app, trusted: list | None, hops: int) -> None:
        self.wsgi_app = wsgi_app
        self.trusted = trusted
        self.fixed = ProxyFix(wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
        self.warned = False

    def _from_proxy(self, remote_addr: str | None) -> bool:
        if self.trusted is None:
            return True
        peer = peer_ip(remote_addr)
        if peer is None:
            return True  # not an IP peer: a unix socket, which only a local proxy can reach
        return any(peer in network for network in self.trusted)

    def __call__(self, environ, start_response):
        if self._from_proxy(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        if not self.warned and "HTTP_X_FORWARDED_FOR" in environ:
            # Once per process: a proxy missing from FORWARDED_ALLOW_IPS makes every client count
            # as the proxy's one address (site-wide rate limits), which should not pass unnoticed.
            self.warned = True
            log.warning("X-Forwarded-For from %s ignored: that peer is not in FORWARDED_ALLOW_IPS; if it is "
                        "your proxy, add it there, or every client counts as its address", environ.get("REMOTE_ADDR"))
        return self.wsgi_app(environ, start_response)

"""The sandbox gateway's settings: defaults from ``config.Config``, overridable per app.

Every key is a ``SANDBOX_*`` name. ``config.Config`` supplies the ones it defines (the API
key, webhook secret and database URL, plus any other ``SANDBOX_*`` attribute added there
later); the rest fall back to the defaults below. Nothing here reads the environment.
"""

from __future__ import annotations

import secrets

import config

# Seconds before each retry of a webhook delivery, multiplied by SANDBOX_DELIVERY_BACKOFF_FACTOR.
DELIVERY_SCHEDULE_SECONDS = (1, 5, 30, 120, 600, 3600, 3 * 3600, 6 * 3600)

DEFAULTS: dict = {
    "SANDBOX_API_KEY": config.DEV_GATEWAY_API_KEY,
    "SANDBOX_WEBHOOK_SECRET": config.DEV_WEBHOOK_SECRET,
    "SANDBOX_DATABASE_URL": f"sqlite:///{config.INSTANCE_DIR / 'sandbox.db'}",
    # None means "the origin the sandbox is served on" (set by serve_in_thread / the CLI).
    "SANDBOX_PUBLIC_URL": None,
    "SANDBOX_DELIVERY_BACKOFF_FACTOR": 1.0,
    "SANDBOX_DELIVERY_MAX_ATTEMPTS": len(DELIVERY_SCHEDULE_SECONDS) + 1,
    "SANDBOX_DELIVERY_TIMEOUT": 5.0,
    "SANDBOX_DELIVERY_WORKER": True,
    "SANDBOX_WORKER_POLL_SECONDS": 1.0,
    "SANDBOX_ADMIN_KEY": None,  # None: the API key
    "SANDBOX_PENDING_SECONDS": 20,
    "SANDBOX_MERCHANT_NAME": "Demo Store",
    "SANDBOX_FORM_SECRET": None,  # None: random per process
    "SANDBOX_FAULTS": None,  # {"global": {...knobs}, "<transaction or session id>": {...}}
}


def resolve_settings(overrides: dict | None = None) -> dict:
    """Return the complete settings: defaults, then ``config.Config``, then ``overrides``.

    Derived values are filled in: the admin key defaults to the API key, the form secret to
    a random per-process value, and the public URL loses any trailing slash.
    """
    resolved = dict(DEFAULTS)
    for name in dir(config.Config):
        if name.startswith("SANDBOX_"):
            resolved[name] = getattr(config.Config, name)
    resolved.update(overrides or {})
    if not resolved["SANDBOX_ADMIN_KEY"]:
        resolved["SANDBOX_ADMIN_KEY"] = resolved["SANDBOX_API_KEY"]
    if not resolved["SANDBOX_FORM_SECRET"]:
        resolved["SANDBOX_FORM_SECRET"] = secrets.token_hex(32)
    if resolved["SANDBOX_PUBLIC_URL"]:
        resolved["SANDBOX_PUBLIC_URL"] = str(resolved["SANDBOX_PUBLIC_URL"]).rstrip("/")
    if not resolved["SANDBOX_API_KEY"] or not resolved["SANDBOX_WEBHOOK_SECRET"]:
        raise ValueError("SANDBOX_API_KEY and SANDBOX_WEBHOOK_SECRET must be set")
    return resolved


def retry_delay_seconds(attempts_made: int, factor: float) -> float:
    """Seconds to wait before the next attempt after ``attempts_made`` failed attempts."""
    index = min(max(attempts_made, 1), len(DELIVERY_SCHEDULE_SECONDS)) - 1
    return DELIVERY_SCHEDULE_SECONDS[index] * float(factor)

"""Configuration, read from the environment once (a `.env` file may supply it).

Config is development, TestConfig the test suite, ProductionConfig refuses to start
without real secrets. Nothing else in the app package reads os.environ (wsgi.py and
gunicorn.conf.py read their own few; requests reads the proxy and CA variables once, when the
gateway adapter is built).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent
INSTANCE_DIR = BASE_DIR / "instance"
load_dotenv(BASE_DIR / ".env")

# Development defaults shared by the app and the built-in sandbox gateway so that
# `make run` works with no configuration at all. Production refuses them.
DEV_GATEWAY_API_KEY = "sk_sandbox_development_key"
DEV_WEBHOOK_SECRET = "whsec_c2FuZGJveC1kZXZlbG9wbWVudC13ZWJob29rLXNlY3JldA=="
DEV_SANDBOX_URL = "http://127.0.0.1:5001"


def _origin(url: str | None) -> tuple:
    """Scheme, host and port of a URL, with the loopback names counted as one host."""
    parts = urlsplit((url or "").strip().lower())
    host = "loopback" if parts.hostname in ("127.0.0.1", "localhost", "::1") else parts.hostname
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme, host, port


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _flag(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


class ConfigurationError(RuntimeError):
    """A setting the app cannot start with. Said in one line (wsgi.py), never as a traceback."""


# Settings that did not parse, kept when this module is read and raised by config_by_name, so
# importing the configuration never fails and every entry point reports them the same way.
_UNPARSED: list[str] = []


def _int(name: str, default: int) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        message = f"{name} must be a whole number, got {value!r}."
        if message not in _UNPARSED:  # a setting read by two classes is said once
            _UNPARSED.append(message)
        return default


class Config:
    """Development configuration: SQLite file and the built-in sandbox gateway."""

    ENV_NAME = "development"
    # Without SECRET_KEY: random per server (gunicorn.conf.py draws one for all its workers).
    SECRET_KEY = _env("SECRET_KEY") or _env("CHECKOUT_DEV_SECRET_KEY") or secrets.token_hex(32)
    SQLALCHEMY_DATABASE_URI = _env("DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'checkout.db'}")
    # A pool larger than SQLAlchemy's default 5+10: one gevent worker serves many requests at once.
    # No pool_pre_ping: app/connections.py checks a connection at checkout without a round trip,
    # and pings only one idle for longer than DATABASE_PING_AFTER_IDLE seconds.
    # connect_timeout: an unreachable server (a failover) fails a connect in 10 s, not the
    # operating system's two minutes, so a request answers 503 and a retried write tries again.
    SQLALCHEMY_ENGINE_OPTIONS: dict = (
        {} if SQLALCHEMY_DATABASE_URI.startswith("sqlite")
        else {"pool_size": 20, "max_overflow": 20, "connect_args": {"connect_timeout": 10}}
    )
    DATABASE_PING_AFTER_IDLE = 10.0
    PUBLIC_BASE_URL = (_env("PUBLIC_BASE_URL", "http://127.0.0.1:5000") or "").rstrip("/")

    PAYMENT_GATEWAY = _env("PAYMENT_GATEWAY", "sandbox")
    PAYMENT_GATEWAY_URL = (_env("PAYMENT_GATEWAY_URL", DEV_SANDBOX_URL) or "").rstrip("/")
    # Origins of the gateway's hosted pages when they differ from PAYMENT_GATEWAY_URL's
    # (space-separated): the page's form-action must allow them for Pay to reach them.
    PAYMENT_PAGE_ORIGINS = tuple((_env("PAYMENT_PAGE_ORIGINS") or "").split())
    PAYMENT_GATEWAY_API_KEY = _env("PAYMENT_GATEWAY_API_KEY", DEV_GATEWAY_API_KEY)
    # Several secrets may be given separated by spaces while rotating; the first signs nothing
    # here (the gateway signs), all of them are accepted when verifying.
    PAYMENT_WEBHOOK_SECRET = _env("PAYMENT_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
    PAYMENT_STATUS_CHECK_AFTER = _int("PAYMENT_STATUS_CHECK_AFTER", 900)
    PAYMENT_EXPIRES_AFTER = _int("PAYMENT_EXPIRES_AFTER", 1800)
    # The waiting page also asks for the status this often while its socket is up (a push lost
    # on its way must not leave it waiting for ever); it polls every 5 s only without a socket.
    PAYMENT_PAGE_CHECK_SECONDS = 30
    # Gateway HTTP: per-attempt timeouts and retries, bounded to stay well under 30 s in all.
    GATEWAY_CONNECT_TIMEOUT = 2.0
    GATEWAY_READ_TIMEOUT = 4.0
    GATEWAY_RETRIES = 3
    GATEWAY_BACKOFF = 0.5
    GATEWAY_TOTAL_BUDGET = 25.0  # a whole call, retries included, whatever the gateway does

    SCHEDULER_ENABLED = _flag("SCHEDULER_ENABLED", True)
    SCHEDULER_INTERVAL = _int("SCHEDULER_INTERVAL", 60)
    REDIS_URL = _env("REDIS_URL")
    # The Redis pub/sub channel Socket.IO processes share; apps sharing one Redis need their own.
    SOCKETIO_CHANNEL = _env("SOCKETIO_CHANNEL", "flask-socketio")
    RATELIMIT_ENABLED = _flag("RATELIMIT_ENABLED", True)
    # Per client address; Flask-Limiter keeps the counters in Redis when REDIS_URL is set.
    RATELIMIT_ORDERS = _env("RATELIMIT_ORDERS", "30/minute")
    RATELIMIT_INITIATE = _env("RATELIMIT_INITIATE", "30/minute")
    RATELIMIT_LOGIN = _env("RATELIMIT_LOGIN", "10/minute")
    RATELIMIT_LOOKUP = _env("RATELIMIT_LOOKUP", "10/minute")
    RATELIMIT_WEBHOOK_FAILURES = _env("RATELIMIT_WEBHOOK_FAILURES", "60/minute")
    RATELIMIT_HEADERS_ENABLED = True
    # Redis down must not take checkout down with it: the limits fall back to this process's
    # memory until Redis answers again, and a limiter fault never fails a request.
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    RATELIMIT_SWALLOW_ERRORS = True
    # Reverse proxies in front of the app whose X-Forwarded-* headers are trusted (0: none).
    PROXY_FIX_HOPS = _int("PROXY_FIX_HOPS", 0)
    # The peers those headers are believed from (gunicorn's setting of the same name, read the
    # same way): comma-separated addresses or networks, or * for any.
    FORWARDED_ALLOW_IPS = _env("FORWARDED_ALLOW_IPS", "127.0.0.1")
    # prometheus_client's multiprocess directory (it reads the variable itself too).
    PROMETHEUS_MULTIPROC_DIR = _env("PROMETHEUS_MULTIPROC_DIR")
    FULFILLMENT_HANDLER = _env("FULFILLMENT_HANDLER", "app.services.fulfillment:log_fulfillment")
    # How long a fulfillment claim is held before another process may retry a crashed one.
    FULFILLMENT_LEASE_SECONDS = _int("FULFILLMENT_LEASE_SECONDS", 900)

    # Socket.IO: "threading" for the dev server and gthread; wsgi.py sets "gevent" under gevent.
    SOCKETIO_ASYNC_MODE = _env("SOCKETIO_ASYNC_MODE", "threading")

    # Built-in sandbox gateway (contract 4a).
    SANDBOX_API_KEY = _env("SANDBOX_API_KEY", DEV_GATEWAY_API_KEY)
    SANDBOX_WEBHOOK_SECRET = _env("SANDBOX_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
    SANDBOX_DATABASE_URL = _env("SANDBOX_DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'sandbox.db'}")

    MAX_CONTENT_LENGTH = 64 * 1024
    JSON_SORT_KEYS = False
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False  # create_app turns it on when PUBLIC_BASE_URL is https
    REMEMBER_COOKIE_SECURE = False
    WTF_CSRF_TIME_LIMIT = None
    # Staff sessions end after this long without a request, and this long after login.
    OPS_SESSION_IDLE_MINUTES = _int("OPS_SESSION_IDLE_MINUTES", 120)
    OPS_SESSION_MAX_HOURS = _int("OPS_SESSION_MAX_HOURS", 12)
    IDEMPOTENCY_TTL_SECONDS = 24 * 3600
    # A copy of a request sent while the first is still being answered waits this long for the
    # first's answer (the gateway's whole budget and then some) before 409 in progress.
    IDEMPOTENCY_WAIT_SECONDS = GATEWAY_TOTAL_BUDGET + 10
    WEBHOOK_REJECTION_RETENTION_DAYS = _int("WEBHOOK_REJECTION_RETENTION_DAYS", 30)
    LOG_LEVEL = _env("LOG_LEVEL", "INFO")


class TestConfig(Config):
    """The test suite: no scheduler, no rate limits; each test supplies its database."""

    ENV_NAME = "testing"
    TESTING = True
    SECRET_KEY = secrets.token_hex(32)  # never a key in the repository, even if APP_ENV=testing is misused
    SCHEDULER_ENABLED = False
    RATELIMIT_ENABLED = False
    REDIS_URL = None
    PUBLIC_BASE_URL = "http://127.0.0.1:5000"
    PAYMENT_GATEWAY_URL = "http://gateway.test"
    PAYMENT_GATEWAY_API_KEY = DEV_GATEWAY_API_KEY
    PAYMENT_WEBHOOK_SECRET = DEV_WEBHOOK_SECRET
    PAYMENT_STATUS_CHECK_AFTER = 900
    PAYMENT_EXPIRES_AFTER = 1800
    GATEWAY_BACKOFF = 0.0
    FULFILLMENT_HANDLER = "app.services.fulfillment:log_fulfillment"


class ProductionConfig(Config):
    """Production: refuses to start on development secrets or SQLite."""

    ENV_NAME = "production"
    PROXY_FIX_HOPS = _int("PROXY_FIX_HOPS", 1)
    SESSION_COOKIE_SECURE = True
    REMEMBER_COOKIE_SECURE = True

    @classmethod
    def problems(cls) -> list[str]:
        """What stops this configuration from serving real money, as sentences."""
        found = []
        if not _env("SECRET_KEY"):
            found.append("SECRET_KEY must be set.")
        elif len(_env("SECRET_KEY").strip()) < 32:
            found.append("SECRET_KEY must be at least 32 characters of random text.")
        if not _env("DATABASE_URL") or cls.SQLALCHEMY_DATABASE_URI.startswith("sqlite"):
            found.append("DATABASE_URL must point at PostgreSQL, not SQLite.")
        # Compared the way they are used: the key stripped, the secret as its space-separated
        # rotation list (a trailing newline from a mounted file, or the development secret kept
        # beside a real one, would otherwise pass), the URL by scheme, host and port.
        if (cls.PAYMENT_GATEWAY_API_KEY or "").strip() in ("", DEV_GATEWAY_API_KEY):
            found.append("PAYMENT_GATEWAY_API_KEY must be the real gateway key.")
        if DEV_WEBHOOK_SECRET in (cls.PAYMENT_WEBHOOK_SECRET or "").split():
            found.append("PAYMENT_WEBHOOK_SECRET must be the real webhook secret, without the development one.")
        elif not all(secret.startswith("whsec_") for secret in (cls.PAYMENT_WEBHOOK_SECRET or "").split()):
            found.append("PAYMENT_WEBHOOK_SECRET must be whsec_ followed by base64, as the gateway gives it.")
        if _origin(cls.PAYMENT_GATEWAY_URL) == _origin(DEV_SANDBOX_URL):
            found.append("PAYMENT_GATEWAY_URL must be the real gateway.")
        return found


CONFIGS = {"development": Config, "testing": TestConfig, "production": ProductionConfig}


def refuse_unusable(base: type[Config]) -> None:
    """Raise ConfigurationError when ``base`` (production) finds problems in its settings."""
    found = base.problems() if hasattr(base, "problems") else []
    if found:
        raise ConfigurationError("refusing to start in production: " + " ".join(found))


def exit_refusing(refusal: ConfigurationError) -> NoReturn:
    """Say the refusal in one line, without a traceback, and exit with status 3: gunicorn's
    "worker failed to boot", which stops its master instead of restarting a worker that can
    never start several times a second (and tells a supervisor not to restart it either)."""
    print(refusal, file=sys.stderr, flush=True)
    raise SystemExit(3)


def config_by_name(name: str | None = None) -> type[Config]:
    """The configuration class named by APP_ENV (development when unset); raises
    ConfigurationError for a name it does not know (a typo must not run production as
    development) or for settings that did not parse."""
    name = (name or _env("APP_ENV", "development")).strip().lower()
    if name not in CONFIGS:
        raise ConfigurationError(f"configuration error: APP_ENV must be development or production (or testing, "
                                 f"the test suite's), got {name!r}.")
    if _UNPARSED:
        raise ConfigurationError("configuration error: " + " ".join(_UNPARSED))
    return CONFIGS[name]

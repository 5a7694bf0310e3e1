"""The checkout application factory: the only place the app is assembled."""

from __future__ import annotations

import logging
import sqlite3

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from app.bounded_json import BoundedJSONProvider
from config import INSTANCE_DIR, Config, ConfigurationError, config_by_name, exit_refusing, refuse_unusable


def _configure_logging(app: Flask) -> None:
    level = getattr(logging, str(app.config.get("LOG_LEVEL", "INFO")).upper(), logging.INFO)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("app").setLevel(level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # urllib3 warns of each gateway retry without saying which payment: the gateway client logs
    # the call's outcome with the transaction id instead. Its other warnings (a full pool) stay.
    pool_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _RetryNoise) for f in pool_log.filters):
        pool_log.addFilter(_RetryNoise())


class _RetryNoise(logging.Filter):
    """Drops urllib3's "Retrying (...)" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying")


class _DroppedSocketMessage(logging.Filter):
    """engine.io logs a message it could not hand over (a client's packet that does not decode:
    bad JSON, 5,000-digit numbers, deep nesting) as "message handler error" with a traceback,
    which any client could repeat to flood the log. Such a record becomes one line. Errors in
    our own event handlers never get here: app.realtime logs them, with their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "is not an accepted origin." in record.getMessage():  # any page elsewhere can cause it
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if record.exc_info and record.getMessage().endswith("handler error"):
            record.msg, record.args = "socket.io: dropped a message that could not be handled (%s)", (
                type(record.exc_info[1]).__name__,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _tame_socket_loggers() -> None:
    """engine.io and socket.io log through the root logger only, malformed messages in one line."""
    for name in ("engineio.server", "socketio.server"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):  # their own stderr handler would print each line twice
            logger.removeHandler(handler)
        if not any(isinstance(f, _DroppedSocketMessage) for f in logger.filters):
            logger.addFilter(_DroppedSocketMessage())


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL and a busy timeout let SQLite serve concurrent readers and queue its writers."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _check_database_url(url: str) -> None:
    """A DATABASE_URL SQLAlchemy cannot use stops the start, in one line."""
    try:
        make_url(url).get_dialect().import_dbapi()  # the driver too: a missing one fails here, not later
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as exc:
        scheme = url.split(":", 1)[0] if ":" in url else "none"
        raise ConfigurationError(f"configuration error: DATABASE_URL is not a database URL this app can use "
                                 f"(scheme {scheme!r}: {type(exc).__name__}); use postgresql+psycopg://USER@HOST/DB "
                                 "or sqlite:///PATH.") from None


def create_app(config: type[Config] | dict | None = None) -> Flask:
    """Build the app from a config class (or a dict of overrides on the environment's class)."""
    app = Flask(__name__, instance_path=str(INSTANCE_DIR), template_folder="../templates",
                static_folder="../static")
    app.json = BoundedJSONProvider(app)
    base = config if isinstance(config, type) else config_by_name((config or {}).get("APP_ENV"))
    app.config.from_object(base)
    if isinstance(config, dict):
        app.config.update(config)
    if app.config["PUBLIC_BASE_URL"].startswith("https://"):  # served over TLS: cookies only over TLS
        app.config["SESSION_COOKIE_SECURE"] = app.config["REMEMBER_COOKIE_SECURE"] = True
    refuse_unusable(base)
    _check_database_url(app.config["SQLALCHEMY_DATABASE_URI"])
    INSTANCE_DIR.mkdir(exist_ok=True)
    _configure_logging(app)

    from app import auth, cli, connections, http, jobs, metrics, security
    from app.extensions import csrf, db, limiter, login_manager, migrate, socketio
    from app.gateways import registry

    db.init_app(app)
    connections.init_app(app)
    migrate.init_app(app, db, directory=str(INSTANCE_DIR.parent / "migrations"))
    csrf.init_app(app)
    login_manager.init_app(app)
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "memory://")
    if app.config["RATELIMIT_STORAGE_URI"].startswith(("redis://", "rediss://")):
        # A Redis that hangs costs a request half a second, not ten, before the memory fallback.
        app.config.setdefault("RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 0.5, "socket_timeout": 0.5})
    http.retry_after_only_on_refusals(app)
    limiter.init_app(app)
    # Flask-SocketIO keeps the message-queue client from an earlier init_app in this process
    # (only tests build several apps): start from none so REDIS_URL alone decides.
    socketio.server_options.pop("client_manager", None)
    socketio.init_app(
        app,
        async_mode=app.config["SOCKETIO_ASYNC_MODE"],
        message_queue=app.config.get("REDIS_URL"),
        channel=app.config["SOCKETIO_CHANNEL"],
        # cors_allowed_origins left unset: engine.io then accepts only same-origin pages.
        logger=False,
        engineio_logger=False,
    )
    _tame_socket_loggers()
    registry.init_app(app)
    auth.init_app(app)
    http.init_app(app)
    metrics.init_app(app)

    from app import models  # noqa: F401  (registers the tables)
    from app.auth import bp as auth_bp
    from app.health import bp as health_bp
    from app.ops import bp as ops_bp
    from app.payments import bp as payments_bp
    from app.realtime import register_events
    from app.shop import bp as shop_bp
    from app.webhooks import bp as webhooks_bp

    app.register_blueprint(shop_bp)
    app.register_blueprint(payments_bp)
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(ops_bp)
    app.register_blueprint(health_bp)
    register_events()
    cli.init_app(app)
    jobs.init_app(app)

    security.init_app(app)  # last: its ProxyFix must wrap the Socket.IO middleware too

    @app.teardown_appcontext
    def _release_session(_exc):
        try:
            db.session.remove()
        except Exception as exc:  # a connection that died under the request: the answer is already made
            logging.getLogger(__name__).warning("releasing the database session failed (%s)", type(exc).__name__)
            db.session.registry.clear()

    _check_fulfillment_handler(app.config["FULFILLMENT_HANDLER"])
    return app


def _check_fulfillment_handler(path: str) -> None:
    """A FULFILLMENT_HANDLER that names nothing callable stops the start: found after shoppers
    paid, every paid order would wait for a fix."""
    from app.services.fulfillment import load_handler

    try:
        load_handler(path)
    except Exception as exc:  # whatever importing someone's module raises
        raise ConfigurationError(f"configuration error: FULFILLMENT_HANDLER {path!r} cannot be loaded "
                                 f"({type(exc).__name__}: {exc}).") from None


def create_app_or_exit() -> Flask:
    """``create_app()`` for the entry points (wsgi.py, the development server): a setting it
    cannot start with is said in one line and exits with status 3 (``exit_refusing``)."""
    try:
        return create_app()
    except ConfigurationError as refusal:
        exit_refusing(refusal)

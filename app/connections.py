"""Making sure a pooled PostgreSQL connection is alive when a request takes it, cheaply.

SQLAlchemy's ``pool_pre_ping`` sends a statement on every checkout: two of a webhook's
thirteen round trips, about a tenth of its time. Instead, at checkout:

- A connection used within the last ``DATABASE_PING_AFTER_IDLE`` seconds is checked by
  looking at its socket, without a round trip. A server that ended the session (a
  restart, ``pg_terminate_backend``, an idle-session timeout, a pooler closing it) has
  sent its goodbye and closed, so the socket is readable while no query is outstanding.
- A connection idle for longer is pinged, as ``pool_pre_ping`` would: a firewall or load
  balancer may have forgotten it without a word, which only a round trip finds out.

Either way a dead connection is replaced before the request uses it (the pool's own
reconnect on ``DisconnectionError``), so a database restart costs no failed request.
Skipping the ping for a connection used moments ago is what HikariCP does by default
(``aliveBypassWindowMs``, half a second); here the socket is still looked at.
"""

from __future__ import annotations

import select
import time
from functools import cache

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

_RETURNED_AT = "checkout.returned_at"


@cache  # looked up at the first checkout: wsgi.py has patched (or not) long before
def _c_poll():
    """The C ``select.poll`` (any descriptor number, unlike ``select.select``, which fails from
    1024 on): gevent's replacement would hand even a zero-timeout look to its hub."""
    try:
        from gevent import monkey
    except ImportError:
        return select.poll
    return monkey.get_original("select", "poll") if monkey.is_module_patched("select") else select.poll


def has_news(fileno: int) -> bool:
    """True when the server sent something on an idle connection: its goodbye, or the close."""
    look = _c_poll()()
    look.register(fileno, select.POLLIN | select.POLLPRI)
    return bool(look.poll(0))


def watch(engine: Engine, ping_after_idle: float) -> None:
    """Check ``engine``'s connections at checkout as the module says (PostgreSQL only)."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection, record) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _alive_or_replace(dbapi_connection, record, _proxy) -> None:
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None:  # opened for this checkout: nothing to check
            return
        try:
            closed = has_news(dbapi_connection.fileno())
        except dialect.loaded_dbapi.Error:  # psycopg already knows it is closed
            closed = True
        if closed:
            raise DisconnectionError("the server closed the connection while it was in the pool")
        if time.monotonic() - returned_at > ping_after_idle:
            try:
                dialect.do_ping(dbapi_connection)
            except dialect.loaded_dbapi.Error as exc:
                raise DisconnectionError(f"an idle pooled connection did not answer ({type(exc).__name__})") from None


def init_app(app: Flask) -> None:
    """Watch the app's engine when it is PostgreSQL (SQLite connections are files, always there)."""
    from app.extensions import db

    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "postgresql":
        watch(engine, app.config["DATABASE_PING_AFTER_IDLE"])

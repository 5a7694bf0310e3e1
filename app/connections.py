"""Making sure a pooled PostgreSQL connection is alive when a request takes it, cheaply.

SQLAlchemy's ``pool_pre_ping`` sends a statement on every checkout: when a webhook still took
thirteen round trips, two of them, about a tenth of its time (it now takes two statements on
PostgreSQL, and each would cost a ping too). Instead, at checkout:

- A connection used within the last ``DATABASE_PING_AFTER_IDLE`` seconds is checked by
  looking at its socket, without a round trip. A server that ended the session (a
  restart, ``pg_terminate_backend``, an idle-session timeout, a pooler closing it) has
  sent its goodbye and closed, so the socket is readable while no query is outstanding.
- A connection idle for longer is pinged, as ``pool_pre_ping`` would: a firewall or load
  balancer may have forgotten it without a word, which only a round trip finds out.

Either way a dead connection is replaced before the request uses it (the pool's own
reconnect on ``DisconnectionError``), so a database restart between requests costs no failed
request. A connection that dies *during* a request (a termination or failover under a
statement) cannot be saved that way: the request answers 503 ``database_unavailable`` (see
``lost_connection``), and the few writes that must land once work is done outside the
database (a fulfillment handler returned, an answer to store under its Idempotency-Key) are
retried on a fresh connection with ``retry_on_lost_connection``.
Skipping the ping for a connection used moments ago is what HikariCP does by default
(``aliveBypassWindowMs``, half a second); here the socket is still looked at.
"""

from __future__ import annotations

import logging
import select
import time
from functools import cache
from typing import Callable, TypeVar

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

log = logging.getLogger(__name__)
_RETURNED_AT = "checkout.returned_at"
T = TypeVar("T")
# How long a write that must land keeps trying on fresh connections (a failover's usual length).
RETRY_LOST_CONNECTION_FOR = 15.0


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


# SQLSTATE classes and codes that say "try again in a moment": connection exceptions (08),
# operator intervention (57: shutdown, termination, cancel, cannot connect now), transaction
# rollback (40: deadlock, serialization), too many connections, lock not available.
_TRANSIENT_SQLSTATES = ("08", "57", "40", "53300", "55P03")
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


class OutcomeUnknown(Exception):
    """A statement was sent for this request and whether it committed is not known (its writer
    was stopped before the answer came): like a connection lost under it."""


def lost_connection(exc: BaseException) -> bool:
    """True when the database could not finish a statement for a passing reason: the connection
    broke (the server ended the session, the network dropped it, a failover), the server is
    shutting down or refusing connections, a deadlock or a lock wait ended the transaction, no
    pooled connection came free in time, or a statement's outcome is not known (OutcomeUnknown).
    Trying again in a moment is the remedy for these; a missing table, a syntax error or a
    constraint is not one of them (those are faults)."""
    if isinstance(exc, (PoolTimeoutError, OutcomeUnknown)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate.startswith(_TRANSIENT_SQLSTATES)
    if type(exc.orig).__module__.startswith("sqlite3"):
        return str(exc.orig).startswith(_SQLITE_BUSY)
    return True  # psycopg's own: no SQLSTATE means the client lost the server (closed, unreachable)


def database_error_text(exc: BaseException) -> str:
    """The database's own first line of the error, for a log line (never the statement's parameters)."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}"[:300]


def retry_on_lost_connection(work: Callable[[], T], *, what: str, seconds: float | None = None) -> T:
    """Run ``work`` (one database transaction, committed inside it) until it gets through,
    on a fresh connection each time the last one broke, for up to ``seconds``.

    ``work`` must be safe to run again after a commit whose answer was lost: a compare-and-set
    that can tell its own earlier write from someone else's. Other errors are not retried.
    """
    def tell(attempt: int, exc: BaseException) -> None:
        log.warning("database connection lost during %s (attempt %d), trying again on a fresh one: %s",
                    what, attempt, database_error_text(exc))

    try:  # the usual case, through the first time: no retry machinery is built for it
        return work()
    except Exception as exc:
        discard_transaction()  # drops a broken connection; the next statement checks out another
        if not lost_connection(exc):
            raise
        tell(1, exc)
    for attempt in Retrying(retry=retry_if_exception(lost_connection), reraise=True,
                            before_sleep=lambda state: tell(state.attempt_number + 1, state.outcome.exception()),
                            stop=stop_after_delay(RETRY_LOST_CONNECTION_FOR if seconds is None else seconds),
                            wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.1)):
        with attempt:
            try:
                return work()
            except Exception:
                discard_transaction()  # drops a broken connection; the next statement checks out another
                raise
    raise AssertionError("unreachable: Retrying re-raises the last error")  # pragma: no cover


def discard_transaction() -> None:
    """Roll the session back after a failure; on a connection that is already gone the rollback
    can fail too, and then the session is closed instead (either way it starts afresh)."""
    from app.extensions import db

    try:
        db.session.rollback()
    except Exception as exc:
        log.warning("rollback on a broken connection failed (%s); closing the session", type(exc).__name__)
        db.session.close()


def end_transaction_before_waiting() -> None:
    """Commit the session's transaction before a call that can take long, such as a gateway
    call (up to GATEWAY_TOTAL_BUDGET): left open, its connection would sit idle in a
    transaction all that time, out of the pool, holding its table locks (a migration's ALTER
    would queue behind it, and every query behind that), and liable to be ended by an
    idle-in-transaction timeout, so the write recording the answer would fail after the gateway
    had acted. Callers hold only reads at this point; a commit, not a rollback, so that a write
    a future caller left pending would be kept rather than silently lost. Objects already
    loaded keep the values they were read with (as they did while the transaction stayed
    open), rather than each reading its row again, in a new transaction, at its next use."""
    from app.extensions import db

    session = db.session()
    if session.in_transaction():
        expire_on_commit, session.expire_on_commit = session.expire_on_commit, False
        try:
            session.commit()
        finally:
            session.expire_on_commit = expire_on_commit

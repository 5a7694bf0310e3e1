"""Pooled PostgreSQL connections are checked at checkout (app/connections.py), on a real server."""

from __future__ import annotations

import os
import time

import pytest
import sqlalchemy as sa

from app.extensions import db
from tests.conftest import prepare_database


def _pooled_pid(app) -> int:
    """The backend of the connection the app's pool holds after one use."""
    with app.app_context():
        pid = db.session.scalar(sa.text("SELECT pg_backend_pid()"))
        db.session.remove()
    return pid


def _last_statement(pg_admin, pid: int) -> str:
    return pg_admin.scalar(sa.text("SELECT query FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})


def test_a_connection_the_server_ended_is_replaced_before_a_request_uses_it(make_pg_app, postgres_url, pg_admin):
    app = make_pg_app()
    prepare_database(app, postgres_url)
    app.test_client().get("/api/products")
    ended = _pooled_pid(app)
    # a restart, as a pooled session sees it
    pg_admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": ended})
    deadline = time.monotonic() + 5
    while _last_statement(pg_admin, ended) is not None and time.monotonic() < deadline:
        time.sleep(0.02)

    response = app.test_client().get("/api/products")

    assert response.status_code == 200, response.get_json()
    assert [product["sku"] for product in response.get_json()]
    assert _pooled_pid(app) != ended


def test_only_a_connection_idle_longer_than_the_setting_is_pinged(make_pg_app, pg_admin):
    app = make_pg_app(DATABASE_PING_AFTER_IDLE=2)  # long enough for a loaded machine between two lines
    with app.app_context():
        engine = db.engine
    with engine.connect() as conn:
        pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))
        conn.commit()
    assert _last_statement(pg_admin, pid) == "COMMIT"

    with engine.connect() as conn:  # used a moment ago: its socket is looked at, nothing is sent
        assert _last_statement(pg_admin, pid) == "COMMIT"
        assert conn.scalar(sa.text("SELECT pg_backend_pid()")) == pid
        conn.commit()
    time.sleep(2.2)
    with engine.connect() as conn:  # idle for longer: pinged before it is handed out
        assert _last_statement(pg_admin, pid) == ";"
        assert conn.scalar(sa.text("SELECT pg_backend_pid()")) == pid


def test_the_idle_clock_restarts_at_each_return_to_the_pool(make_pg_app, pg_admin):
    """Idle means since the connection last came back, not since it first did: a connection in
    steady use is never pinged, however long it has been in use (found by mutation review)."""
    app = make_pg_app(DATABASE_PING_AFTER_IDLE=2)
    with app.app_context():
        engine = db.engine
    started = time.monotonic()
    while time.monotonic() - started < 3.5:  # longer than the setting in all, each gap far shorter
        with engine.connect() as conn:
            pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))
            conn.commit()
        time.sleep(0.25)
    with engine.connect() as conn:
        assert _last_statement(pg_admin, pid) == "COMMIT"  # not ";": no ping on this checkout either
        assert conn.scalar(sa.text("SELECT pg_backend_pid()")) == pid


def test_a_connection_on_a_descriptor_past_1024_is_checked_too(make_pg_app, pg_admin):
    """A busy worker holds many sockets (websockets), so the database's may be numbered past
    1024, where select() cannot look: the check must still work there."""
    resource = pytest.importorskip("resource")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("this process may not open 1,200 files (ulimit -n)")
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        app = make_pg_app()
        with app.app_context():
            engine = db.engine
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection.fileno() > 1024
            pid = conn.scalar(sa.text("SELECT pg_backend_pid()"))
            conn.commit()
        with engine.connect() as conn:  # checked at checkout: by its socket
            assert conn.scalar(sa.text("SELECT pg_backend_pid()")) == pid
    finally:
        for fd in fillers:
            os.close(fd)

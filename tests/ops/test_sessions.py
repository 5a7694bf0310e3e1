"""Staff sessions live on the server: logout, idleness and age end them, with their ops sockets."""

from __future__ import annotations

import logging
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from app.auth import sessions
from app.extensions import db, socketio
from app.jobs.housekeeping import prune_expired_records
from app.models import StaffSession, StaffSocket, User
from app.models.clock import utcnow
from tests.conftest import socket_leaves_during
from tests.ops.conftest import ADMIN, login, post_form


def sent_to_login(client) -> bool:
    response = client.get("/ops/transactions")
    return response.status_code == 302 and urlsplit(response.location).path == "/ops/login"


def copy_of(app, client):
    """A second client holding a copy of ``client``'s session cookie, as a thief would."""
    thief = app.test_client()
    cookie = client.get_cookie(app.config.get("SESSION_COOKIE_NAME", "session"))
    assert cookie is not None
    thief.set_cookie(cookie.key, cookie.value)
    return thief


def sessions_of(app, email=ADMIN) -> list[StaffSession]:
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == email))
        rows = list(db.session.scalars(select(StaffSession).where(StaffSession.user_id == user_id)))
        db.session.expunge_all()
        return rows


def age_sessions(app, **values) -> None:
    with app.app_context():
        db.session.execute(update(StaffSession).values(**values))
        db.session.commit()


def received(sio, name):
    return [e["args"][0] for e in sio.get_received() if e["name"] == name]


def test_the_cookie_names_a_session_not_the_user(app, admin_client):
    [row] = sessions_of(app)
    with app.app_context():
        user = db.session.get(User, row.user_id)
    with admin_client.session_transaction() as session:
        kept = session["_user_id"]
    assert kept != str(user.id) and len(kept) >= 40
    assert row.ended_at is None and row.token_hash != kept  # only its hash is stored


def test_logout_ends_the_session_for_every_copy_of_its_cookie(app, admin_client):
    thief = copy_of(app, admin_client)
    assert not sent_to_login(thief)  # the copy works while the session lives
    response = post_form(admin_client, "/ops/logout")
    assert response.status_code == 303
    assert sent_to_login(admin_client)
    assert sent_to_login(thief)
    [row] = sessions_of(app)
    assert row.ended_at is not None


def test_each_login_is_its_own_session(app, staff):
    first, second = app.test_client(), app.test_client()
    assert login(first, ADMIN).status_code == 303 and login(second, ADMIN).status_code == 303
    assert len(sessions_of(app)) == 2
    post_form(first, "/ops/logout")
    assert sent_to_login(first)
    assert not sent_to_login(second)  # logging out one browser leaves the other logged in


@pytest.mark.parametrize("column", ["last_seen_at", "created_at"])
def test_an_idle_or_old_session_has_ended(app, admin_client, column):
    limit = (timedelta(minutes=app.config["OPS_SESSION_IDLE_MINUTES"]) + sessions.TOUCH_EVERY
             if column == "last_seen_at" else timedelta(hours=app.config["OPS_SESSION_MAX_HOURS"]))
    age_sessions(app, **{column: utcnow() - limit + timedelta(minutes=1)})
    assert not sent_to_login(admin_client)  # just inside the limit
    age_sessions(app, **{column: utcnow() - limit - timedelta(minutes=1)})
    assert sent_to_login(admin_client)
    [row] = sessions_of(app)
    assert row.ended_at is not None


def test_requests_keep_a_session_alive(app, admin_client):
    idle = timedelta(minutes=app.config["OPS_SESSION_IDLE_MINUTES"])
    age_sessions(app, last_seen_at=utcnow() - idle + timedelta(minutes=1))
    before = utcnow()
    assert not sent_to_login(admin_client)
    [row] = sessions_of(app)
    assert before <= row.last_seen_at <= utcnow()  # touched by that request
    recently = utcnow() - timedelta(seconds=5)
    age_sessions(app, last_seen_at=recently)
    assert admin_client.get("/ops/transactions").status_code == 200
    [again] = sessions_of(app)
    assert again.last_seen_at == recently  # not rewritten on every request


@pytest.mark.parametrize("token", ["1", "x" * 500, "\x00", "é" * 10, ""])
def test_odd_session_ids_load_nobody(app, client, staff, token):
    with client.session_transaction() as session:
        session["_user_id"] = token
    assert sent_to_login(client)


def test_logging_out_disconnects_the_sessions_ops_sockets(app, admin_client):
    sio = socketio.test_client(app, flask_test_client=admin_client)
    sio.emit("ops_join")
    assert received(sio, "ops_joined") == [{"room": "ops"}]
    with app.app_context():
        assert db.session.scalar(select(StaffSocket.sid)) is not None
    post_form(admin_client, "/ops/logout")
    assert not sio.is_connected()
    with app.app_context():
        assert db.session.scalar(select(StaffSocket.sid)) is None
    assert list(socketio.server.manager.get_participants("/", "ops")) == []  # nobody left to hear ops events


def test_a_socket_that_leaves_is_forgotten_and_shopper_sockets_are_never_recorded(app, admin_client, client):
    staff_socket = socketio.test_client(app, flask_test_client=admin_client)
    staff_socket.emit("ops_join")
    shopper_socket = socketio.test_client(app, flask_test_client=client)
    with app.app_context():
        assert len(db.session.scalars(select(StaffSocket)).all()) == 1
    staff_socket.disconnect()
    shopper_socket.disconnect()
    with app.app_context():
        assert db.session.scalars(select(StaffSocket)).all() == []


def test_housekeeping_ends_expired_sessions_and_their_sockets(app, admin_client, staff):
    sio = socketio.test_client(app, flask_test_client=admin_client)
    sio.emit("ops_join")
    fresh = app.test_client()
    login(fresh, ADMIN)
    with app.app_context():
        kept_hash = db.session.scalar(select(StaffSession.token_hash).order_by(StaffSession.created_at.desc()))
        idle = timedelta(minutes=app.config["OPS_SESSION_IDLE_MINUTES"], seconds=1) + sessions.TOUCH_EVERY
        db.session.execute(update(StaffSession).where(StaffSession.token_hash != kept_hash)
                           .values(last_seen_at=utcnow() - idle))
        db.session.add(StaffSession(token_hash="0" * 64, user_id=1, created_at=utcnow() - timedelta(days=40),
                                    last_seen_at=utcnow() - timedelta(days=40),
                                    ended_at=utcnow() - timedelta(days=40)))
        db.session.commit()
        prune_expired_records()
        rows = {row.token_hash: row.ended_at for row in db.session.scalars(select(StaffSession))}
    assert not sio.is_connected()  # the idle session's socket was disconnected
    assert "0" * 64 not in rows  # ended long ago: deleted
    assert rows[kept_hash] is None and sum(ended is not None for ended in rows.values()) == 1
    assert not sent_to_login(fresh)


def test_a_logout_racing_the_join_leaves_no_socket_in_the_ops_room(app, admin_client, monkeypatch):
    current_hash = sessions.current_hash

    def logout_lands_first(user):  # the logout reads the session's sockets before this one is recorded
        token_hash = current_hash(user)
        sessions.end_sessions([token_hash], "logout")
        return token_hash

    monkeypatch.setattr(sessions, "current_hash", logout_lands_first)
    sio = socketio.test_client(app, flask_test_client=admin_client)
    sio.emit("ops_join")
    assert received(sio, "ops_error") == [{"error": "unauthorized"}]
    assert list(socketio.server.manager.get_participants("/", "ops")) == []
    with app.app_context():
        assert db.session.scalars(select(StaffSocket)).all() == []
    sio.disconnect()


def test_a_page_that_leaves_while_its_join_is_handled_is_no_fault(app, admin_client, client, monkeypatch, caplog):
    """An ops page closed (or navigated) right after asking to join: the socket is gone before
    the server puts it in the room. Before, that logged an error with a traceback."""
    socket_leaves_during(monkeypatch, sessions, "current_hash")
    caplog.set_level(logging.ERROR)
    other = socketio.test_client(app, flask_test_client=client)  # as in production: not the only socket
    sio = socketio.test_client(app, flask_test_client=admin_client)
    sio.emit("ops_join")
    other.disconnect()
    assert list(socketio.server.manager.get_participants("/", "ops")) == []
    with app.app_context():
        assert db.session.scalars(select(StaffSocket)).all() == []  # its record went with it
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_sockets_of_a_session_ended_by_another_process_are_disconnected_by_housekeeping(app, admin_client):
    """`ops end-sessions` without REDIS_URL ends the session but cannot reach the server's sockets."""
    sio = socketio.test_client(app, flask_test_client=admin_client)
    sio.emit("ops_join")
    age_sessions(app, ended_at=utcnow())  # what the other process wrote; no disconnect reached us
    assert sio.is_connected()
    with app.app_context():
        prune_expired_records()
    assert not sio.is_connected()
    with app.app_context():
        assert db.session.scalars(select(StaffSocket)).all() == []

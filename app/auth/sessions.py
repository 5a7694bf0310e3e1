"""Staff login sessions, kept on the server so that they can end.

A signed cookie cannot be taken back: a copy made before logout would stay valid. So the
cookie holds a random token (Flask-Login's id, through ``User.get_id``), and a
``StaffSession`` row holds its SHA-256 with the session's life. A session ends at logout,
after OPS_SESSION_IDLE_MINUTES without a request, or OPS_SESSION_MAX_HOURS after login;
from then on its cookie loads nobody. The Socket.IO connections it put in the ops room are
recorded and disconnected when it ends, in whichever process holds them (through the Redis
message queue when REDIS_URL is set).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, or_, select, update

from app.extensions import db, join_if_connected, socketio
from app.models import StaffSession, StaffSocket, User
from app.models.clock import plausible_id, utcnow
from app.realtime import OPS_ROOM

log = logging.getLogger(__name__)
TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often per session
KEEP_ENDED = timedelta(days=30)  # ended sessions stay this long, for the record
GIVE_UP_AFTER = timedelta(hours=1)  # a socket still recorded this long after its session ended is gone
TOKEN_MAX_LENGTH = 64


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _limits(now: datetime) -> tuple[datetime, datetime]:
    """(last seen before, created before): a session past either has ended. ``last_seen_at``
    lags requests by up to TOUCH_EVERY, so idleness is counted from that much earlier."""
    config = current_app.config
    return (now - timedelta(minutes=config["OPS_SESSION_IDLE_MINUTES"]) - TOUCH_EVERY,
            now - timedelta(hours=config["OPS_SESSION_MAX_HOURS"]))


def start(user: User) -> None:
    """Open a session for ``user`` and make it the one ``login_user`` will put in the cookie."""
    token = secrets.token_urlsafe(32)
    db.session.add(StaffSession(token_hash=_hash(token), user_id=user.id))
    db.session.commit()
    user.session_token = token


def load(token: str) -> User | None:
    """The user of a live session, or None (unknown, ended, idle too long or too old)."""
    if not plausible_id(token, TOKEN_MAX_LENGTH):
        return None
    row = db.session.get(StaffSession, _hash(token))
    if row is None or row.ended_at is not None:
        return None
    now = utcnow()
    idle_before, created_before = _limits(now)
    if row.last_seen_at < idle_before or row.created_at < created_before:
        end_sessions([row.token_hash], "expired")
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
        db.session.commit()
    user = db.session.get(User, row.user_id)
    if user is not None:
        user.session_token = token
    return user


def current_hash(user: User) -> str | None:
    return _hash(user.session_token) if user.session_token else None


def end_sessions(token_hashes: list[str], why: str) -> int:
    """End these sessions now and disconnect their ops sockets; returns how many sockets.

    The end is committed before the sockets are read: a socket joining at the same moment
    records itself and then checks its session (``join_ops_room``), so one of the two always
    sees the other. A socket's row goes when the socket does (``forget_socket``, in the
    process holding it). Without REDIS_URL only this process's sockets can be reached here;
    the app's own housekeeping disconnects the rest (``disconnect_ended``).
    """
    if not token_hashes:
        return 0
    db.session.execute(update(StaffSession).where(StaffSession.token_hash.in_(token_hashes),
                                                  StaffSession.ended_at.is_(None))
                       .values(ended_at=utcnow()).execution_options(synchronize_session=False))
    db.session.commit()
    sids = list(db.session.scalars(select(StaffSocket.sid).where(StaffSocket.token_hash.in_(token_hashes))))
    db.session.commit()
    _disconnect(sids)
    log.info("%s staff session(s) ended (%s), %s socket(s) disconnected", len(token_hashes), why, len(sids))
    return len(sids)


def _disconnect(sids: list[str]) -> None:
    for sid in sids:
        try:  # through the message queue to whichever process holds it, when there is one
            socketio.server.disconnect(sid, namespace="/")
        except Exception:  # a broken message queue must not keep the session alive
            log.exception("could not disconnect an ops socket of an ended session")


def join_ops_room(sid: str, user: User) -> bool:
    """Record the socket under its session, then join the ops room if the session still lives."""
    token_hash = current_hash(user)
    if token_hash is None:
        return False
    db.session.merge(StaffSocket(sid=sid, token_hash=token_hash))
    db.session.commit()
    ended = db.session.scalar(select(StaffSession.ended_at).where(StaffSession.token_hash == token_hash))
    db.session.commit()
    if ended is not None:  # logged out while joining
        forget_socket(sid)
        return False
    if not join_if_connected(OPS_ROOM, sid):  # the page left before its join was handled
        forget_socket(sid)
        return False
    return True


def end_user_sessions(user_id: int, why: str) -> tuple[int, int]:
    """End every live session of one user; returns (sessions, sockets disconnected)."""
    live = list(db.session.scalars(select(StaffSession.token_hash)
                                   .where(StaffSession.user_id == user_id, StaffSession.ended_at.is_(None))))
    return len(live), end_sessions(live, why)


def forget_socket(sid: str) -> None:
    db.session.execute(delete(StaffSocket).where(StaffSocket.sid == sid).execution_options(synchronize_session=False))
    db.session.commit()


def end_expired_sessions() -> int:
    """Housekeeping: end the sessions past their limits, disconnect every socket still recorded
    under an ended session, and delete sessions that ended more than KEEP_ENDED ago; returns
    how many sessions it ended. The ends are committed before the sockets are read, as in
    ``end_sessions``."""
    now = utcnow()
    idle_before, created_before = _limits(now)
    ended = db.session.execute(
        update(StaffSession)
        .where(StaffSession.ended_at.is_(None),
               or_(StaffSession.last_seen_at < idle_before, StaffSession.created_at < created_before))
        .values(ended_at=now).execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    disconnect_ended(now)
    db.session.execute(delete(StaffSession).where(StaffSession.ended_at < now - KEEP_ENDED)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    if ended:
        log.info("%s staff session(s) ended (expired)", ended)
    return ended


def disconnect_ended(now: datetime) -> None:
    """Disconnect sockets still recorded under ended sessions (just expired, or ended by a
    process that could not reach them, such as the CLI without REDIS_URL); forget those that
    outlived GIVE_UP_AFTER, whose process must be gone."""
    ended = select(StaffSession.token_hash).where(StaffSession.ended_at.is_not(None))
    _disconnect(list(db.session.scalars(select(StaffSocket.sid).where(StaffSocket.token_hash.in_(ended)))))
    long_ended = select(StaffSession.token_hash).where(StaffSession.ended_at < now - GIVE_UP_AFTER)
    db.session.execute(delete(StaffSocket).where(StaffSocket.token_hash.in_(long_ended))
                       .execution_options(synchronize_session=False))
    db.session.commit()

"""The ops room over Socket.IO: only logged-in staff may join it.

apply_status (through app.realtime.notify_status) emits ``transaction_updated``
``{"transaction_id", "status"}`` to the room after every committed change; the ops pages
refresh the affected row or transaction when they hear it. A socket in the room is recorded
under its staff session, which disconnects it when it ends (app.auth.sessions).
"""

from __future__ import annotations

import logging

from flask import request
from flask_login import current_user
from flask_socketio import rooms

from app.auth import sessions
from app.extensions import db, socketio
from app.realtime import OPS_ROOM

log = logging.getLogger(__name__)


def register_events() -> None:
    """Attach ``ops_join`` (staff join the ops room, anyone else gets ``ops_error``) and
    ``disconnect`` (an ops socket's record goes with it)."""

    @socketio.on("ops_join")
    def on_ops_join(*_args):
        try:
            # Recorded under its session first, so that logging out disconnects it.
            if not (current_user.is_authenticated and sessions.join_ops_room(request.sid, current_user)):
                socketio.emit("ops_error", {"error": "unauthorized"}, to=request.sid)
                return
            socketio.emit("ops_joined", {"room": OPS_ROOM}, to=request.sid)
            log.debug("ops user id=%s joined the ops room", current_user.id)
        finally:
            db.session.remove()

    @socketio.on("disconnect")
    def on_disconnect(*_args):
        if OPS_ROOM not in rooms():
            return  # a shopper's socket: nothing was recorded
        try:
            sessions.forget_socket(request.sid)
        finally:
            db.session.remove()

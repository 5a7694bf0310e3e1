"""The ops room over Socket.IO: only logged-in staff may join it.

apply_status (through app.realtime.notify_status) emits ``transaction_updated``
``{"transaction_id", "status"}`` to the room after every committed change; the ops pages
refresh the affected row or transaction when they hear it.
"""

from __future__ import annotations

import logging

from flask import request
from flask_login import current_user
from flask_socketio import join_room

from app.extensions import db, socketio
from app.realtime import OPS_ROOM

log = logging.getLogger(__name__)


def register_events() -> None:
    """Attach the ``ops_join`` handler: staff join the ops room, anyone else gets ``ops_error``."""

    @socketio.on("ops_join")
    def on_ops_join(*_args):
        try:
            if not current_user.is_authenticated:
                socketio.emit("ops_error", {"error": "unauthorized"}, to=request.sid)
                return
            join_room(OPS_ROOM)
            socketio.emit("ops_joined", {"room": OPS_ROOM}, to=request.sid)
            log.debug("ops user id=%s joined the ops room", current_user.id)
        finally:
            db.session.remove()

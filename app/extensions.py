"""Flask extensions, created unbound here and bound to the app in create_app."""

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_socketio import SocketIO, join_room
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every model of the app."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
socketio = SocketIO()
login_manager = LoginManager()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


def join_if_connected(room: str, sid: str | None = None) -> bool:
    """Put the socket (this event's, or ``sid``) in ``room``; False when it left before its join
    was handled (a page closed or navigated right after asking), which is no fault."""
    try:
        join_room(room, sid=sid, namespace="/")
    except ValueError:  # python-socketio: "sid is not connected to requested namespace"
        return False
    return True

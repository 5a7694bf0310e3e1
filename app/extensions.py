"""Flask extensions, created unbound here and bound to the app in create_app."""

from flask import current_app
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
# One budget per kind of work, per client address, whichever route does it: the JSON API and
# the pages' forms place orders and start payments through the same counters.
orders_limit = limiter.shared_limit(lambda: current_app.config["RATELIMIT_ORDERS"], scope="orders")
initiate_limit = limiter.shared_limit(lambda: current_app.config["RATELIMIT_INITIATE"], scope="initiate")


def join_if_connected(room: str, sid: str | None = None) -> bool:
    """Put the socket (this event's, or ``sid``) in ``room``; False when it left before its join
    was handled (a page closed or navigated right after asking), which is no fault."""
    from flask import request

    if not socketio.server.manager.is_connected(sid or request.sid, "/"):
        return False
    try:
        join_room(room, sid=sid, namespace="/")
    except (ValueError, KeyError):  # python-socketio, when it left between the check and the join
        return False
    return True

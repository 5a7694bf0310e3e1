"""Flask extensions, created unbound here and bound to the app in create_app."""

import ipaddress

from flask import current_app, request
from flask_limiter import Limiter
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_socketio import SocketIO, join_room
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase

from app.security import peer_ip


class Base(DeclarativeBase):
    """Declarative base of every model of the app."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
socketio = SocketIO()
login_manager = LoginManager()
csrf = CSRFProtect()


def client_key() -> str:
    """Who a rate limit counts: the client's address, and for IPv6 its /64 network. One host
    is routinely given a whole /64 and can send from any address in it, so counting single
    IPv6 addresses would give it 2**64 budgets (staff-login guesses without end)."""
    address = request.remote_addr or "127.0.0.1"
    ip = peer_ip(address)
    if ip is None:
        return address
    if ip.version == 4:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


limiter = Limiter(key_func=client_key, default_limits=[])
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

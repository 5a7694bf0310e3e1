"""Ops staff authentication: login pages (app.auth.routes) and the Flask-Login user loader."""

from __future__ import annotations

from flask import Flask

from app.auth import sessions
from app.auth.routes import bp
from app.extensions import login_manager

__all__ = ["bp", "init_app"]


def init_app(app: Flask) -> None:
    """Point Flask-Login at the staff login page and load users through their live sessions."""
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to see the ops console."

    @login_manager.user_loader
    def load_user(session_token: str):
        # The cookie names a server-side session (app.auth.sessions), never the user directly.
        return sessions.load(session_token)

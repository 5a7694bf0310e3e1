"""Ops staff authentication: login pages (app.auth.routes) and the Flask-Login user loader."""

from __future__ import annotations

from flask import Flask

from app.auth.routes import bp
from app.extensions import db, login_manager

__all__ = ["bp", "init_app"]


def init_app(app: Flask) -> None:
    """Point Flask-Login at the staff login page and load users by id."""
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to see the ops console."

    @login_manager.user_loader
    def load_user(user_id: str):
        from app.models import User

        return db.session.get(User, int(user_id)) if user_id.isascii() and user_id.isdigit() else None

"""Ops staff authentication: login pages (app.auth.routes) and the Flask-Login user loader."""

from __future__ import annotations

from flask import Flask, flash, redirect, request, url_for

from app.auth import sessions
from app.auth.routes import bp
from app.extensions import login_manager

__all__ = ["bp", "init_app"]


def init_app(app: Flask) -> None:
    """Point Flask-Login at the staff login page and load users through their live sessions."""
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to see the ops console."

    @login_manager.unauthorized_handler
    def send_to_login():
        # A form sent after the session ended cannot be sent again by a redirect (its address
        # answers POST only): after login, return to the page the form was on instead.
        if request.method == "GET":
            target = request.full_path.rstrip("?")
        elif (request.view_args or {}).get("transaction_id"):
            target = url_for("ops.transaction", transaction_id=request.view_args["transaction_id"])
        else:
            target = url_for("ops.transactions")
        flash(login_manager.login_message)
        return redirect(url_for("auth.login", next=target))

    @login_manager.user_loader
    def load_user(session_token: str):
        # The cookie names a server-side session (app.auth.sessions), never the user directly.
        return sessions.load(session_token)

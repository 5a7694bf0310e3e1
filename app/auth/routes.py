"""Staff login and logout under /ops (the ops console itself lives in app.ops)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user

from app.auth import accounts, sessions
from app.auth.forms import LoginForm
from app.extensions import limiter

bp = Blueprint("auth", __name__, url_prefix="/ops")


def _safe_next(target: str | None) -> str:
    """Where to go after login: a path inside /ops on this site, never another origin."""
    if target:
        try:
            parts = urlsplit(target)
        except ValueError:  # not a URL at all ("//[", say)
            return url_for("ops.transactions")
        if (not parts.scheme and not parts.netloc and parts.path.startswith("/ops") and "\\" not in target
                and target.isprintable()):  # no CR, LF or other control character for the Location header
            return target
    return url_for("ops.transactions")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_LOGIN"], methods=["POST"])  # per client address
def login():
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        user = accounts.authenticate(form.email.data, form.password.data)
        if user is not None:
            sessions.start(user)
            login_user(user)
            return redirect(_safe_next(request.args.get("next")), code=303)
        error = "Email or password is incorrect."
    elif request.method == "POST":
        error = "Enter your email and password."
    return render_template("auth/login.html", form=form, error=error)


@bp.get("/logout")
def logout_page():
    """A typed or bookmarked /ops/logout: ask, since only a POST with the form's token logs out."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return render_template("auth/logout.html")


@bp.post("/logout")
def logout():
    # CSRFProtect has checked the form's token before this runs. Ending the session on the
    # server makes every copy of its cookie worthless and disconnects its ops sockets.
    token_hash = sessions.current_hash(current_user) if current_user.is_authenticated else None
    if token_hash:
        sessions.end_sessions([token_hash], "logout")
    logout_user()
    flash("You are logged out.")
    return redirect(url_for("auth.login"), code=303)

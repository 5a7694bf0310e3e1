"""Background jobs: reconciliation and expiry as plain functions, and the loop that runs them."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Start the in-process reconciliation loop when SCHEDULER_ENABLED (once per process).

    Not in tests (TestConfig turns it off), not in the Werkzeug reloader's parent, not under
    `flask` commands other than `run`; see app.jobs.scheduler.reason_not_to_start.
    """
    if not app.config.get("SCHEDULER_ENABLED"):
        return
    from app.jobs.scheduler import start_in_background

    start_in_background(app)

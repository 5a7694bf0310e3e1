"""`flask --app wsgi payments ...` commands."""

from __future__ import annotations

import signal

import click
from flask import current_app
from flask.cli import AppGroup

from app.cli import require_schema

payments_cli = AppGroup("payments", help="Reconciliation and expiry of payments.")


@payments_cli.command("reconcile")
def reconcile_command() -> None:
    """Run one reconciliation pass now and print its one-line summary."""
    from app.jobs.reconcile import run_pass

    require_schema()
    click.echo(run_pass().line())


@payments_cli.command("scheduler")
def scheduler_command() -> None:
    """Run the reconciliation loop in the foreground until Ctrl-C or SIGTERM.

    For deployments that run the loop as its own process (then set SCHEDULER_ENABLED=0 for
    the web processes). Runs a pass at once, then every SCHEDULER_INTERVAL seconds.
    """
    from app.jobs.scheduler import SignalStop, run_loop

    require_schema()
    app = current_app._get_current_object()
    stop = SignalStop()  # not a threading.Event: its set() may deadlock inside a signal handler

    received: list[str] = []

    def request_stop(signum, _frame) -> None:
        # Only plain assignments here: no lock, no I/O (the interrupted thread may hold either).
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    interval = app.config["SCHEDULER_INTERVAL"]
    click.echo(f"reconciliation loop: a pass every {interval}s; Ctrl-C or SIGTERM stops it", err=True)
    run_loop(app, stop, interval=interval, run_first=True, on_summary=lambda s: click.echo(s.line()))
    click.echo(f"stopped after the current pass ({', '.join(received) or 'no signal'})", err=True)

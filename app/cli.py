"""Command-line entry points: `flask --app wsgi shop seed`, `payments ...`, `ops ...`, `sandbox ...`."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

shop_cli = AppGroup("shop", help="Catalog and demo data.")


def unreachable(exc) -> click.ClickException:
    """The sentence for a database that did not answer (an OperationalError), for any command."""
    first_line = str(exc.orig).strip().splitlines()[0] if getattr(exc, "orig", None) else type(exc).__name__
    return click.ClickException(f"cannot reach the database: {first_line}")


def require_schema() -> None:
    """Stop with a sentence, not a traceback, when the database is unreachable or not migrated."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    from app.extensions import db

    try:
        migrated = inspect(db.engine).has_table("transactions")
    except OperationalError as exc:
        raise unreachable(exc) from None
    if not migrated:
        raise click.ClickException("the database has no tables yet: run `flask --app wsgi db upgrade` first")


@shop_cli.command("seed")
def seed_command() -> None:
    """Insert the demo catalog (idempotent)."""
    from app.services.catalog import seed_demo_catalog

    require_schema()
    added = seed_demo_catalog()
    click.echo(f"demo catalog: {added} product(s) added")


def init_app(app: Flask) -> None:
    from app.jobs.cli import payments_cli
    from app.ops.cli import ops_cli
    from app.sandbox.cli import sandbox as sandbox_cli

    app.cli.add_command(shop_cli)
    app.cli.add_command(payments_cli)
    app.cli.add_command(ops_cli)
    app.cli.add_command(sandbox_cli)

"""Command-line entry points: `flask --app wsgi shop seed`, `payments ...`, `ops ...`, `sandbox ...`."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

shop_cli = AppGroup("shop", help="Catalog and demo data.")


@shop_cli.command("seed")
def seed_command() -> None:
    """Insert the demo catalog (idempotent)."""
    from app.services.catalog import seed_demo_catalog

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

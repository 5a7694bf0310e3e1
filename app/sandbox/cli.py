"""``flask --app wsgi sandbox serve``: run the sandbox gateway alone, in the foreground.

The main app registers ``sandbox`` (this click group) on its CLI.
"""

from __future__ import annotations

import logging

import click

from app.sandbox import server


@click.group("sandbox")
def sandbox() -> None:
    """The built-in sandbox payment gateway."""


@sandbox.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=5001, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
def serve(host: str, port: int) -> None:
    """Serve the gateway API, hosted page and dashboard until Ctrl-C."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # said once the port is bound: a busy port gets only the error
        server.serve_forever(host, port, on_ready=lambda url: click.echo(
            f"Sandbox gateway on {url} (dashboard: /_admin/). Ctrl-C stops it."))
    except OSError as exc:
        raise click.ClickException(f"Cannot serve on {host}:{port}: {exc.strerror or exc}") from None

"""`flask --app wsgi ops ...` commands."""

import click
from flask.cli import AppGroup

ops_cli = AppGroup("ops", help="Ops staff accounts.")


@ops_cli.command("create-user")
@click.argument("email")
@click.option("--role", type=click.Choice(["viewer", "admin"]), default="viewer", show_default=True,
              help="viewer reads everything; admin may also act (re-check, cancel, refund, review).")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help="The password (prompted, with confirmation, when absent).")
def create_user_command(email: str, role: str, password: str) -> None:
    """Create an ops user who can log in at /ops/login."""
    from app.auth.accounts import AccountError, create_user
    from app.cli import require_schema

    require_schema()
    try:
        user = create_user(email, password, role)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"ops user {user.email} created with role {user.role}")

"""`flask --app wsgi ops ...` commands."""

import click
from flask import current_app
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


@ops_cli.command("end-sessions")
@click.argument("email")
def end_sessions_command(email: str) -> None:
    """Log a staff member out everywhere: end their sessions and disconnect their ops sockets."""
    from app.auth import sessions
    from app.auth.accounts import find_user
    from app.cli import require_schema

    require_schema()
    user = find_user(email)
    if user is None:
        raise click.ClickException(f"there is no ops user with email {email}.")
    ended, sockets = sessions.end_user_sessions(user.id, "ended from the command line")
    reach = ("disconnected" if current_app.config.get("REDIS_URL")
             else "to be disconnected by the app at its next scheduler pass (no REDIS_URL reaches it from here)")
    click.echo(f"{ended} session(s) of {user.email} ended; {sockets} ops socket(s) {reach}")

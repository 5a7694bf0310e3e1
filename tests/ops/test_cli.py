"""`flask --app wsgi ops create-user EMAIL [--role viewer|admin] [--password P]` and `ops end-sessions EMAIL`."""

import pytest
from sqlalchemy import select
from werkzeug.security import check_password_hash

from app.extensions import db
from app.models import User
from tests.ops.conftest import ADMIN, VIEWER, csrf_token, login


def user(app, email):
    with app.app_context():
        return db.session.scalar(select(User).where(User.email == email))


def test_create_user_defaults_to_viewer_and_hashes_the_password(app, runner):
    result = runner.invoke(args=["ops", "create-user", "Ops@Example.test", "--password", "s3cret-enough"])
    assert result.exit_code == 0, result.output
    assert "ops user ops@example.test created with role viewer" in result.output
    stored = user(app, "ops@example.test")
    assert stored.role == "viewer"
    assert stored.password_hash != "s3cret-enough" and check_password_hash(stored.password_hash, "s3cret-enough")


def test_created_admin_can_log_in(app, runner):
    result = runner.invoke(args=["ops", "create-user", "boss@example.test", "--role", "admin", "--password", "pw-long-enough"])
    assert result.exit_code == 0, result.output
    assert user(app, "boss@example.test").role == "admin"
    client = app.test_client()
    response = client.post("/ops/login", data={"csrf_token": csrf_token(client), "email": "boss@example.test",
                                                "password": "pw-long-enough"})
    assert response.status_code == 303


def test_password_is_prompted_with_confirmation(app, runner):
    result = runner.invoke(args=["ops", "create-user", "p@example.test"], input="typed-password\ntyped-password\n")
    assert result.exit_code == 0, result.output
    assert "typed-password" not in result.output  # hidden input
    assert check_password_hash(user(app, "p@example.test").password_hash, "typed-password")


def test_mismatched_confirmation_asks_again(app, runner):
    result = runner.invoke(args=["ops", "create-user", "m@example.test"],
                           input="first-password\nsecond-password\nfinal-password\nfinal-password\n")
    assert result.exit_code == 0, result.output
    # click's own refusal of the first pair, once; then it asks for both again
    assert result.output.count("Error: The two entered values do not match.") == 1, result.output
    assert result.output.count("Repeat for confirmation: ") == 2, result.output
    assert check_password_hash(user(app, "m@example.test").password_hash, "final-password")


def test_duplicate_email_is_a_clear_error(app, runner):
    assert runner.invoke(args=["ops", "create-user", "dup@example.test", "--password", "pw-long-enough"]).exit_code == 0
    result = runner.invoke(args=["ops", "create-user", "DUP@example.test", "--role", "admin", "--password", "pw-long-enough"])
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert user(app, "dup@example.test").role == "viewer"


def test_bad_role_is_a_clear_error(app, runner):
    result = runner.invoke(args=["ops", "create-user", "r@example.test", "--role", "root", "--password", "pw-long-enough"])
    assert result.exit_code == 2
    assert "Invalid value for '--role'" in result.output and "viewer" in result.output
    assert user(app, "r@example.test") is None


@pytest.mark.parametrize("email", ["not-an-email", "@", "a@", "@example.test", "x@y@z", "a@.example", "a@example."])
def test_bad_email_is_refused(app, runner, email):
    result = runner.invoke(args=["ops", "create-user", email, "--password", "pw-long-enough"])
    assert result.exit_code == 1 and "not an email address" in result.output
    with app.app_context():
        assert db.session.scalar(select(User)) is None


def test_short_password_is_refused(app, runner):
    result = runner.invoke(args=["ops", "create-user", "s@example.test", "--password", "short"])
    assert result.exit_code == 1 and "at least 8 characters" in result.output


def test_commands_on_a_database_never_upgraded_say_so_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}", "SCHEDULER_ENABLED": "0"}
    for args in (["ops", "create-user", "a@example.test", "--password", "pw-long-enough"], ["shop", "seed"],
                 ["payments", "reconcile"], ["payments", "scheduler"]):
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, args
        assert "no tables yet: run `flask --app wsgi db upgrade` first" in done.stderr, args
        assert "Traceback" not in done.stderr, args


def test_end_sessions_logs_a_user_out_everywhere(app, runner, staff):
    browsers = [app.test_client() for _ in range(3)]
    for browser, email in zip(browsers, (ADMIN, ADMIN, VIEWER)):
        assert login(browser, email).status_code == 303
    result = runner.invoke(args=["ops", "end-sessions", ADMIN.upper()])
    assert result.exit_code == 0, result.output
    assert f"2 session(s) of {ADMIN} ended; 0 ops socket(s) to be disconnected by the app" in result.output
    assert [browser.get("/ops/transactions").status_code for browser in browsers] == [302, 302, 200]


def test_end_sessions_of_nobody_says_so(app, runner):
    result = runner.invoke(args=["ops", "end-sessions", "nobody@example.test"])
    assert result.exit_code == 1 and "there is no ops user with email nobody@example.test" in result.output

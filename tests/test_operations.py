"""Running it: settings the app cannot start with stop it in one line (and stop gunicorn's master
too), Redis going away does not take checkout with it, probes tell an unmigrated database, and
the log says which payment each line is about."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import _DroppedSocketMessage
from app.extensions import db
from config import ConfigurationError
from tests.conftest import place_order, post_webhook, prepare_database, start_payment, status_event

ROOT = Path(__file__).resolve().parent.parent
REAL = {"SECRET_KEY": "k" * 40, "DATABASE_URL": "postgresql+psycopg://app@db.internal/shop",
        "PAYMENT_GATEWAY_API_KEY": "sk_live_real", "PAYMENT_WEBHOOK_SECRET": "whsec_cmVhbC1zZWNyZXQ=",
        "PAYMENT_GATEWAY_URL": "https://gateway.example"}


def run(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """A command of the project's in a clean environment (nothing of the test run's leaks in)."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
             "SCHEDULER_ENABLED": "0", **env}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=timeout)


def closed_port() -> tuple[socket.socket, int]:
    """A loopback port that refuses connections for as long as the returned socket is open."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
    return held, held.getsockname()[1]


@pytest.mark.parametrize("env, said", [
    ({"APP_ENV": "prod"}, "APP_ENV must be development or production (or testing, the test suite's), got 'prod'"),
    ({"APP_ENV": "staging"}, "APP_ENV must be development or production (or testing, the test suite's), got 'staging'"),
    ({"PAYMENT_EXPIRES_AFTER": "abc"}, "PAYMENT_EXPIRES_AFTER must be a whole number, got 'abc'"),
    ({"FULFILLMENT_HANDLER": "nosuchmodule:ship"}, "FULFILLMENT_HANDLER 'nosuchmodule:ship' cannot be loaded"),
    ({"FULFILLMENT_HANDLER": "json:no_such_function"}, "FULFILLMENT_HANDLER 'json:no_such_function' cannot be"),
    ({"DATABASE_URL": "postgres://app@db.internal/shop"}, "DATABASE_URL is not a database URL this app can use"),
    ({"DATABASE_URL": "notaurl"}, "DATABASE_URL is not a database URL this app can use"),
    ({"DATABASE_URL": "mysql://app@db.internal/shop"}, "DATABASE_URL is not a database URL this app can use"),
    ({"PAYMENT_WEBHOOK_SECRET": "whsec_!!!notbase64"}, "PAYMENT_WEBHOOK_SECRET, secret 1 of 1"),
    ({"APP_ENV": "production"}, "refusing to start in production: SECRET_KEY must be set."),
])
def test_a_setting_it_cannot_start_with_is_said_in_one_line(tmp_path, env, said):
    done = run(["flask", "--app", "wsgi", "payments", "reconcile"],
               {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **env})
    assert done.returncode == 3, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


@pytest.mark.parametrize("workers", ["1", "3"])
def test_refused_production_settings_stop_gunicorn_before_any_worker(workers):
    """Before, the worker exited with 1 and gunicorn booted another, several times a second, for
    ever; several workers refusing at once made the master exit 1 with tracebacks."""
    done = run(["gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "wsgi:app"],
               {"APP_ENV": "production", **REAL, "SECRET_KEY": "", "REDIS_URL": "redis://127.0.0.1:1/0",
                "WEB_CONCURRENCY": workers})
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert output.count("refusing to start in production: SECRET_KEY must be set.") == 1
    assert "Booting worker" not in output and "Traceback" not in output


def test_a_worker_that_cannot_start_stops_gunicorn(tmp_path):
    """What only the app finds (here a database driver that is not installed) stops the master
    too: the worker exits with gunicorn's "failed to boot" status instead of being restarted."""
    done = run(["gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0", "wsgi:app"],
               {"DATABASE_URL": "mysql://app@db.internal/shop"})
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Worker failed to boot" in output and output.count("Booting worker") == 1
    assert output.count("DATABASE_URL is not a database URL this app can use") == 1


@pytest.mark.parametrize("change, named", [
    ({"SECRET_KEY": "short-but-set"}, "SECRET_KEY must be at least 32 characters"),
    ({"PAYMENT_WEBHOOK_SECRET": "cmVhbC1zZWNyZXQ="}, "PAYMENT_WEBHOOK_SECRET must be whsec_"),
])
def test_production_refuses_weak_or_misshapen_secrets(change, named):
    done = run(["flask", "--app", "wsgi", "payments", "reconcile"], {"APP_ENV": "production", **REAL, **change})
    assert done.returncode == 3 and named in done.stderr, done.stderr


def test_a_wrong_fulfillment_handler_stops_the_start(make_app):
    with pytest.raises(ConfigurationError, match="FULFILLMENT_HANDLER 'nosuchmodule:ship' cannot be loaded"):
        make_app(FULFILLMENT_HANDLER="nosuchmodule:ship")


def test_workers_of_one_development_server_share_its_random_secret_key():
    """Several workers (REDIS_URL) and no SECRET_KEY: a form signed by one is accepted by another."""
    code = ("import os, runpy; settings = runpy.run_path('gunicorn.conf.py'); "
            "print(settings['workers'], os.environ.get('CHECKOUT_DEV_SECRET_KEY', ''))")
    multi = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={"PATH": os.environ["PATH"], "REDIS_URL": "redis://127.0.0.1:6379/0",
                                "WEB_CONCURRENCY": "2"}).stdout.split()
    single = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"]}).stdout.split()
    assert multi[0] == "2" and len(multi[1]) == 64
    assert single[0] == "1" and len(single[1]) == 64 and single[1] != multi[1]  # one per server start
    key = multi[1]
    read = "from config import Config, ProductionConfig as P; print(Config.SECRET_KEY); print(P.problems())"
    out = subprocess.run([sys.executable, "-c", read], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PATH": os.environ["PATH"], "CHECKOUT_DEV_SECRET_KEY": key}).stdout.splitlines()
    assert out[0] == key
    assert "SECRET_KEY must be set." in out[1]  # production never takes the drawn key for a real one


def test_checkout_keeps_taking_orders_while_the_rate_limit_store_is_down(make_app, database_url):
    held, port = closed_port()
    with held:
        app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{port}/0",
                       RATELIMIT_ORDERS="2/minute")
        prepare_database(app, database_url)
        client = app.test_client()
        codes = [client.post("/api/orders", json={"items": [{"sku": "TEE-BLACK", "quantity": 1}]}).status_code
                 for _ in range(3)]
    assert codes == [201, 201, 429]  # limited from memory meanwhile, never a 500


def test_retry_after_is_sent_only_with_a_refusal(make_app, database_url):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://", RATELIMIT_ORDERS="1/minute")
    prepare_database(app, database_url)
    client = app.test_client()
    body = {"items": [{"sku": "TEE-BLACK", "quantity": 1}]}
    allowed, refused = client.post("/api/orders", json=body), client.post("/api/orders", json=body)
    assert allowed.status_code == 201 and "Retry-After" not in allowed.headers
    assert allowed.headers["X-RateLimit-Remaining"] == "0"
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


def _revisions() -> tuple[str, str]:
    """This code's newest migration and its first one."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(ROOT / "migrations"))
    [head] = script.get_heads()
    return head, list(script.walk_revisions())[-1].revision


def _stamp(app, revision: str | None) -> None:
    with app.app_context():
        db.session.execute(sa.text("CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32) NOT NULL)"))
        db.session.execute(sa.text("DELETE FROM alembic_version"))
        if revision:
            db.session.execute(sa.text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
        db.session.commit()


def test_readyz_is_not_ready_on_a_database_without_the_schema(make_app, tmp_path):
    app = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'empty.db'}")
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 503
    assert "db upgrade" in answer.get_json()["checks"]["database"]


def test_readyz_is_not_ready_until_the_newest_migration_has_run(make_app, database_url):
    app = make_app()
    prepare_database(app, database_url)
    try:
        head, first = _revisions()
        _stamp(app, first)
        behind = app.test_client().get("/readyz")
        assert behind.status_code == 503
        assert f"schema at {first}, this code needs {head}" in behind.get_json()["checks"]["database"]
        _stamp(app, head)
        assert app.test_client().get("/readyz").status_code == 200
        _stamp(app, "9999_from_a_newer_release")  # migrated first, as a deploy does: old instances stay ready
        assert app.test_client().get("/readyz").status_code == 200
    finally:
        with app.app_context():
            db.session.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
            db.session.commit()


def test_db_upgrade_says_in_one_line_that_the_database_does_not_answer():
    held, port = closed_port()
    with held:
        done = run(["flask", "--app", "wsgi", "db", "upgrade"],
                   {"DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing"})
    assert done.returncode == 1
    assert "Error: cannot reach the database:" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_webhook_log_lines_name_the_payment(app, client, gateway, caplog):
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    caplog.set_level(logging.INFO, logger="app")
    event = status_event(tx_id, "success", order["total"])
    post_webhook(client, event, msg_id="msg_twice")
    post_webhook(client, event, msg_id="msg_twice")
    unknown = status_event(tx_id, "success", order["total"])
    unknown["data"]["status"] = "chargeback_pending"
    assert post_webhook(client, unknown, msg_id="msg_odd").get_json()["outcome"] == "ignored"
    lines = [r.getMessage() for r in caplog.records]
    assert f"txn={tx_id} webhook msg_twice duplicate, ignored" in lines
    assert any(line.startswith(f"txn={tx_id} webhook msg_odd ignored") for line in lines)


def test_an_idle_reconciliation_pass_is_not_logged_as_news(app, caplog):
    from app.jobs.reconcile import run_pass

    caplog.set_level(logging.DEBUG, logger="app")
    with app.app_context():
        summary = run_pass()
    assert summary.due == 0
    [line] = [r for r in caplog.records if r.getMessage().startswith("reconcile: due=0")]
    assert line.levelno == logging.DEBUG


def test_a_foreign_origin_on_the_socket_is_a_warning_not_an_error():
    said = ("https://elsewhere.example is not an accepted origin. (further occurrences of this error will be "
            "logged with level INFO)")  # engine.io's words
    record = logging.LogRecord("engineio.server", logging.ERROR, __file__, 1, said, None, None)
    assert _DroppedSocketMessage().filter(record) and record.levelno == logging.WARNING


def test_a_body_over_the_limit_does_not_upset_the_rate_limiter(make_app, database_url, caplog):
    """Reading the body for the rate limit's exemption raised inside Flask-Limiter, which took
    it for its store failing: a false "storage unreachable" and tracebacks, per request."""
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://")
    prepare_database(app, database_url)
    caplog.set_level(logging.INFO)
    answer = app.test_client().post("/payment-callback", data=b"x" * (70 * 1024),
                                    headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.get_json()["error"] == "payload_too_large"
    said = [r.getMessage() for r in caplog.records if r.name.startswith("flask-limiter")]
    # (the limiter is one object per process: "storage recovered" may follow an earlier test's outage)
    assert not [line for line in said if "unreachable" in line or "Failed to rate limit" in line], said

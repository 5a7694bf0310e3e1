"""Contract section 1, the configuration table: defaults that other tests do not pin down.

Configuration is read from the environment once, when ``config`` is imported, so each default is
read in a process of its own started with exactly the environment the case needs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import place_order, post_webhook, prepare_database, start_payment, status_event

ROOT = Path(__file__).resolve().parents[1]
# Variables of ours that must not leak into the processes below from the one running the tests.
OURS = ("SANDBOX_", "PAYMENT_", "DATABASE_URL", "APP_ENV", "SECRET_KEY", "REDIS_URL", "SCHEDULER_", "LOG_LEVEL",
        "FULFILLMENT_", "WEB_CONCURRENCY", "FLASK_", "CHECKOUT_GEVENT", "SOCKETIO_")


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter with a clean environment plus ``env``; it prints JSON last."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- REDIS_URL: without it gunicorn runs one worker ----------------------------------------------------

GUNICORN_WORKERS = """
import json, sys
from gunicorn.app.wsgiapp import WSGIApplication
sys.argv = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
app = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]")  # reads the config file as gunicorn does
print(json.dumps({"workers": app.cfg.workers}))
"""


@pytest.mark.parametrize("env", [{}, {"WEB_CONCURRENCY": "3"}], ids=["nothing set", "WEB_CONCURRENCY=3"])
def test_without_redis_url_gunicorn_runs_one_worker(env):
    assert run_python(GUNICORN_WORKERS, **env)["workers"] == 1


def test_with_redis_url_gunicorn_may_run_several_workers():
    configured = run_python(GUNICORN_WORKERS, REDIS_URL="redis://127.0.0.1:6379/0", WEB_CONCURRENCY="3")
    assert configured["workers"] == 3
    default = run_python(GUNICORN_WORKERS, REDIS_URL="redis://127.0.0.1:6379/0")
    assert default["workers"] >= 1


def test_gunicorns_own_settings_come_from_the_env_file_too(tmp_path):
    """REDIS_URL in .env made the app use Redis while gunicorn, reading only the process's
    environment, still ran one worker; PORT and WEB_CONCURRENCY there were ignored too."""
    shutil.copy(ROOT / "gunicorn.conf.py", tmp_path / "gunicorn.conf.py")
    (tmp_path / ".env").write_text("REDIS_URL=redis://127.0.0.1:6379/0\nWEB_CONCURRENCY=2\nPORT=5999\n")
    read = f"import json, runpy; s = runpy.run_path({str(tmp_path / 'gunicorn.conf.py')!r}); " \
           "print(json.dumps({'workers': s['workers'], 'bind': s['bind']}))"
    assert run_python(read) == {"workers": 2, "bind": "127.0.0.1:5999"}


# -- SECRET_KEY: random per process in development --------------------------------------------------

DEV_SECRET_KEY = """
import json
from app import create_app
app = create_app()
print(json.dumps({"env": app.config["ENV_NAME"], "key": app.config["SECRET_KEY"]}))
"""


def test_in_development_each_process_gets_its_own_random_secret_key(tmp_path):
    # the scheduler off: these processes only build the app
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'dev.db'}", "SCHEDULER_ENABLED": "0"}
    first, second = run_python(DEV_SECRET_KEY, **env), run_python(DEV_SECRET_KEY, **env)
    assert first["env"] == second["env"] == "development"
    assert isinstance(first["key"], str) and isinstance(second["key"], str)
    assert len(first["key"]) >= 32 and len(second["key"]) >= 32
    assert first["key"] != second["key"]


def test_a_configured_secret_key_is_used(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'dev.db'}", "SCHEDULER_ENABLED": "0",
           "SECRET_KEY": "a-configured-secret-key"}
    assert run_python(DEV_SECRET_KEY, **env)["key"] == "a-configured-secret-key"


# -- SCHEDULER_ENABLED: 1 in dev and prod, 0 in tests -------------------------------------------------

SCHEDULER_DEFAULTS = """
import json
from config import Config, ProductionConfig, TestConfig, config_by_name
print(json.dumps({"development": Config.SCHEDULER_ENABLED, "production": ProductionConfig.SCHEDULER_ENABLED,
                  "testing": TestConfig.SCHEDULER_ENABLED, "by_default": config_by_name().SCHEDULER_ENABLED}))
"""


def test_the_scheduler_is_on_by_default_in_development_and_production_and_off_in_tests():
    assert run_python(SCHEDULER_DEFAULTS) == {"development": True, "production": True, "testing": False,
                                              "by_default": True}


def test_scheduler_enabled_0_turns_it_off():
    found = run_python(SCHEDULER_DEFAULTS, SCHEDULER_ENABLED="0")
    assert (found["development"], found["production"]) == (False, False)


# -- FULFILLMENT_HANDLER: built-in, logs the fulfillment ------------------------------------------------

HANDLER_DEFAULTS = """
import json
from config import Config, ProductionConfig
print(json.dumps({"development": Config.FULFILLMENT_HANDLER, "production": ProductionConfig.FULFILLMENT_HANDLER}))
"""


@pytest.fixture(scope="module")
def default_handler() -> str:
    found = run_python(HANDLER_DEFAULTS)
    assert found["development"] == found["production"]
    return found["development"]


def test_the_default_fulfillment_handler_logs_the_order_and_the_transaction(make_app, default_handler, caplog):
    from app.services.fulfillment import load_handler

    app = make_app(FULFILLMENT_HANDLER=default_handler)
    handler = load_handler(default_handler)
    with app.app_context():
        caplog.clear()
        handler("ord_logged_order", "txn_logged_payment")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("ord_logged_order" in line and "txn_logged_payment" in line for line in lines), lines


def test_a_paid_order_is_fulfilled_by_the_default_handler(make_app, database_url, gateway, default_handler):
    app = make_app(FULFILLMENT_HANDLER=default_handler)
    prepare_database(app, database_url)
    client = app.test_client()
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    assert post_webhook(client, status_event(tx_id, "success", order["total"])).status_code == 200
    body = client.get(f"/api/orders/{order['order_id']}").get_json()
    assert (body["status"], body["paid_transaction_id"]) == ("fulfilled", tx_id)
    assert body["fulfilled_at"]


# -- the rest of the table: each variable's default when unset, and its value when set -------------------

TABLE_SETTINGS = """
import json
from config import Config, ProductionConfig, config_by_name
names = ("SQLALCHEMY_DATABASE_URI", "PUBLIC_BASE_URL", "PAYMENT_GATEWAY", "PAYMENT_STATUS_CHECK_AFTER",
         "PAYMENT_EXPIRES_AFTER", "SCHEDULER_INTERVAL", "RATELIMIT_ENABLED", "REDIS_URL")
print(json.dumps({cls.ENV_NAME: {n: getattr(cls, n) for n in names}
                  for cls in (Config, ProductionConfig, config_by_name())}))
"""


def test_unset_variables_take_the_documented_defaults():
    found = run_python(TABLE_SETTINGS)
    assert set(found) == {"development", "production"}  # APP_ENV unset: development
    for env_name, settings in found.items():
        database = settings.pop("SQLALCHEMY_DATABASE_URI")
        assert database.startswith("sqlite:///"), (env_name, database)
        assert Path(database.removeprefix("sqlite:///")).parent == ROOT / "instance", (env_name, database)
        assert settings == {"PUBLIC_BASE_URL": "http://127.0.0.1:5000", "PAYMENT_GATEWAY": "sandbox",
                            "PAYMENT_STATUS_CHECK_AFTER": 900, "PAYMENT_EXPIRES_AFTER": 1800,
                            "SCHEDULER_INTERVAL": 60, "RATELIMIT_ENABLED": True, "REDIS_URL": None}, env_name


def test_set_variables_are_read_from_the_environment(tmp_path):
    database = f"sqlite:///{tmp_path / 'given.db'}"
    found = run_python(TABLE_SETTINGS, DATABASE_URL=database, PUBLIC_BASE_URL="https://shop.example",
                       PAYMENT_GATEWAY="sandbox", PAYMENT_STATUS_CHECK_AFTER="120", PAYMENT_EXPIRES_AFTER="240",
                       SCHEDULER_INTERVAL="5", RATELIMIT_ENABLED="0", REDIS_URL="redis://127.0.0.1:6379/9")
    for env_name, settings in found.items():
        assert settings == {"SQLALCHEMY_DATABASE_URI": database, "PUBLIC_BASE_URL": "https://shop.example",
                            "PAYMENT_GATEWAY": "sandbox", "PAYMENT_STATUS_CHECK_AFTER": 120,
                            "PAYMENT_EXPIRES_AFTER": 240, "SCHEDULER_INTERVAL": 5, "RATELIMIT_ENABLED": False,
                            "REDIS_URL": "redis://127.0.0.1:6379/9"}, env_name


def test_an_unknown_payment_gateway_stops_the_start(make_app):
    from config import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown PAYMENT_GATEWAY 'stripe'"):
        make_app(PAYMENT_GATEWAY="stripe")

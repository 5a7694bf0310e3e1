"""The migrations build the schema the models describe, on an empty SQLite and PostgreSQL database."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import app.models  # noqa: F401  (registers the tables on db.metadata)
from app.extensions import db
from tests.conftest import TEST_DATABASE_URL

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    if not TEST_DATABASE_URL:
        pytest.skip("PostgreSQL run skipped: TEST_DATABASE_URL is not set (.ci/run sets it)")
    base = sa.make_url(TEST_DATABASE_URL)
    name = f"{base.database}_migrations_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield base.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _differences_and(database_url: str, count_sql: str) -> tuple[list, int]:
    """How the database's schema differs from the models, and a count from it."""
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        count = conn.scalar(sa.text(count_sql))
    engine.dispose()
    return diff, count


def test_db_upgrade_builds_the_models_schema_and_the_catalog(empty_database):
    _flask_db(empty_database, "upgrade")
    diff, products = _differences_and(empty_database, "SELECT count(*) FROM products")
    assert diff == [], f"models and migrations differ: {diff}"
    assert products >= 5


def _flask_db(database_url: str, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "SCHEDULER_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _stored_index_definition(conn, name: str) -> str:
    if conn.dialect.name == "postgresql":
        return conn.scalar(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": name})
    return conn.scalar(sa.text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"), {"n": name})


def test_partial_indexes_are_partial_in_the_database(empty_database):
    """compare_metadata does not compare an index's WHERE: a partial index built whole (or the
    other way round) would pass the test above."""
    _flask_db(empty_database, "upgrade")
    engine = sa.create_engine(empty_database)
    partial = [index for table in db.metadata.tables.values() for index in table.indexes
               if index.dialect_kwargs.get(f"{engine.dialect.name}_where") is not None]
    assert partial, "no partial index in the models: this test checks nothing"
    with engine.connect() as conn:
        for index in partial:
            assert " WHERE " in _stored_index_definition(conn, index.name).upper(), index.name
    engine.dispose()


def test_downgrade_and_upgrade_again_with_rows_in_place(empty_database):
    """Every migration since the staff sessions one goes down and up again over real rows."""
    _flask_db(empty_database, "upgrade")
    engine = sa.create_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO orders (id, status, total, currency, access_code, fulfillment_attempts, created_at, "
            "updated_at) VALUES ('ord_kept', 'open', 1999, 'USD', 'CODE', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(sa.text(
            "INSERT INTO transactions (id, order_id, amount, currency, status, gateway, expires_at, needs_review, "
            "refunded_amount, check_attempts, created_at, updated_at) VALUES ('txn_kept', 'ord_kept', 1999, 'USD', "
            "'pending', 'sandbox', CURRENT_TIMESTAMP, false, 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(sa.text(
            "INSERT INTO transaction_events (transaction_id, kind, source, summary, created_at) "
            "VALUES ('txn_kept', 'created', 'api', 'kept', CURRENT_TIMESTAMP)"))
    engine.dispose()

    _flask_db(empty_database, "downgrade", "0003")
    _flask_db(empty_database, "upgrade")

    diff, kept = _differences_and(empty_database,
                                  "SELECT count(*) FROM transaction_events WHERE transaction_id = 'txn_kept'")
    assert diff == [], f"models and migrations differ after going down and up: {diff}"
    assert kept == 1


# The indexes later migrations add to tables a live shop writes all the time.
LATER_INDEXES = [("0001", "0002", "transactions"), ("0008", "0009", "transactions"), ("0009", "0010", "orders")]

_NEW_ORDER = ("INSERT INTO orders (id, status, total, currency, access_code, fulfillment_attempts, created_at, "
              "updated_at) VALUES (:id, 'open', 1999, 'USD', 'CODE', 0, now(), now())")


@pytest.mark.parametrize(("before", "revision", "table"), LATER_INDEXES)
def test_an_index_added_to_a_busy_table_does_not_stop_its_writes(empty_database, before, revision, table):
    """On PostgreSQL such an index is built CONCURRENTLY: a plain CREATE INDEX queues for a lock that
    holds every new write to the table back until the build ends (here, until a transaction already
    writing the table ends; on a big table, for as long as the build takes). A new order (or
    payment) must still be written meanwhile."""
    if not empty_database.startswith("postgresql"):
        pytest.skip("SQLite has no concurrent index build: it serialises every write anyway")
    _flask_db(empty_database, "upgrade", before)
    engine = sa.create_engine(empty_database)
    # the other connection in autocommit: its statistics fresh on each look, and no transaction of
    # its own for the build to wait for
    writing, other = engine.connect(), engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    migration = None
    try:
        writing.execute(sa.text(_NEW_ORDER), {"id": "ord_open_transaction"})  # left uncommitted
        if table == "transactions":
            writing.execute(sa.text("UPDATE transactions SET updated_at = now()"))
        env = {**os.environ, "DATABASE_URL": empty_database, "SCHEDULER_ENABLED": "0"}
        migration = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade", revision],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while other.scalar(sa.text(  # the build has started and is waiting for the open transaction
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query ILIKE 'CREATE%INDEX%' AND wait_event_type IS NOT NULL")) == 0:
            assert migration.poll() is None and time.monotonic() < deadline, migration.communicate()
            time.sleep(0.05)
        other.execute(sa.text("SET lock_timeout = '3s'"))
        other.execute(sa.text(_NEW_ORDER), {"id": "ord_during_the_build"})  # LockNotAvailable if held back
        writing.commit()
        _, errors = migration.communicate(timeout=60)
        assert migration.returncode == 0, errors
    finally:
        writing.close()
        other.close()
        engine.dispose()
        if migration is not None and migration.poll() is None:  # a failed test leaves no upgrade running
            migration.kill()
            migration.communicate()
    _, invalid = _differences_and(empty_database, "SELECT count(*) FROM pg_index WHERE NOT indisvalid")
    assert invalid == 0

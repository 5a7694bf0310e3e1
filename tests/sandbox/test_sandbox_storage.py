"""The sandbox's own storage: SQLite file in WAL mode with a busy timeout, tables made on start."""

from __future__ import annotations

from sqlalchemy import inspect, text

from app.sandbox.storage import SandboxStorage


def test_sqlite_storage_uses_wal_and_a_busy_timeout(tmp_path):
    storage = SandboxStorage(f"sqlite:///{tmp_path / 'nested' / 'gateway.db'}")
    try:
        with storage.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
        tables = set(inspect(storage.engine).get_table_names())
        assert tables == {"sandbox_sessions", "sandbox_refunds", "sandbox_deliveries"}
        assert (tmp_path / "nested" / "gateway.db").exists()
    finally:
        storage.dispose()


def test_in_memory_storage_works_for_quick_experiments():
    storage = SandboxStorage("sqlite://")
    try:
        assert "sandbox_sessions" in inspect(storage.engine).get_table_names()
    finally:
        storage.dispose()

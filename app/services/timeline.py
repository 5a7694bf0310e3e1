"""Writes lines of a transaction's audit timeline, in the caller's database transaction.

Lines are collected on the session and written together when it commits (and dropped if it
rolls back): one executemany, which psycopg sends as a pipeline, so a move's several lines cost
one round trip. They are append-only: nothing reads them back inside the transaction that writes
them. The one-statement routes (``one_statement``) write lines made by ``line`` inside their own
statement instead.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.extensions import db
from app.models import TransactionEvent
from app.models.clock import utcnow

_INSERT = TransactionEvent.__table__.insert()
_PENDING = "timeline_lines"


def line(
    transaction_id: str,
    kind: str,
    source: str,
    summary: str,
    *,
    outcome: str | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    detail: dict | None = None,
    actor: str | None = None,
) -> dict:
    """One timeline line as the row it is written as (``COLUMNS``), stamped now."""
    return {
        "transaction_id": transaction_id,
        "kind": kind,
        "source": source,
        "summary": summary,
        "outcome": outcome,
        "from_status": from_status,
        "to_status": to_status,
        "detail": detail,
        "actor": actor,
        "created_at": utcnow(),
    }


COLUMNS = tuple(line("", "", "", ""))


def add(row: dict) -> None:
    """Add a line made by ``line``; it is written when the caller's service commits."""
    db.session.info.setdefault(_PENDING, []).append(row)


def record(transaction_id: str, kind: str, source: str, summary: str, **fields) -> None:
    """Add one timeline line (the fields of ``line``); it is written when the caller's service commits."""
    add(line(transaction_id, kind, source, summary, **fields))


def record_failure(transaction_id: str, kind: str, source: str, summary: str, *, actor: str | None = None) -> None:
    """Drop whatever the failed attempt left uncommitted, and commit one ``error`` line about it."""
    db.session.rollback()
    record(transaction_id, kind, source, summary[:500], outcome="error", actor=actor)
    db.session.commit()


@event.listens_for(Session, "before_commit")
def _write_lines(session: Session) -> None:
    lines = session.info.pop(_PENDING, None)
    if lines:
        session.connection().execute(_INSERT, lines)


@event.listens_for(Session, "after_soft_rollback")
def _drop_lines(session: Session, _previous_transaction) -> None:
    session.info.pop(_PENDING, None)

"""Writes that follow a compare-and-set, sent with it as one PostgreSQL statement.

The busiest writes (a success delivery's move with its order and timeline, an order marked
fulfilled with its timeline line) are a compare-and-set followed by rows that exist only if
it won. On PostgreSQL they go as data-modifying CTEs in one statement that commits alone
(autocommit): one round trip where BEGIN, a statement per write and COMMIT take several.
SQLite has no data-modifying CTEs; there, and whenever a caller already has a database
transaction open, the callers take their statement-per-write route.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache

from sqlalchemy import CTE, JSON, Row, String, Table, Update, bindparam, cast, func, select, union_all
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from app.extensions import db
from app.models import TransactionEvent
from app.services import timeline


def on_postgresql() -> bool:
    """Data-modifying CTEs can be used (not on SQLite)."""
    return db.engine.dialect.name == "postgresql"


def usable() -> bool:
    """On PostgreSQL, with no database transaction open in the session (the statement commits alone)."""
    return on_postgresql() and not db.session().in_transaction()


def _unsized(type_):
    """The type a value is cast to before it is written: a string type without its length, so
    that a value too long fails on the column as a plain INSERT's would (an explicit cast to
    VARCHAR(n) would cut it short without a word)."""
    return String() if isinstance(type_, String) else type_


def rows_where(condition, table: Table, columns: tuple[str, ...], count: int, prefix: str) -> CTE:
    """An INSERT of ``count`` rows into ``table`` from the parameters ``row_params(prefix, rows)``
    gives, written (in the order given) only where ``condition`` holds."""
    rows = [select(*(cast(bindparam(f"{prefix}{number}_{name}", type_=table.c[name].type), _unsized(table.c[name].type))
                     for name in columns)).where(condition) for number in range(count)]
    return table.insert().from_select(columns, union_all(*rows)).cte(f"write_{prefix}")


def rows_if(won: CTE, table: Table, columns: tuple[str, ...], count: int, prefix: str) -> CTE:
    """``rows_where``: written only if ``won`` returned a row."""
    return rows_where(select(*won.c).exists(), table, columns, count, prefix)


def with_defaults(table: Table, row: dict) -> dict:
    """``row`` with the constant Python-side defaults of the columns it leaves out, which an
    INSERT from a SELECT does not add by itself."""
    return {**{column.name: column.default.arg for column in table.columns
               if column.name not in row and column.default is not None and column.default.is_scalar}, **row}


def row_params(prefix: str, rows: list[dict]) -> dict:
    """The parameters of ``rows_if(..., prefix)`` for these rows."""
    return {f"{prefix}{number}_{name}": value for number, row in enumerate(rows) for name, value in row.items()}


def count(cte: CTE):
    """How many rows ``cte`` returned, as a scalar subquery."""
    return select(func.count()).select_from(cte).scalar_subquery()


def run(statement, params: dict) -> Row | None:
    """Execute ``statement`` alone, in autocommit; its first row. Call only when ``usable()``:
    the session holds no connection then, so no lock of its own can stand in the statement's way.
    A statement that fails wrote nothing.

    A connection from the engine's pool, not through the session: about 0.1 ms less per call.
    """
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return connection.execute(statement, params).first()


def run_all(statement, params: dict) -> list[Row]:
    """``run``, every row."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return connection.execute(statement, params).all()


def refused_whole(exc: DBAPIError) -> bool:
    """The statement was refused as a whole, so it wrote nothing, for something one of its items
    may have caused (a key taken, a guard, a bad value) or for a deadlock with another process's
    statement: its items written one by one tell which, if any."""
    return isinstance(exc, (IntegrityError, DataError)) or getattr(exc.orig, "sqlstate", None) == "40P01"


def _as_text(value):
    if isinstance(value, datetime):
        return value.isoformat()  # naive UTC, read back to the microsecond by a timestamp column
    raise TypeError(f"{type(value).__name__} is not written as JSON")


def as_json(rows: list[dict]) -> str:
    """Items for a statement's ``json_to_recordset``: nested dicts are written as the text
    SQLAlchemy's JSON type writes (json.dumps), times as ISO 8601."""
    return json.dumps(rows, default=_as_text)


def populated(table: Table, names: list[str], alias: str = "row") -> str:
    """The select list of ``names`` from ``alias``, a record made by ``json_populate_record(set)``
    of ``table``'s row type. A JSON column's null stays the JSON ``null`` that SQLAlchemy
    writes for Python's None (json_populate_record reads it as SQL NULL)."""
    return ", ".join(f"COALESCE({alias}.{name}, 'null'::json)" if isinstance(table.c[name].type, JSON)
                     else f"{alias}.{name}" for name in names)


def lines_of(won: str, item: str) -> str:
    """An INSERT of the timeline lines in ``item``'s ``lines`` (JSON rows made by
    ``timeline.line``) of the items (by ``n``) that the CTE ``won`` returned, in their order."""
    events = TransactionEvent.__table__
    return (f"INSERT INTO {events.name} ({', '.join(timeline.COLUMNS)}) "
            f"SELECT {populated(events, list(timeline.COLUMNS), 'line')} FROM {won} JOIN {item} USING (n), "
            f"json_populate_recordset(NULL::{events.name}, {item}.lines) WITH ORDINALITY AS line "
            f"ORDER BY {won}.n, line.ordinality")


@cache
def _update_and_lines(statement: Update, lines: int):
    changed = statement.returning(*statement.table.primary_key.columns).cte("changed")
    return select(count(changed).label("changed")).add_cte(
        rows_if(changed, TransactionEvent.__table__, timeline.COLUMNS, lines, "line"))


def update_and_record(statement: Update, params: dict, lines: list[dict]) -> int:
    """Run a compare-and-set UPDATE and, if it changed a row, write the timeline ``lines`` and
    commit; returns how many rows it changed. One statement on PostgreSQL when ``usable()``;
    else the UPDATE in the session, and the lines with the session's commit. When it changed
    nothing, nothing is committed (the session's transaction, if any, stays open). No key of
    ``params`` may be a column's name: SQLAlchemy would read it as a value to SET."""
    if usable():
        return run(_update_and_lines(statement, len(lines)), {**params, **row_params("line", lines)}).changed
    changed = db.session.connection().execute(statement, params).rowcount
    if changed:
        for line in lines:
            timeline.add(line)
        db.session.commit()
    return changed

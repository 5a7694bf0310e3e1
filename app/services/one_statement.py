"""Writes that follow a compare-and-set, sent with it as one PostgreSQL statement.

The busiest writes (a success delivery's move with its order and timeline, an order marked
fulfilled with its timeline line, a gateway page saved with its line) are a compare-and-set
followed by rows that exist only if it won. On PostgreSQL they go as data-modifying CTEs in one
statement that commits alone (autocommit): one round trip where BEGIN, a statement per write and
COMMIT take several. Those written by several requests at the same moment share one statement
(group commit, ``group_writes``): each request's values are a row of a JSON parameter, and its
compare-and-set and rows are its own. The shared statements are the general route's own
statements with their parameters substituted (``substituted``), so they write what it writes.
SQLite has no data-modifying CTEs; there, and whenever a caller already has a database
transaction open, the callers take their statement-per-write route.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache, partial
from typing import Callable

from sqlalchemy import (CTE, JSON, Integer, Row, String, Table, Update, bindparam, cast, column, func, literal_column,
                        select, union_all)
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter
from sqlalchemy.types import NullType, TypeEngine

from app.extensions import db
from app.models import TransactionEvent
from app.services import group_writes, timeline


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


def with_defaults(table: Table, row: dict) -> dict:
    """``row`` with the constant Python-side defaults of the columns it leaves out, which an
    INSERT from a SELECT does not add by itself."""
    return {**{column.name: column.default.arg for column in table.columns
               if column.name not in row and column.default is not None and column.default.is_scalar}, **row}


def row_params(prefix: str, rows: list[dict]) -> dict:
    """The parameters of ``rows_where(..., prefix)`` for these rows."""
    return {f"{prefix}{number}_{name}": value for number, row in enumerate(rows) for name, value in row.items()}


def count(cte: CTE):
    """How many rows ``cte`` returned, as a scalar subquery."""
    return select(func.count()).select_from(cte).scalar_subquery()


SHARED_LOCK_WAIT_MS = 1000  # how long a statement carrying several requests waits for one row's lock


def run_all(statement, params: dict, *, shared: bool = False) -> list[Row]:
    """Execute ``statement`` alone, in autocommit; its rows. Call only when ``usable()``: the
    session holds no connection then, so no lock of its own can stand in the statement's way. A
    statement that fails wrote nothing. A connection from the engine's pool, not through the
    session: about 0.1 ms less per call.

    A ``shared`` statement (several requests' items, or one of them written
    alone for them) waits at most SHARED_LOCK_WAIT_MS for a row lock: one item's row held
    elsewhere (a long transaction, a session left idle in one) must not hold the others. The
    statement is then written item by item (``refused_whole``), each alone also waiting briefly,
    and an item that still meets the lock is handed back to its own request, which waits for
    it alone, as a request always has."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not shared:
            return connection.execute(statement, params).all()
        connection.exec_driver_sql(f"SET lock_timeout = {SHARED_LOCK_WAIT_MS}")
        try:
            return connection.execute(statement, params).all()
        finally:
            try:
                connection.exec_driver_sql("RESET lock_timeout")
            except DBAPIError:  # the connection broke: the pool drops it, with its setting
                connection.invalidate()


def refused_whole(exc: DBAPIError) -> bool:
    """The statement was refused as a whole, so it wrote nothing, for something one of its items
    may have caused (a key taken, a guard, a bad value, a row lock held elsewhere) or for a
    deadlock with another process's statement: its items written one by one tell which, if any."""
    return (isinstance(exc, (IntegrityError, DataError))
            or getattr(exc.orig, "sqlstate", None) in ("40P01", "55P03"))


def each_written(write: Callable[[list, bool], list], items: list, *,
                 if_refused: Callable[[DBAPIError], object]) -> list:
    """One result per item from ``write(items, shared)``, which sends them as one statement
    (``shared``: see ``run_all``). A statement refused whole is written again item by item, each
    alone also shared (it stands in for the others); what goes wrong with one item is that item's
    result alone: ``if_refused(error)`` when its statement was refused, else the error."""
    try:
        return write(items, len(items) > 1)
    except DBAPIError as exc:
        if not refused_whole(exc):
            raise
        if len(items) == 1:
            return [if_refused(exc)]
    return [_written_alone(write, item, if_refused) for item in items]  # find which: each alone


def _written_alone(write: Callable[[list, bool], list], item, if_refused: Callable[[DBAPIError], object]):
    try:
        return write([item], True)[0]
    except DBAPIError as exc:
        return if_refused(exc) if refused_whole(exc) else exc
    except Exception as exc:  # no connection in time, say: its caller's answer alone
        return exc


# Statements for several requests' writes at once (group_writes): each request is an item, a
# row of a JSON parameter read by json_to_recordset, and the statement's named parameters become
# that row's columns; the rows an item writes with it (timeline lines, a delivery) are a second
# JSON parameter, each row tagged with its item's place ``n`` and its own place ``i``. One
# prepared statement serves any number of items.

def _as_text(value):
    if isinstance(value, datetime):
        return value.isoformat()  # naive UTC, read back to the microsecond by a timestamp column
    raise TypeError(f"{type(value).__name__} is not written as JSON")


def as_json(rows: list[dict]) -> str:
    """A JSON parameter's text: nested dicts as SQLAlchemy's JSON type writes them (json.dumps),
    times in ISO 8601."""
    return json.dumps(rows, default=_as_text)


def _json_rows(name: str, columns: dict[str, TypeEngine], alias: str):
    return func.json_to_recordset(cast(bindparam(name, type_=String), JSON)).table_valued(
        *(column(key, _unsized(type_)) for key, type_ in columns.items())).render_derived(alias, with_types=True)


def items(columns: dict[str, TypeEngine]):
    """The items of a statement for several at once, from the JSON parameter ``items``
    (``item_params``): a FROM of ``n`` (the item's place) and ``columns``."""
    return _json_rows("items", {"n": Integer(), **columns}, "item")


def named_params(statement: Update) -> dict[str, TypeEngine]:
    """The named parameters of an UPDATE, each with the type of the column it is compared with
    or assigned to."""
    types: dict[str, TypeEngine] = {}
    for element in visitors.iterate(statement):
        if isinstance(element, BindParameter) and not element.unique and not isinstance(element.type, NullType):
            types.setdefault(element.key, element.type)
    for name, value in statement._values.items():  # values(x=bindparam(...)) keep no type of their own
        if isinstance(value, BindParameter) and not value.unique:
            types.setdefault(value.key, statement.table.c[name].type)
    return types


def substituted(statement, values: dict):
    """``statement`` with each named parameter in ``values`` replaced by the given column."""
    return visitors.replacement_traverse(statement, {}, lambda element: values.get(element.key) if isinstance(
        element, BindParameter) and not element.unique else None)


def rows_written_by(won: CTE, table: Table, columns: tuple[str, ...], name: str) -> CTE:
    """An INSERT into ``table`` of the rows in the JSON parameter ``name`` (``rows_of``) whose item
    ``won`` returned (its ``n``), in the order given. A JSON column's null stays the JSON ``null``
    that SQLAlchemy writes for Python's None (json_to_recordset reads it as SQL NULL)."""
    given = _json_rows(name, {"n": Integer(), "i": Integer(), **{key: table.c[key].type for key in columns}}, name)
    values = [func.coalesce(given.c[key], literal_column("'null'::json")) if isinstance(table.c[key].type, JSON)
              else given.c[key] for key in columns]
    return table.insert().from_select(columns, select(*values).where(given.c.n.in_(select(won.c.n)))
                                      .order_by(given.c.n, given.c.i)).cte(f"write_{name}")


def rows_of(rows_by_item: list[list[dict]]) -> str:
    """The JSON parameter of ``rows_written_by``: each item's rows, in item order."""
    return as_json([{**row, "n": n, "i": i} for n, rows in enumerate(rows_by_item) for i, row in enumerate(rows)])


def item_params(rows: list[dict]) -> str:
    """The JSON parameter of ``items``: one row a request, in item order."""
    return as_json([{**row, "n": n} for n, row in enumerate(rows)])


@dataclass(frozen=True)
class _Update:
    """One caller's part of an ``update_and_record`` statement."""

    params: dict
    lines: list[dict]


@cache
def _updates_together(statement: Update):
    """``statement`` for any number of items, with each item's lines written if its row changed."""
    item = items(named_params(statement))
    changed = substituted(statement, dict(item.c)).returning(item.c.n).cte("changed")
    return select(changed.c.n).add_cte(rows_written_by(changed, TransactionEvent.__table__, timeline.COLUMNS,
                                                       "lines"))


@cache
def _names(statement: Update) -> frozenset[str]:
    return frozenset(named_params(statement))


@cache
def _row_param(statement: Update) -> str:
    """The named parameter ``statement`` compares its table's primary key with."""
    for element in visitors.iterate(statement.whereclause):
        if (isinstance(element, BinaryExpression) and element.operator is operators.eq
                and isinstance(element.right, BindParameter) and not element.right.unique
                and getattr(element.left, "primary_key", False) and element.left.table is statement.table):
            return element.right.key
    raise ValueError(f"{statement} names no row by its primary key")


def _write_updates(statement: Update, updates: list[_Update]) -> list[int | Exception]:
    """For each item, 1 when its row changed (and its lines were written), else 0, or its error."""
    return each_written(partial(_updates_in_one, statement), updates, if_refused=lambda exc: exc)


def _updates_in_one(statement: Update, updates: list[_Update], shared: bool) -> list[int]:
    rows = run_all(_updates_together(statement), {"items": item_params([u.params for u in updates]),
                                                  "lines": rows_of([u.lines for u in updates])}, shared=shared)
    changed = {row.n for row in rows}
    return [int(n in changed) for n in range(len(updates))]


def update_and_record(statement: Update, params: dict, lines: list[dict], *, name: str) -> int:
    """Run a compare-and-set UPDATE of one row (its primary key compared with a named parameter)
    and, if it changed the row, write the timeline ``lines`` and commit; returns how many rows it
    changed. On PostgreSQL when ``usable()``, one statement that commits alone, shared with the
    same UPDATE of other rows being written at that moment (group_writes, as ``name``); else the
    UPDATE in the session, and the lines with the session's commit. When it changed nothing,
    nothing is committed (the session's transaction, if any, stays open). No key of ``params``
    may be a column's name: SQLAlchemy would read it as a value to SET."""
    if params.keys() != _names(statement):  # shared, a value left out would be written as NULL, not refused
        raise ValueError(f"update_and_record({name}) takes {sorted(_names(statement))}, got {sorted(params)}")
    if usable():
        row = _row_param(statement)  # no two items of a statement update the same row
        return group_writes.writer(name, partial(_write_updates, statement), lambda u: (u.params[row],),
                                   of=statement).submit(_Update(params, lines))
    changed = db.session.connection().execute(statement, params).rowcount
    if changed:
        for line in lines:
            timeline.add(line)
        db.session.commit()
    return changed

"""Which pending transactions are due, and claiming them so no two processes check one at once.

A claim is a lease. One ``UPDATE ... WHERE id IN (SELECT ...) RETURNING`` sets
``lease_until`` on a batch of due rows whose lease is free, picked in ``created_at`` order
through the ``(status, created_at)`` index, and is committed before any gateway call. The
UPDATE re-checks the lease in its own WHERE, so it is a compare-and-set: correct on any
database that serialises writes to a row (SQLite does, for the whole file). On PostgreSQL
the inner SELECT also takes its rows ``FOR UPDATE SKIP LOCKED``, so claimers running at the
same moment pass over each other's rows instead of queueing behind them; SQLite ignores
that clause. The lease value doubles as the claim's token when it is released, and a
process that dies holding a lease loses it when the lease runs out. A claim that waited in
its pass's queue past half its lease (behind slow fulfillment handlers, say) is renewed just
before its gateway call, or dropped if another process has taken the row meanwhile (``hold``).

Batches walk the index in ``created_at`` order from a cursor: the newest ``created_at`` claimed
so far and the ids claimed at exactly that time. So a pass reads the due range once, never
the rest of the table, and never claims a row twice (not even one it released as still due).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import ColumnElement, DateTime, bindparam, case, null, or_, select, update

from app.domain.status import Status
from app.extensions import db
from app.models import Transaction

# A transaction that keeps answering "pending" is asked again after 1, 5, 15, 30, then every
# 60 minutes (it is expired at PAYMENT_EXPIRES_AFTER anyway).
BACKOFF_SECONDS = (60, 300, 900, 1800, 3600)


@dataclass(frozen=True)
class Claim:
    """A transaction this process holds the lease on, with what the gateway call needs."""

    id: str
    session_id: str | None
    amount: int
    currency: str
    attempts: int  # check_attempts before this check
    created_at: datetime
    lease: datetime  # the lease_until written by the claim: the token that releases it
    claimed_at: datetime  # when that lease was written


@dataclass(frozen=True)
class Cursor:
    """Where the next batch starts: after ``created_at``, or at it but not one of ``ids``.

    Ids are compared for equality only, never ordered, so the database's collation of ids
    and Python's need not agree.
    """

    created_at: datetime
    ids: frozenset[str]


def advance(cursor: Cursor | None, batch: list[Claim]) -> Cursor | None:
    """The cursor past ``batch``, a batch claimed in created_at order from ``cursor``."""
    if not batch:
        return cursor
    newest = max(claim.created_at for claim in batch)
    ids = frozenset(claim.id for claim in batch if claim.created_at == newest)
    if cursor is not None and cursor.created_at == newest:
        ids |= cursor.ids
    return Cursor(newest, ids)


def backoff(attempts: int) -> timedelta:
    """How long to wait before asking again after ``attempts`` earlier checks."""
    return timedelta(seconds=BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS) - 1)])


def _pending() -> ColumnElement[bool]:
    return Transaction.status == Status.PENDING.value


def due_for_check(now: datetime, check_cutoff: datetime, expire_cutoff: datetime) -> list[ColumnElement[bool]]:
    """Pending, older than the check window, not backing off, and not yet overdue for expiry
    unless flagged: a flagged row is never expired here (``due_for_expiry``), so it is asked
    about for as long as it stays pending, and what the gateway says of it is applied."""
    return [
        _pending(),
        Transaction.created_at <= check_cutoff,
        or_(Transaction.created_at > expire_cutoff, Transaction.needs_review.is_(True)),
        or_(Transaction.next_check_at.is_(None), Transaction.next_check_at <= now),
    ]


def overdue_at(now: datetime) -> datetime:
    """A pending transaction created at or before this is overdue for expiry.

    The window is PAYMENT_EXPIRES_AFTER as configured now (contract section 1: lowering it
    applies to transactions already pending), so a payment can be overdue before the
    ``expires_at`` its gateway session was opened with.
    """
    return now - timedelta(seconds=current_app.config["PAYMENT_EXPIRES_AFTER"])


def due_for_expiry(expire_cutoff: datetime) -> list[ColumnElement[bool]]:
    """Pending and older than the expiry window.

    Rows flagged for review (a success whose amount did not match) are left to ops: expiring
    them could turn a mismatched payment into a fulfilled order.
    """
    return [_pending(), Transaction.created_at <= expire_cutoff, Transaction.needs_review.is_(False)]


def claim_batch(
    due: list[ColumnElement[bool]],
    *,
    now: datetime,
    lease_until: datetime,
    after: Cursor | None,
    limit: int,
) -> list[Claim]:
    """Lease up to ``limit`` due rows past the cursor ``after`` and commit; returns the claims."""
    lease_free = or_(Transaction.lease_until.is_(None), Transaction.lease_until < now)
    conditions = [*due, lease_free]
    if after is not None:
        conditions.append(Transaction.created_at >= after.created_at)
        conditions.append(or_(Transaction.created_at > after.created_at, Transaction.id.notin_(after.ids)))
    pick = (
        select(Transaction.id)
        .where(*conditions)
        .order_by(Transaction.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders nothing here
    )
    rows = db.session.execute(
        update(Transaction)
        .where(Transaction.id.in_(pick), _pending(), lease_free)
        .values(lease_until=lease_until)
        .returning(Transaction.id, Transaction.gateway_session_id, Transaction.amount, Transaction.currency,
                   Transaction.check_attempts, Transaction.created_at)
        .execution_options(synchronize_session=False)
    ).all()
    db.session.commit()
    return [Claim(r.id, r.gateway_session_id, r.amount, r.currency, r.check_attempts, r.created_at, lease_until,
                  now) for r in rows]


def hold(claim: Claim, now: datetime) -> Claim | None:
    """The claim, made sure of just before its gateway call; None when it is no longer ours.

    Within the first half of its lease it is used as it is (no database work). Past that, it
    is renewed for as long again, as a compare-and-set on its lease: a row another process
    claimed after this lease ran out, or that left pending, fails it and is left alone.
    """
    length = claim.lease - claim.claimed_at
    if now < claim.claimed_at + length / 2:
        return claim
    renewed = now + length
    won = db.session.execute(
        update(Transaction)
        .where(Transaction.id == claim.id, Transaction.lease_until == claim.lease, _pending())
        .values(lease_until=renewed)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return replace(claim, lease=renewed, claimed_at=now) if won == 1 else None


@dataclass(frozen=True)
class Release:
    """A claim to give back: the attempt is counted, ``last_checked_at`` stamped, the lease dropped.

    With ``reschedule`` a row still pending gets ``next_check_at``; a row that left pending gets none.
    Without it ``next_check_at`` is left alone (expiry retries on the next pass).
    """

    claim: Claim
    now: datetime
    next_check_at: datetime | None = None
    reschedule: bool = True


def release(claim: Claim, *, now: datetime, next_check_at: datetime | None, reschedule: bool) -> None:
    """Give one claim back, in the caller's database transaction (see Release)."""
    release_many([Release(claim, now, next_check_at, reschedule)])


def release_many(releases: list[Release]) -> None:
    """Give claims back with one executemany per kind, in the caller's database transaction.

    Touches a row only while it still carries that claim's lease, or no lease at all (a move
    by apply_status clears it), so a row another process has claimed since is left alone.
    """
    table = Transaction.__table__
    for reschedule in (True, False):
        params = [
            {"b_id": r.claim.id, "b_lease": r.claim.lease, "b_now": r.now,
             **({"b_next": r.next_check_at} if reschedule else {})}
            for r in releases if r.reschedule is reschedule
        ]
        if not params:
            continue
        values = {
            "lease_until": None,
            "last_checked_at": bindparam("b_now", type_=DateTime()),
            "check_attempts": table.c.check_attempts + 1,
        }
        if reschedule:
            values["next_check_at"] = case(
                (table.c.status == Status.PENDING.value, bindparam("b_next", type_=DateTime())), else_=null()
            )
        statement = (
            table.update()
            .where(table.c.id == bindparam("b_id"),
                   or_(table.c.lease_until == bindparam("b_lease", type_=DateTime()), table.c.lease_until.is_(None)))
            .values(**values)
        )
        db.session.execute(statement, params)

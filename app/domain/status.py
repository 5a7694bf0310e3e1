"""Transaction statuses and the one table of allowed moves between them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"

    @classmethod
    def parse(cls, value: object) -> "Status | None":
        """The Status named by ``value``, or None when it names none."""
        try:
            return cls(value)  # type: ignore[arg-type]
        except ValueError:
            return None


# Every move the system may make. The gateway holds the money, so a success it reports
# is applied even after failure, expiry or cancellation; after the last two it is flagged.
ALLOWED_MOVES: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.SUCCESS, Status.FAILURE, Status.EXPIRED, Status.CANCELLED}),
    Status.SUCCESS: frozenset({Status.REFUNDED, Status.PARTIALLY_REFUNDED}),
    Status.PARTIALLY_REFUNDED: frozenset({Status.REFUNDED}),
    Status.FAILURE: frozenset({Status.SUCCESS}),
    Status.EXPIRED: frozenset({Status.SUCCESS}),
    Status.CANCELLED: frozenset({Status.SUCCESS}),
    Status.REFUNDED: frozenset(),
}
FLAGGED_MOVES: dict[tuple[Status, Status], str] = {
    (Status.EXPIRED, Status.SUCCESS): "success_after_expiry",
    (Status.CANCELLED, Status.SUCCESS): "success_after_cancellation",
}


class Outcome(StrEnum):
    APPLIED = "applied"
    NOOP = "noop"
    REFUSED = "refused"


@dataclass(frozen=True)
class Decision:
    """What the table says about moving ``current`` to ``target``."""

    current: Status
    target: Status
    outcome: Outcome
    flag_reason: str | None = None


def decide(current: Status, target: Status) -> Decision:
    """Consult the transition table: applied, no-op (already there) or refused."""
    if current == target:
        return Decision(current, target, Outcome.NOOP)
    if target in ALLOWED_MOVES[current]:
        return Decision(current, target, Outcome.APPLIED, FLAGGED_MOVES.get((current, target)))
    return Decision(current, target, Outcome.REFUSED)

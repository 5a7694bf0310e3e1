"""What each review flag means and what ops should do about it, for the transaction page.

The flag itself stores short reason codes (several, comma-separated, when more than one is
open); the timeline holds the details of each. These sentences say what a person on the ops
page needs first: what happened to the money, and what to check or do.
"""

from __future__ import annotations

from app.domain.status import FLAGGED_MOVES, Status
from app.services.gateway_reports import INCONSISTENT, MISMATCH, REFUND_BEFORE_SUCCESS
from app.services.refunds import MADE_AFTER_ALL, OUTCOME_UNKNOWN, REFUNDED_ELSEWHERE
from app.services.status_moves import DUPLICATE_PAYMENT

REASONS: dict[str, str] = {
    MISMATCH: (
        "The gateway reported a success for another amount or currency than this payment. It was not "
        "applied and the order was not fulfilled. Compare with the gateway's dashboard."
    ),
    DUPLICATE_PAYMENT: (
        "This payment succeeded after another payment had already paid the order, which ships once. "
        "Refund this payment in full."
    ),
    FLAGGED_MOVES[Status.EXPIRED, Status.SUCCESS]: (
        "The shopper paid after the payment had expired here. The success was applied (the gateway holds "
        "the money) and the order fulfilled once. Nothing is owed unless the shopper also paid again."
    ),
    FLAGGED_MOVES[Status.CANCELLED, Status.SUCCESS]: (
        "The shopper paid after the payment had been cancelled. The success was applied (the gateway "
        "holds the money) and the order fulfilled once. Refund it if the cancellation stands."
    ),
    OUTCOME_UNKNOWN: (
        "A refund got no answer from the gateway, so its amount stays held. Retry it from the refunds "
        "below (the same key: it cannot refund twice); the flag settles by itself once every refund is "
        "answered."
    ),
    MADE_AFTER_ALL: (
        "A refund recorded here as failed was made by the gateway after all; it is now counted as "
        "refunded. Check the totals against the gateway's dashboard."
    ),
    REFUNDED_ELSEWHERE: (
        "The gateway reports a partial refund that was not made here (in its dashboard). Its amount is "
        "unknown here, so less may remain to refund than this page shows: check the dashboard before "
        "refunding."
    ),
    INCONSISTENT: (
        "The gateway's answers contradict each other (it would not close the session as paid, yet reports "
        "no success). Nothing was changed: check the payment in its dashboard."
    ),
    REFUND_BEFORE_SUCCESS: (
        "The gateway reported this payment refunded before reporting its success (its deliveries came out "
        "of order). When the success arrives, the refund follows it before anything ships; if it never "
        "does, the payment stays pending here: check the dashboard."
    ),
}


def explain(review_reason: str | None) -> list[tuple[str, str]]:
    """Each open reason of a flag with what it means; a reason without a sentence is left out."""
    codes = [code.strip() for code in (review_reason or "").split(",")]
    return [(code, REASONS[code]) for code in codes if code in REASONS]

"""The transition table, tested without Flask or a database."""

from hypothesis import given
from hypothesis import strategies as st

from app.domain.status import ALLOWED_MOVES, Outcome, Status, decide

statuses = st.sampled_from(list(Status))


def test_the_table_matches_the_contract():
    assert ALLOWED_MOVES[Status.PENDING] == {Status.SUCCESS, Status.FAILURE, Status.EXPIRED, Status.CANCELLED}
    assert ALLOWED_MOVES[Status.SUCCESS] == {Status.REFUNDED, Status.PARTIALLY_REFUNDED}
    assert ALLOWED_MOVES[Status.PARTIALLY_REFUNDED] == {Status.REFUNDED}
    assert ALLOWED_MOVES[Status.REFUNDED] == set()
    for late in (Status.FAILURE, Status.EXPIRED, Status.CANCELLED):
        assert ALLOWED_MOVES[late] == {Status.SUCCESS}


def test_success_after_expiry_or_cancellation_is_flagged_after_failure_not():
    assert decide(Status.EXPIRED, Status.SUCCESS).flag_reason == "success_after_expiry"
    assert decide(Status.CANCELLED, Status.SUCCESS).flag_reason == "success_after_cancellation"
    assert decide(Status.FAILURE, Status.SUCCESS).flag_reason is None


@given(statuses, statuses)
def test_nothing_returns_to_pending_and_success_leaves_only_by_refund(current, target):
    decision = decide(current, target)
    if target == Status.PENDING and current != Status.PENDING:
        assert decision.outcome == Outcome.REFUSED
    if current == Status.SUCCESS and target not in (Status.SUCCESS, Status.REFUNDED, Status.PARTIALLY_REFUNDED):
        assert decision.outcome == Outcome.REFUSED
    if current == target:
        assert decision.outcome == Outcome.NOOP


@given(st.lists(statuses, max_size=30))
def test_any_sequence_pays_an_order_at_most_once_and_keeps_a_reported_success(events):
    """Replays the moves as apply_status does: count entries into success."""
    current, entered_success, saw_success = Status.PENDING, 0, False
    for target in events:
        decision = decide(current, target)
        if decision.outcome == Outcome.APPLIED:
            if target == Status.SUCCESS:
                entered_success += 1
            current = target
        saw_success |= target == Status.SUCCESS
    assert entered_success <= 1
    if saw_success:
        # A success the gateway reported is never lost: we are in success or a refund of it.
        assert current in (Status.SUCCESS, Status.REFUNDED, Status.PARTIALLY_REFUNDED)


def test_money_formats_with_integers_only():
    import pytest

    from app.domain.money import format_minor

    assert format_minor(1999, "USD") == "19.99 USD"
    assert format_minor(123456, "JPY") == "123,456 JPY"
    assert format_minor(1005, "KWD") == "1.005 KWD"
    with pytest.raises(TypeError):
        format_minor(19.99, "USD")

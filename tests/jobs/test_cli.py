"""`flask --app wsgi payments reconcile`: one pass, its summary on stdout, exit 0."""

import re

import requests
import responses

from tests.conftest import GATEWAY

from .support import CHECK_AFTER, EXPIRES_AFTER, answer_expire, answer_status, pending_payment, row

SUMMARY = re.compile(r"^reconcile: due=(\d+) checked=(\d+) changed=(\d+) expired=(\d+) errors=(\d+) "
                     r"fulfilled=(\d+) duration=\d+\.\d{3}s$")


def reconcile_summary(runner) -> tuple[str, ...]:
    """Run ``payments reconcile``: it must exit 0 and print one summary line; returns its figures."""
    result = runner.invoke(args=["payments", "reconcile"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, lines
    match = SUMMARY.match(lines[0])
    assert match, lines[0]
    return match.groups()


def test_reconcile_prints_one_summary_line(app, client, gateway, runner):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "failure")
    assert reconcile_summary(runner)[:6] == ("1", "1", "1", "0", "0", "0")
    assert row(app, tx_id).status == "failure"


def test_reconcile_with_nothing_due_still_succeeds(app, runner):
    result = runner.invoke(args=["payments", "reconcile"])
    assert result.exit_code == 0
    assert SUMMARY.match(result.stdout.strip())


def test_reconcile_expires_overdue_ones_and_exits_0_even_when_the_gateway_fails(app, client, gateway, runner):
    """Section 1: the command expires overdue transactions too, and a gateway that does not answer
    a status check is counted in the summary, not a failed command."""
    _, overdue = pending_payment(app, client, gateway, EXPIRES_AFTER + 60)
    _, unanswered = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_expire(gateway, overdue, 200)
    gateway.add(responses.GET, f"{GATEWAY}/status/{unanswered}", body=requests.ConnectionError("gateway down"))
    due, checked, changed, expired, errors, fulfilled = reconcile_summary(runner)[:6]
    assert (due, expired, errors, fulfilled) == ("2", "1", "1", "0")
    assert (row(app, overdue).status, row(app, unanswered).status) == ("expired", "pending")

"""`flask --app wsgi payments reconcile`: one pass, its summary on stdout, exit 0."""

import re

from .support import CHECK_AFTER, answer_status, pending_payment, row

SUMMARY = re.compile(r"^reconcile: due=(\d+) checked=(\d+) changed=(\d+) expired=(\d+) errors=(\d+) "
                     r"fulfilled=(\d+) duration=\d+\.\d{3}s$")


def test_reconcile_prints_one_summary_line(app, client, gateway, runner):
    _, tx_id = pending_payment(app, client, gateway, CHECK_AFTER + 60)
    answer_status(gateway, tx_id, "failure")
    result = runner.invoke(args=["payments", "reconcile"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    match = SUMMARY.match(lines[0])
    assert match, lines[0]
    assert match.groups()[:6] == ("1", "1", "1", "0", "0", "0")
    assert row(app, tx_id).status == "failure"


def test_reconcile_with_nothing_due_still_succeeds(app, runner):
    result = runner.invoke(args=["payments", "reconcile"])
    assert result.exit_code == 0
    assert SUMMARY.match(result.stdout.strip())

"""The transactions list as a CSV file, for finance to reconcile against the gateway's reports.

Money is written twice: in major units as text with a point ("19.99", never a float) and in
integer minor units. A cell that a spreadsheet would read as a formula (it starts with =, +, -,
@, a tab or a carriage return) gets a leading apostrophe: the gateway's session ids are text we
did not write.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime

from app.domain.money import format_minor_units

HEADER = ("transaction_id", "order_id", "created_at_utc", "updated_at_utc", "status", "amount", "amount_minor",
          "refunded", "refunded_minor", "currency", "gateway", "gateway_session_id", "needs_review",
          "review_reason")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _stamp(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds") + "Z"


def _money(amount: int, currency: str) -> str:
    try:
        return format_minor_units(amount, currency, grouped=False)
    except (TypeError, ValueError):
        return ""  # the minor-units column still says it


def transactions_csv(rows) -> str:
    """The rows of ``ops.export_rows`` as CSV text (RFC 4180: CRLF line ends, quoted as needed)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for row in rows:
        writer.writerow([
            _cell(row.id), _cell(row.order_id), _stamp(row.created_at), _stamp(row.updated_at), _cell(row.status),
            _money(row.amount, row.currency), row.amount, _money(row.refunded_amount, row.currency),
            row.refunded_amount, _cell(row.currency), _cell(row.gateway), _cell(row.gateway_session_id),
            "yes" if row.needs_review else "no", _cell(row.review_reason),
        ])
    return out.getvalue()

"""The transactions list as a CSV download: every page under the filters, money as text and minor units."""

import csv
import io
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import insert, update

from app.extensions import db
from app.models import Order, Transaction
from app.services import ops
from tests.ops.conftest import paid_transaction

START = datetime(2025, 6, 1, 12, 0, 0)


@pytest.fixture
def mixed(app):
    """Five payments in three currencies and four statuses, one flagged, one with a hostile session id."""
    specs = [  # (id, amount, currency, status, refunded, needs_review, session id)
        ("txn_exp_usd_ok", 123456, "USD", "success", 0, False, "cs_1"),
        ("txn_exp_jpy_ok", 5000, "JPY", "success", 0, False, "cs_2"),
        ("txn_exp_kwd_rf", 12345, "KWD", "partially_refunded", 345, False, "cs_3"),
        ("txn_exp_usd_pe", 1999, "USD", "pending", 0, False, '=HYPERLINK("http://evil.example","x")'),
        ("txn_exp_usd_fl", 1999, "USD", "expired", 0, True, "+cmd"),
    ]
    with app.app_context():
        db.session.execute(insert(Order), [
            {"id": f"ord_{tid[4:]}", "status": "open", "total": amount, "currency": currency,
             "access_code": "ABCDEFGHJK", "created_at": START, "updated_at": START}
            for tid, amount, currency, *_ in specs])
        db.session.execute(insert(Transaction), [
            {"id": tid, "order_id": f"ord_{tid[4:]}", "amount": amount, "currency": currency, "status": status,
             "gateway": "sandbox", "gateway_session_id": session, "expires_at": START + timedelta(minutes=30),
             "needs_review": flagged, "review_reason": "success_after_expiry" if flagged else None,
             "refunded_amount": refunded, "check_attempts": 0,
             "created_at": START + timedelta(minutes=i), "updated_at": START + timedelta(minutes=i, seconds=5)}
            for i, (tid, amount, currency, status, refunded, flagged, session) in enumerate(specs)])
        db.session.commit()
    return [spec[0] for spec in specs]


def read_csv(response) -> list[dict]:
    assert response.status_code == 200, response.status_code
    assert response.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_staff_download_every_transaction_newest_first_with_money_as_text_and_minor_units(viewer_client, mixed):
    response = viewer_client.get("/ops/transactions.csv")
    rows = read_csv(response)
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="transactions-') and disposition.endswith('Z.csv"')
    assert "no-store" in response.headers["Cache-Control"]
    assert [r["transaction_id"] for r in rows] == list(reversed(mixed))
    by_id = {r["transaction_id"]: r for r in rows}
    usd = by_id["txn_exp_usd_ok"]
    assert (usd["amount"], usd["amount_minor"], usd["currency"], usd["status"]) == ("1234.56", "123456", "USD",
                                                                                 "success")
    assert usd["created_at_utc"] == "2025-06-01T12:00:00Z" and usd["updated_at_utc"] == "2025-06-01T12:00:05Z"
    assert (by_id["txn_exp_jpy_ok"]["amount"], by_id["txn_exp_jpy_ok"]["amount_minor"]) == ("5000", "5000")
    kwd = by_id["txn_exp_kwd_rf"]
    assert (kwd["amount"], kwd["refunded"], kwd["refunded_minor"]) == ("12.345", "0.345", "345")
    flagged = by_id["txn_exp_usd_fl"]
    assert (flagged["needs_review"], flagged["review_reason"]) == ("yes", "success_after_expiry")
    assert usd["needs_review"] == "no" and usd["order_id"] == "ord_exp_usd_ok"


def test_cells_a_spreadsheet_would_run_as_formulas_are_defused(viewer_client, mixed):
    by_id = {r["transaction_id"]: r for r in read_csv(viewer_client.get("/ops/transactions.csv"))}
    assert by_id["txn_exp_usd_pe"]["gateway_session_id"] == '\'=HYPERLINK("http://evil.example","x")'
    assert by_id["txn_exp_usd_fl"]["gateway_session_id"] == "'+cmd"
    assert by_id["txn_exp_usd_ok"]["gateway_session_id"] == "cs_1"  # ordinary text untouched


def test_the_export_applies_the_lists_filters_and_the_list_links_to_it_with_them(viewer_client, mixed):
    rows = read_csv(viewer_client.get("/ops/transactions.csv?status=success&currency=ignored"))
    assert sorted(r["transaction_id"] for r in rows) == ["txn_exp_jpy_ok", "txn_exp_usd_ok"]
    assert [r["transaction_id"] for r in read_csv(viewer_client.get("/ops/transactions.csv?flagged=1"))] == [
        "txn_exp_usd_fl"]
    assert [r["transaction_id"] for r in read_csv(viewer_client.get("/ops/transactions.csv?q=ord_exp_jpy_ok"))] == [
        "txn_exp_jpy_ok"]
    assert read_csv(viewer_client.get("/ops/transactions.csv?created_from=2025-06-02")) == []

    html = viewer_client.get("/ops/transactions?status=success&flagged=0&after=abc").get_data(as_text=True)
    link = html.split('id="export-csv"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    assert urlsplit(link).path == "/ops/transactions.csv"
    assert parse_qs(urlsplit(link).query) == {"status": ["success"], "flagged": ["0"]}  # no page cursor


def test_the_export_covers_every_page_not_just_the_first(app, viewer_client, mixed):
    with app.app_context():
        db.session.execute(insert(Order), [{"id": "ord_exp_bulk", "status": "open", "total": 100, "currency": "USD",
                                            "access_code": "ABCDEFGHJK", "created_at": START, "updated_at": START}])
        db.session.execute(insert(Transaction), [
            {"id": f"txn_exp_bulk{i:04d}", "order_id": "ord_exp_bulk", "amount": 100, "currency": "USD",
             "status": "failure", "gateway": "sandbox", "expires_at": START, "needs_review": False,
             "refunded_amount": 0, "check_attempts": 0, "created_at": START - timedelta(seconds=i),
             "updated_at": START} for i in range(ops.MAX_PAGE_SIZE + 30)])
        db.session.commit()
    rows = read_csv(viewer_client.get("/ops/transactions.csv?status=failure"))
    assert len(rows) == ops.MAX_PAGE_SIZE + 30
    assert rows[0]["transaction_id"] == "txn_exp_bulk0000" and rows[-1]["transaction_id"].endswith(
        f"{ops.MAX_PAGE_SIZE + 29:04d}")


def test_an_export_over_the_limit_is_refused_with_the_reason_not_cut_short(viewer_client, mixed, monkeypatch):
    monkeypatch.setattr(ops, "EXPORT_LIMIT", 4)
    response = viewer_client.get("/ops/transactions.csv?gateway=sandbox")
    assert response.status_code == 303
    target = urlsplit(response.location)
    assert target.path == "/ops/transactions" and parse_qs(target.query) == {"gateway": ["sandbox"]}
    page = viewer_client.get(response.location).get_data(as_text=True)
    assert "More than 4 transactions match these filters" in page and 'role="alert"' in page
    assert len(read_csv(viewer_client.get("/ops/transactions.csv?status=success"))) == 2  # under the limit: fine


def test_a_real_payment_exports_as_the_detail_page_shows_it(app, admin_client, gateway):
    order, tx_id, amount = paid_transaction(admin_client, gateway)
    rows = read_csv(admin_client.get(f"/ops/transactions.csv?q={tx_id}"))
    assert len(rows) == 1
    row = rows[0]
    assert (row["order_id"], row["status"], row["amount_minor"], row["currency"]) == (
        order["order_id"], "success", str(amount), order["currency"])
    with app.app_context():
        db.session.execute(update(Transaction).where(Transaction.id == tx_id).values(refunded_amount=amount))
        db.session.commit()
    assert read_csv(admin_client.get(f"/ops/transactions.csv?q={tx_id}"))[0]["refunded_minor"] == str(amount)

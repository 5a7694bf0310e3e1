"""The transactions list: filters, search, counts per status, keyset pagination over 10,000 rows."""

import base64
import random
from datetime import date, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import event, insert

from app.extensions import db
from app.models import Order, Transaction
from app.services import ops
from app.services.ops import Cursor, ListFilters

ROWS = 10_000
STATUSES = ["pending", "success", "failure", "expired", "cancelled", "refunded", "partially_refunded"]
START = datetime(2024, 3, 1, 0, 0, 0)


@pytest.fixture
def many(app):
    """10,000 transactions over 100 orders, two gateways and ~35 days, with created_at ties."""
    rnd = random.Random(6)
    orders = [{"id": f"ord_bulk{i:04d}", "status": "open", "total": 1000 + i, "currency": "USD",
               "access_code": "ABCDEFGHJK", "created_at": START, "updated_at": START} for i in range(100)]
    rows = []
    for i in range(ROWS):
        # three rows share each timestamp, so the id must break ties
        created = START + timedelta(minutes=5 * (i // 3), microseconds=0 if i % 7 else 123456)
        rows.append({
            "id": f"txn_{rnd.getrandbits(64):016x}{i:05d}", "order_id": orders[i % 100]["id"],
            "amount": 1000 + (i % 100), "currency": "USD", "status": STATUSES[rnd.randrange(7)],
            "gateway": "sandbox" if i % 4 else "othergate", "expires_at": created + timedelta(minutes=30),
            "needs_review": i % 50 == 0, "refunded_amount": 0, "check_attempts": 0,
            "created_at": created, "updated_at": created,
        })
    with app.app_context():
        db.session.execute(insert(Order), orders)
        db.session.execute(insert(Transaction), rows)
        db.session.commit()
    return rows


def newest_first(rows):
    return sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)


def skips_rows(statement: str, parameters) -> bool:
    """True when the statement skips rows with OFFSET. SQLAlchemy's SQLite dialect writes
    ``LIMIT ? OFFSET ?`` for every LIMIT, with the offset bound to 0: that skips nothing."""
    if "OFFSET" not in statement.upper():
        return False
    return not (statement.rstrip().upper().endswith("LIMIT ? OFFSET ?") and parameters[-1] == 0)


@pytest.fixture
def statements(app):
    """Every SQL statement the test runs with its parameters, to prove no OFFSET is used."""
    seen = []
    with app.app_context():
        engine = db.engine

    def record(conn, cursor, statement, parameters, *args):
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def walk(filters, limit):
    pages, after = [], None
    while True:
        page = ops.list_transactions(filters, after=after, limit=limit)
        pages.append(page)
        if page.older is None:
            return pages
        after = page.older


def test_keyset_pagination_walks_all_10000_rows_in_order_without_offset(app, many, statements):
    with app.app_context():
        pages = walk(ListFilters(), limit=200)
        ids = [tx.id for page in pages for tx in page.rows]
        assert ids == [r["id"] for r in newest_first(many)]
        assert len(pages) == ROWS // 200 and pages[0].newer is None and pages[-1].older is None
        # and back again, newer and newer, from the last page
        back, before = [pages[-1].rows], pages[-1].newer
        while before:
            page = ops.list_transactions(ListFilters(), before=before, limit=200)
            back.insert(0, page.rows)
            before = page.newer
        assert [tx.id for rows in back for tx in rows] == ids
    selects = [(s, p) for s, p in statements if "FROM transactions" in s]
    assert selects and not any(skips_rows(s, p) for s, p in selects)


def test_a_deep_page_costs_one_bounded_query(app, many, statements):
    target = newest_first(many)[7000]
    cursor = Cursor(target["created_at"], target["id"]).encode()
    with app.app_context():
        statements.clear()
        page = ops.list_transactions(ListFilters(), after=cursor, limit=50)
    assert [tx.id for tx in page.rows] == [r["id"] for r in newest_first(many)[7001:7051]]
    listing = [(s, p) for s, p in statements if "FROM transactions" in s]
    assert len(listing) == 1 and "LIMIT" in listing[0][0].upper() and not skips_rows(*listing[0])


@pytest.mark.parametrize("filters, keep", [
    (ListFilters(status="success"), lambda r: r["status"] == "success"),
    (ListFilters(gateway="othergate"), lambda r: r["gateway"] == "othergate"),
    (ListFilters(flagged=True), lambda r: r["needs_review"]),
    (ListFilters(flagged=False, status="pending"), lambda r: not r["needs_review"] and r["status"] == "pending"),
    (ListFilters(created_from=date(2024, 3, 10), created_to=date(2024, 3, 12)),
     lambda r: date(2024, 3, 10) <= r["created_at"].date() <= date(2024, 3, 12)),
    (ListFilters(search="ord_bulk0042"), lambda r: r["order_id"] == "ord_bulk0042"),
])
def test_filters_and_their_pages(app, many, filters, keep):
    expected = [r["id"] for r in newest_first(many) if keep(r)]
    assert expected
    with app.app_context():
        ids = [tx.id for page in walk(filters, limit=150) for tx in page.rows]
        counts = ops.status_counts(filters)
    assert ids == expected
    if filters.status:
        assert counts[filters.status] == len(expected)
    else:
        assert sum(counts.values()) == len(expected)


def test_search_by_transaction_id(app, many):
    wanted = many[1234]["id"]
    with app.app_context():
        page = ops.list_transactions(ListFilters(search=f"  {wanted} "))
    assert [tx.id for tx in page.rows] == [wanted]


def test_counts_per_status(app, many):
    with app.app_context():
        counts = ops.status_counts(ListFilters())
    assert counts == {s: sum(1 for r in many if r["status"] == s) for s in STATUSES}


def test_the_list_page_filters_counts_and_pages(admin_client, many):
    expected = [r["id"] for r in newest_first(many) if r["status"] == "failure" and r["gateway"] == "sandbox"]
    url, seen = "/ops/transactions?status=failure&gateway=sandbox", []
    for _ in range(3):  # the first three pages over HTTP
        response = admin_client.get(url)
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        seen += [chunk.split('"', 1)[0] for chunk in html.split('data-transaction-id="')[1:]]
        older = html.split('rel="next" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        query = parse_qs(urlsplit(older).query)
        assert query["status"] == ["failure"] and query["gateway"] == ["sandbox"] and "after" in query
        url = older
    assert seen == expected[:150]
    counts_html = html.split('id="status-counts"', 1)[1].split("</nav>", 1)[0]
    sandbox_failures = sum(1 for r in many if r["gateway"] == "sandbox" and r["status"] == "failure")
    assert 'data-status="failure"' in counts_html and f'<span class="count">{sandbox_failures}</span>' in counts_html
    assert "<caption>" in html


def test_the_list_page_filters_by_any_gateway_name(admin_client, many):
    html = admin_client.get("/ops/transactions?gateway=othergate").get_data(as_text=True)
    ids = [chunk.split('"', 1)[0] for chunk in html.split('data-transaction-id="')[1:]]
    assert ids == [r["id"] for r in newest_first(many) if r["gateway"] == "othergate"][:ops.PAGE_SIZE]
    assert '<option selected value="othergate">' in html or 'value="othergate" selected' in html


def test_bad_filter_values_are_ignored_not_fatal(admin_client, many):
    response = admin_client.get("/ops/transactions?status=nonsense&created_from=yesterday&after=%%%&flagged=maybe")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.count('data-transaction-id="') == ops.PAGE_SIZE
    assert "(ignored)" in html


@pytest.mark.parametrize("query", [
    "created_to=9999-12-31", "created_from=9999-12-31&created_to=9999-12-31", "created_from=0001-01-01",
    # a cursor that decodes to an id holding NUL, which PostgreSQL refuses in text
    "after=" + base64.urlsafe_b64encode(b"2024-01-01T00:00:00|a\x00b").decode().rstrip("="),
    "before=" + base64.urlsafe_b64encode(b"2024-01-01T00:00:00|a\x00b").decode().rstrip("="),
])
def test_edge_dates_and_forged_cursors_are_pages_not_faults(admin_client, many, query):
    response = admin_client.get(f"/ops/transactions?{query}")
    assert response.status_code == 200


def test_empty_result_says_so(admin_client, many):
    html = admin_client.get("/ops/transactions?q=txn_nothing_like_it").get_data(as_text=True)
    assert "No transactions match these filters." in html


@pytest.mark.parametrize("query", ["_method=POST", "endpoint=x", "_external=1&_scheme=http&_anchor=x",
                                   "values=1&status=success", "unknown=1&after=x"])
def test_names_of_url_fors_own_in_the_query_are_ignored_not_a_failure(viewer_client, query):
    response = viewer_client.get(f"/ops/transactions?{query}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'href="/ops/transactions?status=pending' in html  # links stay plain, relative and fragment-free
    assert "#x" not in html and "http://localhost" not in html and "endpoint=" not in html
    export = viewer_client.get(f"/ops/transactions.csv?{query}")
    assert export.status_code == 200

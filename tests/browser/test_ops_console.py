"""Ops staff in Chromium against the live app and the sandbox: forms sent once, pages that
reload as pages, focus kept through live refreshes, and a session that ends says so."""

from __future__ import annotations

import re
import threading

import pytest
from sqlalchemy import select

from app.auth import accounts, sessions
from app.extensions import db
from app.models import Refund, Transaction, User
from app.services import refunds
from app.services.ops import money_text, notify_ops
from app.services.status_moves import flag_for_review
from tests.browser.test_checkout_flow import SUCCESS_CARD, checkout, pay_with, screen

pytestmark = pytest.mark.browser

ADMIN, PASSWORD = "ops-browser@example.test", "correct horse battery staple"


@pytest.fixture(scope="module")
def admin(live):
    with live.app.app_context():
        accounts.create_user(ADMIN, PASSWORD, "admin")
    return ADMIN


def paid_transaction(shop_context) -> str:
    page = shop_context.new_page()
    gateway_tab, tx_id = checkout(page, shop_context)
    pay_with(gateway_tab, SUCCESS_CARD)
    screen(page, "success").wait_for(state="visible")
    page.close()
    return tx_id


def detail_page(chromium, live, admin, tx_id, *, answers=(), asked=None):
    """A fresh staff browser, logged in, on the transaction's page. The page's confirmations
    are answered from ``answers`` in turn (then yes), their questions kept in ``asked``."""
    context = chromium.new_context(base_url=live.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    answers, asked = list(answers), asked if asked is not None else []

    def answer(dialog):
        asked.append(dialog.message)
        dialog.accept() if (answers.pop(0) if answers else True) else dialog.dismiss()

    page.on("dialog", answer)
    page.goto("/ops/login")
    page.get_by_label("Email").fill(admin)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/ops/"))
    page.goto(f"/ops/transactions/{tx_id}")
    page.locator("#live-indicator[data-live=on]").wait_for()
    return page


def refund_rows(live, tx_id):
    with live.app.app_context():
        return [(r.amount, r.status) for r in db.session.scalars(select(Refund).where(Refund.transaction_id == tx_id))]


@pytest.mark.parametrize("refreshed", [False, True], ids=["as loaded", "after a live refresh"])
def test_a_refund_clicked_twice_is_sent_once(live, chromium, shop_context, admin, refreshed):
    tx_id = paid_transaction(shop_context)
    page = detail_page(chromium, live, admin, tx_id)
    if refreshed:  # the actions section is swapped for a fresh one: its forms are guarded too
        with live.app.app_context():
            refunds.refund(tx_id, 100, "other@example.test")
        page.locator("#txn-refunds").get_by_text("1.00 USD").wait_for()
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/ops/" in r.url else None)
    live.admin("POST", "/faults", json={"scope": "global", "latency_ms": 3000})  # the first click is still out
    try:
        page.get_by_label(re.compile("^Amount to refund")).fill("500")
        # Two clicks 300 ms apart, the second while the first is at the gateway. Clicked from the
        # page itself: Playwright's own clicks would wait for the first navigation to finish.
        page.get_by_role("button", name="Refund", exact=True).evaluate(
            "button => { button.click(); setTimeout(() => button.click(), 300); }")
        page.get_by_text("Refunded 5.00 USD.").wait_for()
    finally:
        live.admin("POST", "/faults", json={"scope": "global", "latency_ms": 0})
    assert posts == [f"{live.url}/ops/transactions/{tx_id}/refund"]
    assert (500, "succeeded") in refund_rows(live, tx_id) and len(refund_rows(live, tx_id)) == 1 + refreshed
    page.context.close()


def test_a_refused_action_reloads_as_the_transaction_page(live, chromium, shop_context, admin):
    tx_id = paid_transaction(shop_context)
    page = detail_page(chromium, live, admin, tx_id)
    page.get_by_label(re.compile("^Amount to refund")).fill("999999")
    page.get_by_role("button", name="Refund", exact=True).click()
    page.get_by_role("alert").filter(has_text="remain to be refunded").wait_for()
    # ops.js shows the page's own address, not the form's POST-only one
    page.wait_for_function("path => location.pathname === path", arg=f"/ops/transactions/{tx_id}")
    assert page.url == f"{live.url}/ops/transactions/{tx_id}"
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/ops/" in r.url else None)
    page.reload()
    assert page.locator("h1").inner_text().startswith("Transaction") and posts == []
    page.locator("#live-indicator[data-live=on]").wait_for()
    with live.app.app_context():  # another admin refunds: this page's live refresh shows it
        refunds.refund(tx_id, 700, "other@example.test")
    page.locator("#txn-refunds").get_by_text("7.00 USD").wait_for()
    page.context.close()


def test_focus_stays_on_its_control_when_the_page_refreshes(live, chromium, shop_context, admin):
    tx_id = paid_transaction(shop_context)
    page = detail_page(chromium, live, admin, tx_id)
    recheck = page.get_by_role("button", name="Re-check with the gateway now")
    recheck.focus()
    with live.app.app_context():
        refunds.refund(tx_id, 300, "other@example.test")
    page.locator("#txn-refunds").get_by_text("3.00 USD").wait_for()
    assert page.evaluate("document.activeElement.textContent") == "Re-check with the gateway now"
    assert page.evaluate("document.body.contains(document.activeElement) && document.activeElement !== document.body")
    page.context.close()


def test_an_ended_session_says_so_on_the_open_page(live, chromium, shop_context, admin):
    tx_id = paid_transaction(shop_context)
    page = detail_page(chromium, live, admin, tx_id)
    with live.app.app_context():
        sessions.end_user_sessions(db.session.scalar(select(User.id).where(User.email == admin)), "test")
    indicator = page.locator("#live-indicator")
    indicator.filter(has_text="Your session has ended; log in again.").wait_for()
    assert indicator.get_attribute("data-live") == "off"
    page.context.close()


def test_a_refund_asks_first_and_no_sends_nothing(live, chromium, shop_context, admin):
    tx_id = paid_transaction(shop_context)
    with live.app.app_context():
        captured = db.session.get(Transaction, tx_id).amount
    asked = []
    page = detail_page(chromium, live, admin, tx_id, answers=[False, True, False], asked=asked)
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/ops/" in r.url else None)
    page.get_by_label(re.compile("^Amount to refund")).fill("1234")
    page.get_by_role("button", name="Refund", exact=True).click()
    assert asked == [f"Refund 12.34 USD of payment {tx_id} to the shopper? A refund cannot be undone."]
    assert not page.locator("form.refund").evaluate("form => form.hasAttribute('data-sending')")
    assert posts == [] and refund_rows(live, tx_id) == []
    page.get_by_role("button", name="Refund", exact=True).click()  # asked again: yes
    page.get_by_text("Refunded 12.34 USD.").wait_for()
    assert len(asked) == 2 and refund_rows(live, tx_id) == [(1234, "succeeded")]
    left = money_text(captured - 1234, "USD")
    page.get_by_role("button", name=f"Refund the remaining {left} in full").click()
    assert asked[2] == f"Refund the remaining {left} of payment {tx_id} to the shopper? A refund cannot be undone."
    assert len(posts) == 1 and refund_rows(live, tx_id) == [(1234, "succeeded")]
    page.context.close()


@pytest.mark.parametrize("focused", [False, True], ids=["typed, then left", "still typing"])
def test_a_live_refresh_keeps_the_typed_amount_and_shows_what_remains(live, chromium, shop_context, admin, focused):
    """Before, an amount in the field kept the whole Actions section from refreshing: the full
    refund button (and its question) went on offering what had already been refunded."""
    tx_id = paid_transaction(shop_context)
    with live.app.app_context():
        captured = db.session.get(Transaction, tx_id).amount
    page = detail_page(chromium, live, admin, tx_id)
    field = page.get_by_label(re.compile("^Amount to refund"))
    field.fill("25")
    if not focused:
        page.get_by_role("button", name="Re-check with the gateway now").focus()
    with live.app.app_context():
        refunds.refund(tx_id, 1000, "other@example.test")
    left = money_text(captured - 1000, "USD")
    page.get_by_role("button", name=f"Refund the remaining {left} in full").wait_for()
    assert field.input_value() == "25"
    assert page.evaluate("document.activeElement.id === 'refund-amount'") is focused
    page.context.close()


def test_a_live_update_while_a_refund_is_on_its_way_does_not_re_arm_the_form(live, chromium, shop_context, admin):
    """The Actions section refreshes live now; while a refund form is being sent it must not be
    swapped for a fresh one (a fresh key), or a second click would be a second refund."""
    tx_id = paid_transaction(shop_context)
    page = detail_page(chromium, live, admin, tx_id)
    posts, clicked = [], threading.Event()

    def seen(request):
        if request.method == "POST" and "/ops/" in request.url:
            posts.append(request.url)
        if request.url.endswith("/healthz?first-click"):
            clicked.set()

    def change_meanwhile():  # once the first click is out: the transaction changes, a live update comes
        if clicked.wait(15):
            with live.app.app_context():
                flag_for_review(tx_id, "checked_by_a_colleague")
                db.session.commit()
                notify_ops(tx_id)

    page.on("request", seen)
    colleague = threading.Thread(target=change_meanwhile)
    live.admin("POST", "/faults", json={"scope": "global", "latency_ms": 3000})  # the refund is still out
    try:
        page.get_by_label(re.compile("^Amount to refund")).fill("500")
        colleague.start()
        # All from the page itself: Playwright waits out a pending navigation before it acts.
        assert page.evaluate("""() => new Promise(done => {
            document.querySelector("form.refund button").click();
            fetch("/healthz?first-click");
            const held = setInterval(() => {  // the live refresh, held back while the form is out
              if (!document.body.hasAttribute("data-refresh-held")) return;
              clearInterval(held);
              document.querySelector("form.refund button").click();  // the second click
              done(true);
            }, 20);
        })""")
        page.get_by_text("Refunded 5.00 USD.").wait_for()
    finally:
        live.admin("POST", "/faults", json={"scope": "global", "latency_ms": 0})
        colleague.join(20)
    assert posts == [f"{live.url}/ops/transactions/{tx_id}/refund"]
    assert refund_rows(live, tx_id) == [(500, "succeeded")]
    page.context.close()

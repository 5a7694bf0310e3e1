"""A shopper in Chromium against the live app and the sandbox gateway (issue 4's acceptance)."""

from __future__ import annotations

import re
import time

import pytest
import requests

pytestmark = pytest.mark.browser

SUCCESS_CARD = "4242 4242 4242 4242"
DECLINED_CARD = "4000 0000 0000 0002"
CONFIRM_CARD = "4000 0000 0000 3220"  # an extra confirmation page: Complete or Fail
SETTLE_LATER_CARD = "4000 0000 0000 0077"  # pending for SANDBOX_PENDING_SECONDS (2 in `live`), then success
TX_URL = re.compile(r"/payment/(txn_[\w-]+)$")


def screen(page, name: str):
    return page.locator(f'#payment [data-screen="{name}"]')


def checkout(page, context, items=(("TEE-BLACK", 1),)):
    """Fill the cart, check out and press Pay; returns (gateway tab, transaction id)."""
    page.goto("/")
    for sku, quantity in items:
        page.get_by_label(re.compile("^Quantity")).and_(page.locator(f"#qty-{sku}")).fill(str(quantity))
    page.get_by_role("button", name="Check out").click()
    page.wait_for_url(re.compile(r"/checkout/ord_"))
    return press_pay(page, context, page.get_by_role("button", name=re.compile("^Pay ")))


def press_pay(page, context, button):
    """Press a Pay (or Try again) button: the gateway opens in a new tab, this tab waits."""
    before = page.url
    with context.expect_page() as opened:
        button.click()
    gateway_tab = opened.value
    page.wait_for_url(lambda url: bool(TX_URL.search(url)) and url != before)
    # The tab opens blank and is sent to the gateway once the payment has its page: wait for
    # that address, not just a load (about:blank's load is over at once).
    gateway_tab.wait_for_url(re.compile(r"/pay/[^/]+$"))
    assert screen(page, "pending").is_visible()
    return gateway_tab, TX_URL.search(page.url).group(1)


def pay_with(gateway_tab, card: str) -> None:
    gateway_tab.fill("#card_number", card)
    gateway_tab.fill("#expiry", "12/39")
    gateway_tab.fill("#cvc", "123")
    gateway_tab.fill("#name", "Ada Lovelace")
    gateway_tab.get_by_role("button", name="Pay", exact=True).click()


def mark_document(page) -> None:
    """Tag this document; the tag survives only if the page is never reloaded."""
    page.evaluate("window.__sameDocument = true")


def same_document(page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def test_success_card_shows_success_without_reload(live, shop_context, screenshot):
    page = shop_context.new_page()
    polls = []
    page.on("request", lambda r: polls.append(r.url) if "/check-payment-status/" in r.url else None)
    # Socket.IO's long-polling would break with several workers on one port (REDIS_URL): none.
    long_polls = []
    page.on("request", lambda r: long_polls.append(r.url) if "transport=polling" in r.url else None)
    gateway_tab, tx_id = checkout(page, shop_context, [("TEE-BLACK", 2), ("MUG-ENAMEL", 1)])
    mark_document(page)
    screenshot(page, "payment-pending")
    pay_with(gateway_tab, SUCCESS_CARD)

    success = screen(page, "success")
    success.wait_for(state="visible")
    assert same_document(page)
    assert "52.48 USD" in success.inner_text()
    assert page.locator("#payment-status").inner_text() == "Payment received. Thank you!"
    assert page.evaluate("document.activeElement.textContent") == "Payment received"
    assert not page.locator("#connection-note").is_visible() and polls == []  # it was the socket
    assert long_polls == []
    assert page.locator("#access-code").inner_text()
    # The order is fulfilled when its handler returns, a moment after the success is pushed.
    order_url = f"{live.url}/api/orders/{page.locator('#order-number').inner_text()}"
    deadline = time.monotonic() + 10
    while (order := requests.get(order_url, timeout=5).json())["status"] != "fulfilled" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert order["status"] == "fulfilled" and order["paid_transaction_id"] == tx_id
    screenshot(page, "payment-success")


def test_declined_card_shows_failure_then_try_again_succeeds(live, shop_context, screenshot):
    page = shop_context.new_page()
    gateway_tab, first_tx = checkout(page, shop_context)
    mark_document(page)
    pay_with(gateway_tab, DECLINED_CARD)

    failure = screen(page, "failure")
    failure.wait_for(state="visible")
    assert same_document(page)
    screenshot(page, "payment-failure")

    gateway_tab, second_tx = press_pay(page, shop_context, failure.get_by_role("button", name="Try again"))
    assert second_tx != first_tx
    pay_with(gateway_tab, SUCCESS_CARD)
    screen(page, "success").wait_for(state="visible")


def confirm_with(gateway_tab, button: str) -> None:
    """Pay with the 3220 card, then press Complete or Fail on the sandbox's confirmation page."""
    pay_with(gateway_tab, CONFIRM_CARD)
    gateway_tab.wait_for_url(re.compile(r"/pay/[^/]+/confirm$"))
    gateway_tab.get_by_role("button", name=button, exact=True).click()


def test_confirmation_card_complete_shows_success_without_reload(live, shop_context, screenshot):
    page = shop_context.new_page()
    gateway_tab, tx_id = checkout(page, shop_context)
    mark_document(page)
    confirm_with(gateway_tab, "Complete")

    screen(page, "success").wait_for(state="visible")
    assert same_document(page)
    assert page.locator("#payment-status").inner_text() == "Payment received. Thank you!"
    status = requests.get(f"{live.url}/check-payment-status/{tx_id}", timeout=5).json()["status"]
    assert status == "success"
    screenshot(page, "payment-confirm-complete")


def test_confirmation_card_fail_shows_failure_without_reload(live, shop_context, screenshot):
    page = shop_context.new_page()
    gateway_tab, tx_id = checkout(page, shop_context)
    mark_document(page)
    confirm_with(gateway_tab, "Fail")

    screen(page, "failure").wait_for(state="visible")
    assert same_document(page)
    assert not screen(page, "success").is_visible()
    status = requests.get(f"{live.url}/check-payment-status/{tx_id}", timeout=5).json()["status"]
    assert status == "failure"
    screenshot(page, "payment-confirm-fail")


def test_settle_later_card_stays_pending_then_turns_to_success(live, shop_context, screenshot):
    page = shop_context.new_page()
    gateway_tab, tx_id = checkout(page, shop_context)
    mark_document(page)
    pay_with(gateway_tab, SETTLE_LATER_CARD)
    gateway_tab.wait_for_url(re.compile(rf"/payment/{tx_id}(\?returned=1)?$"))  # accepted, back at the shop

    assert screen(page, "pending").is_visible()  # accepted, not settled: still waiting
    screen(page, "success").wait_for(state="visible", timeout=8_000)
    assert same_document(page)
    status = requests.get(f"{live.url}/check-payment-status/{tx_id}", timeout=5).json()["status"]
    assert status == "success"
    screenshot(page, "payment-settled-later")


def test_late_webhook_turns_the_page_within_a_second_of_delivery(live, shop_context):
    page = shop_context.new_page()
    gateway_tab, tx_id = checkout(page, shop_context)
    live.admin("POST", "/faults", json={"scope": tx_id, "delay_webhook_seconds": 5})
    # This shopper closes the gateway's tab as soon as the card is taken, so they never come
    # back through return_url: only the (late) webhook can tell the waiting page.
    def card_taken_then_closed(route):
        if route.request.method != "POST":
            return route.continue_()
        answer = route.fetch(max_redirects=0)
        assert answer.status == 303
        route.fulfill(status=200, content_type="text/html", body="<p>closed</p>")

    gateway_tab.route(f"{live.gateway_url}/pay/*", card_taken_then_closed)
    polls = []
    page.on("request", lambda r: polls.append(r.url) if "/check-payment-status/" in r.url else None)
    pay_with(gateway_tab, SUCCESS_CARD)

    def delivered():
        deliveries = live.admin("GET", f"/deliveries?transaction_id={tx_id}")["deliveries"]
        return [d for d in deliveries if d["state"] == "delivered" and d["event_status"] == "success"]

    # Read the page first, then the gateway's delivery log: success on the page implies a
    # delivery, since nothing else can tell this page (the shopper never came back).
    shown_first = screen(page, "success").is_visible()
    held_back = not delivered()  # the gateway holds the webhook 5 s; paying took less
    assert not shown_first or not held_back
    assert held_back, "the delivery was not late: this test would not show a late webhook turning the page"
    screen(page, "success").wait_for(state="visible", timeout=10_000)
    assert len(delivered()) == 1
    assert polls == []  # the socket brought it, not the polling fallback


def test_socket_blocked_polling_still_reaches_success(live, shop_context, screenshot):
    page = shop_context.new_page()
    page.route(re.compile(r".*/socket\.io/.*"), lambda route: route.abort())
    page.route_web_socket(re.compile(r".*/socket\.io/.*"), lambda ws: ws.close())
    polls = []
    page.on("request", lambda r: polls.append(r.url) if "/check-payment-status/" in r.url else None)
    gateway_tab, tx_id = checkout(page, shop_context)
    mark_document(page)
    page.locator("#connection-note").wait_for(state="visible")
    screenshot(page, "payment-pending-polling")
    pay_with(gateway_tab, SUCCESS_CARD)

    screen(page, "success").wait_for(state="visible", timeout=12_000)
    assert same_document(page)
    assert polls and all(url.endswith(f"/check-payment-status/{tx_id}") for url in polls)
    count = len(polls)
    page.wait_for_timeout(6000)
    assert len(polls) == count  # final: polling stopped


def _lose_updates_after_the_first(ws):
    """A WebSocket route that passes the page's socket through but drops every status push after
    the one on join (a message queue failing after the join, say), while the socket stays up."""
    server = ws.connect_to_server()
    seen = []

    def to_page(message):
        if "payment_status_update" in str(message):
            seen.append(message)
            if len(seen) > 1:
                return
        ws.send(message)

    server.on_message(to_page)
    ws.on_message(server.send)


def test_a_push_lost_while_the_socket_stays_up_is_caught_by_the_slow_check(live, shop_context):
    """The room's push of the change never arrives (a message queue failing after the join,
    say), while the socket stays connected: the page still learns the result by asking."""
    page = shop_context.new_page()
    page.route_web_socket(re.compile(r".*/socket\.io/.*"), _lose_updates_after_the_first)
    checks = []
    page.on("response", lambda r: checks.append(r) if "/check-payment-status/" in r.url else None)
    live.app.config["PAYMENT_PAGE_CHECK_SECONDS"] = 2
    try:
        gateway_tab, tx_id = checkout(page, shop_context)
    finally:
        live.app.config["PAYMENT_PAGE_CHECK_SECONDS"] = 30
    pay_with(gateway_tab, SUCCESS_CARD)

    screen(page, "success").wait_for(state="visible", timeout=10_000)
    # The check brought it (had the push got through, no check would have answered success:
    # the page stops asking once it has the result, and the check must come first for that).
    assert "success" in [check.json()["status"] for check in checks if check.url.endswith(tx_id)]
    assert page.locator("#connection-note").is_hidden()  # the socket stayed up: no fallback polling


def test_a_tab_shown_again_asks_at_once_while_the_socket_stays_up(live, shop_context):
    """README: the waiting page asks /check-payment-status when the tab is shown again, even while
    connected, so a lost push does not leave it waiting for the 30-second check."""
    page = shop_context.new_page()
    page.route_web_socket(re.compile(r".*/socket\.io/.*"), _lose_updates_after_the_first)
    checks = []
    page.on("response", lambda r: checks.append(r) if "/check-payment-status/" in r.url else None)
    gateway_tab, tx_id = checkout(page, shop_context)  # the slow check stays at its 30 s
    pay_with(gateway_tab, SUCCESS_CARD)
    deadline = time.monotonic() + 10
    while requests.get(f"{live.url}/check-payment-status/{tx_id}", timeout=5).json()["status"] != "success":
        assert time.monotonic() < deadline, "the payment did not succeed"
        time.sleep(0.1)
    page.wait_for_timeout(500)
    assert screen(page, "pending").is_visible() and checks == []  # the push was lost: still waiting

    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # the shopper comes back to it

    screen(page, "success").wait_for(state="visible", timeout=5_000)
    assert [check.json()["status"] for check in checks if check.url.endswith(tx_id)] == ["success"]
    assert page.locator("#connection-note").is_hidden()


def test_a_check_answered_before_the_push_but_arriving_after_it_is_ignored(live, shop_context):
    """The slow check asked while pending; its answer is held up until the socket has brought
    the success: the page must not go back to waiting."""
    page = shop_context.new_page()
    held = []
    page.route(re.compile(r".*/check-payment-status/.*"), lambda route: held.append((route, route.fetch())))
    live.app.config["PAYMENT_PAGE_CHECK_SECONDS"] = 1
    try:
        gateway_tab, _ = checkout(page, shop_context)
    finally:
        live.app.config["PAYMENT_PAGE_CHECK_SECONDS"] = 30
    deadline = time.monotonic() + 5
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert held and held[0][1].json()["status"] == "pending"
    pay_with(gateway_tab, SUCCESS_CARD)
    screen(page, "success").wait_for(state="visible", timeout=10_000)  # brought by the socket

    for route, answer in held:
        route.fulfill(response=answer)
    page.wait_for_timeout(1000)

    assert page.locator("#payment").get_attribute("data-status") == "success"
    assert screen(page, "success").is_visible()


def test_back_button_while_pending_shows_the_guard_then_cancel(live, shop_context, screenshot):
    page = shop_context.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.type), d.dismiss()))
    _gateway_tab, tx_id = checkout(page, shop_context)
    page.locator("h1").click()  # a person has interacted with the page
    page.go_back()
    guard = page.locator("#back-guard")
    guard.wait_for(state="visible")
    assert page.url.endswith(f"/payment/{tx_id}")
    assert "still in progress" in guard.inner_text()
    assert dialogs == []  # an in-page notice, not alert()
    screenshot(page, "payment-back-guard")

    page.get_by_role("button", name="Cancel payment").click()
    page.wait_for_url(re.compile(r"/checkout/ord_"))
    notice = page.get_by_role("status").first.inner_text()
    status = requests.get(f"{live.url}/check-payment-status/{tx_id}", timeout=5).json()["status"]
    # The sandbox announces the expiry by webhook too, often before our own move: that expiry
    # is this cancel, and is recorded as one.
    assert status == "cancelled" and "Your payment was cancelled" in notice
    assert dialogs == []  # Cancel left without a beforeunload prompt


def test_one_back_press_leaves_once_the_result_is_in(live, shop_context):
    page = shop_context.new_page()
    gateway_tab, _tx_id = checkout(page, shop_context)
    pay_with(gateway_tab, SUCCESS_CARD)
    screen(page, "success").wait_for(state="visible", timeout=12_000)
    page.go_back()  # one press: the guard's extra entry must not swallow it
    page.wait_for_url(re.compile(r"/checkout/ord_"), timeout=5_000)


def test_cancel_on_the_gateway_page_shows_the_cancelled_screen(live, shop_context, screenshot):
    page = shop_context.new_page()
    gateway_tab, tx_id = checkout(page, shop_context)
    mark_document(page)
    gateway_tab.get_by_role("button", name="Cancel").click()
    screen(page, "cancelled").wait_for(state="visible")
    assert same_document(page)
    screenshot(page, "payment-cancelled")
    # The gateway sent the shopper back to our cancel_url: the waiting page, which says so too.
    gateway_tab.wait_for_url(re.compile(rf"^{re.escape(live.url)}/payment/{tx_id}(\?cancelled=1)?$"))
    screen(gateway_tab, "cancelled").wait_for(state="visible")


def test_without_a_socket_the_page_asks_every_5_seconds(live, shop_context):
    """Contract 6: the waiting page falls back to polling section 3 every 5 s when the socket
    cannot connect."""
    page = shop_context.new_page()
    page.route(re.compile(r".*/socket\.io/.*"), lambda route: route.abort())
    page.route_web_socket(re.compile(r".*/socket\.io/.*"), lambda ws: ws.close())
    asked = []
    page.on("request", lambda r: asked.append((time.monotonic(), r.url)) if "/check-payment-status/" in r.url else None)
    gateway_tab, tx_id = checkout(page, shop_context)
    page.locator("#connection-note").wait_for(state="visible")
    deadline = time.monotonic() + 20
    while len(asked) < 4 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert len(asked) >= 4, asked
    assert all(url == f"{live.url}/check-payment-status/{tx_id}" for _, url in asked)
    gaps = [later - earlier for (earlier, _), (later, _) in zip(asked, asked[1:4])]
    assert all(4.5 <= gap <= 6.5 for gap in gaps), gaps
    gateway_tab.close()


def test_expiry_at_the_gateway_shows_the_expired_screen(live, shop_context, screenshot):
    page = shop_context.new_page()
    gateway_tab, _tx_id = checkout(page, shop_context)
    session_id = gateway_tab.url.rsplit("/", 1)[1]
    gateway_tab.close()
    mark_document(page)
    assert live.gateway("POST", f"/sessions/{session_id}/expire").status_code == 200
    screen(page, "expired").wait_for(state="visible")
    assert same_document(page)
    screenshot(page, "payment-expired")


def test_payment_status_lookup_finds_the_payment(live, chromium, shop_context, screenshot):
    page = shop_context.new_page()
    gateway_tab, tx_id = checkout(page, shop_context)
    order_id = page.locator("#order-number").inner_text()
    pay_with(gateway_tab, SUCCESS_CARD)
    screen(page, "success").wait_for(state="visible")
    code = page.locator("#access-code").inner_text()

    # The shopper comes back later in another browser.
    elsewhere = chromium.new_context(base_url=live.url)
    try:
        later = elsewhere.new_page()
        later.goto("/payment-status")
        later.get_by_label("Order number").fill(order_id)
        later.get_by_label("Access code").fill("WRONG-CODE0")
        later.get_by_role("button", name="Check payment").click()
        assert "could not find a payment" in later.get_by_role("alert").inner_text()

        later.get_by_label("Access code").fill(code.lower())
        later.get_by_role("button", name="Check payment").click()
        assert later.locator("#lookup-status").inner_text().strip() == "Paid"
        screenshot(later, "payment-status-lookup")
        later.get_by_role("link", name="Open the live payment page").click()
        later.wait_for_url(re.compile(f"/payment/{tx_id}$"))
        assert screen(later, "success").is_visible()
    finally:
        elsewhere.close()


def test_catalog_and_checkout_pages(live, shop_context, screenshot):
    page = shop_context.new_page()
    page.goto("/")
    page.locator("#qty-TEE-BLACK").fill("1")
    page.locator("#qty-POSTER-A2").fill("2")
    assert page.locator("#cart-summary").inner_text() == "Cart: 3 items, 89.99 USD"
    screenshot(page, "catalog")
    page.get_by_role("button", name="Check out").click()
    page.wait_for_url(re.compile(r"/checkout/ord_"))
    assert page.locator("#order-total").inner_text() == "89.99 USD"
    assert re.fullmatch(r"[0-9A-Z]{5}-[0-9A-Z]{5}", page.locator("#access-code").inner_text())
    screenshot(page, "checkout")
    page.set_viewport_size({"width": 375, "height": 740})
    screenshot(page, "checkout-mobile")

"""The ops console in a real browser (Debian Chromium through Playwright), over real HTTP.

Nothing of ours is mocked: the app runs in a werkzeug server thread on a SQLite file, the
built-in sandbox gateway serves the payment and the refund, and its worker delivers the
signed webhooks. A shopper pays on the hosted page; an admin logs in, finds the payment,
refunds part of it, and sees the status and timeline change, while a second tab showing
the list hears the change over Socket.IO.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from app import create_app
from app.extensions import db
from config import TestConfig

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
# Runs leave the tree clean: screenshots go to test-results/, and to docs/ only when asked.
SCREENSHOT = ROOT / ("docs" if os.environ.get("DOC_SCREENSHOTS") == "1" else "test-results") / "screenshots" \
    / "ops-transaction.png"
ADMIN, PASSWORD = "ops-admin@example.test", "browser-test-password"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live(tmp_path):
    """The app on a free port with the sandbox gateway, both in threads; yields the app's URL."""
    from app.sandbox.server import serve_in_thread

    sandbox = serve_in_thread("127.0.0.1", 0, {
        "SANDBOX_DATABASE_URL": f"sqlite:///{tmp_path / 'sandbox.db'}",
        "SANDBOX_DELIVERY_BACKOFF_FACTOR": 0.01,
        "SANDBOX_WORKER_POLL_SECONDS": 0.05,
    })
    port = _free_port()
    settings = {key: getattr(TestConfig, key) for key in dir(TestConfig) if key.isupper()}
    app = create_app({**settings, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'checkout.db'}",
                      "PAYMENT_GATEWAY_URL": sandbox.url, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"})
    with app.app_context():
        from app.auth.accounts import create_user
        from app.services.catalog import seed_demo_catalog

        db.create_all()
        seed_demo_catalog()
        create_user(ADMIN, PASSWORD, "admin")
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    sandbox.stop()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def wait_for_status(base: str, tx_id: str, wanted: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if requests.get(f"{base}/check-payment-status/{tx_id}", timeout=5).json()["status"] == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"{tx_id} did not become {wanted} within {within}s")


def test_admin_finds_a_payment_refunds_part_and_sees_it_live(live):
    from playwright.sync_api import expect, sync_playwright

    order = requests.post(f"{live}/api/orders", json={"items": [{"sku": "TEE-BLACK", "quantity": 2}]}).json()
    started = requests.post(f"{live}/initiate-payment", json={"order_id": order["order_id"]}).json()
    tx_id = started["transaction_id"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            shopper = browser.new_page()
            shopper.goto(started["payment_url"])
            shopper.get_by_label(re.compile("card number", re.I)).fill("4242 4242 4242 4242")
            shopper.get_by_label(re.compile("expiry", re.I)).fill("12/39")
            shopper.get_by_label(re.compile("cvc", re.I)).fill("123")
            shopper.get_by_label(re.compile("name", re.I)).fill("Ada Shopper")
            shopper.get_by_role("button", name="Pay").click()
            wait_for_status(live, tx_id, "success")

            staff = browser.new_context(viewport={"width": 1280, "height": 900})
            page = staff.new_page()
            page.goto(f"{live}/ops/transactions")
            expect(page).to_have_url(re.compile(r"/ops/login"))
            page.get_by_label("Email").fill(ADMIN)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("heading", name="Transactions")).to_be_visible()

            # find it by its order id
            page.get_by_label("Transaction or order id").fill(order["order_id"])
            page.get_by_role("button", name="Apply filters").click()
            row = page.locator(f'tr[data-transaction-id="{tx_id}"]')
            expect(row).to_contain_text("success")
            expect(row).to_contain_text("39.98 USD")

            # a second tab keeps the filtered list open and must hear the refund live
            watcher = staff.new_page()
            watcher.goto(page.url)
            expect(watcher.locator("#live-indicator")).to_have_attribute("data-live", "on")

            page.get_by_role("link", name=tx_id).click()
            expect(page.get_by_role("heading", name=re.compile("Transaction"))).to_contain_text(tx_id)
            expect(page.locator("#txn-summary [data-field=status]")).to_have_text("success")
            page.get_by_label(re.compile("Amount to refund")).fill("1000")
            asked = []
            page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
            page.get_by_role("button", name="Refund", exact=True).click()
            assert asked == [f"Refund 10.00 USD of payment {tx_id} to the shopper? A refund cannot be undone."]

            expect(page.get_by_role("status").filter(has_text="Refunded 10.00 USD.")).to_be_visible()
            expect(page.locator("#txn-summary [data-field=status]")).to_have_text("partially refunded")
            expect(page.locator("#txn-summary [data-field=refunded]")).to_have_text("10.00 USD")
            timeline = page.locator("#txn-timeline")
            expect(timeline).to_contain_text(f"refund of 10.00 USD requested by {ADMIN}")
            expect(timeline).to_contain_text("refund of 10.00 USD succeeded")
            # the move, said by whichever line made it (the webhook's or the refund's)
            moved = re.compile(r"success -> partially_refunded|\(success → partially_refunded\)")
            expect(timeline).to_contain_text(moved)
            expect(page.locator("#txn-refunds")).to_contain_text("succeeded")

            expect(watcher.locator(f'tr[data-transaction-id="{tx_id}"] [data-field=status]')).to_have_text(
                "partially refunded", timeout=10_000)

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            watcher.screenshot(path=str(SCREENSHOT.with_name("ops-transactions.png")), full_page=True)
        finally:
            browser.close()

"""The hosted payment page: form, test cards, confirmation step, pending card, cancel."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.sandbox import payments
from app.sandbox.models import Delivery, PaymentSession, utcnow

from .support import AUTH, form_token


@pytest.fixture
def app(make_app):
    """Here a 0077 card settles when the test says so (``settle_now``), never while it looks."""
    return make_app(SANDBOX_PENDING_SECONDS=600)


def settle_now(runtime) -> None:
    """Test data setup: every settling card's wait is over."""
    with runtime.storage.session() as db:
        db.execute(update(PaymentSession).where(PaymentSession.settle_at.is_not(None))
                   .values(settle_at=utcnow() - timedelta(seconds=1)))
        db.commit()


def assert_settles_once(shopper, runtime) -> None:
    """Once its wait is over, the settling card is a success, announced by one webhook."""
    settle_now(runtime)
    runtime.tick()
    assert shopper.status("tx_1") == "success"
    assert [d.event_status for d in deliveries(runtime)] == ["success"]


def page_text(answer) -> str:
    return answer.get_data(as_text=True)


def deliveries(runtime) -> list[Delivery]:
    with runtime.storage.session() as db:
        return list(db.scalars(select(Delivery).order_by(Delivery.id)))


def test_page_looks_like_a_checkout(shopper, runtime):
    session_id = shopper.session_id("tx_1", amount=123456, currency="EUR", merchant_name="Ada's Books")
    html = page_text(shopper.client.get(f"/pay/{session_id}"))
    assert "Ada&#39;s Books" in html and "1,234.56" in html and "EUR" in html
    for name in ("card_number", "expiry", "cvc", "name", "csrf_token"):
        assert f'name="{name}"' in html
    assert re.search(r"<button[^>]*>Pay</button>", html)
    assert re.search(r"<button[^>]*>Cancel</button>", html)


def test_the_card_page_cannot_be_framed_by_another_site(shopper):
    answer = shopper.client.get(f"/pay/{shopper.session_id('tx_1')}")
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]


def test_default_merchant_name_comes_from_settings(make_app):
    from .support import Shopper

    shopper = Shopper(make_app(SANDBOX_MERCHANT_NAME="Corner Shop").test_client())
    session_id = shopper.session_id("tx_1")
    assert "Corner Shop" in page_text(shopper.client.get(f"/pay/{session_id}"))


def test_4242_succeeds_and_returns_to_the_shop(shopper, runtime):
    session_id = shopper.session_id("tx_1")
    answer = shopper.pay(session_id, "4242 4242 4242 4242")
    assert answer.status_code == 303 and answer.location == "http://shop.test/payment/tx_1"
    assert shopper.status("tx_1") == "success"
    assert [d.event_status for d in deliveries(runtime)] == ["success"]


def test_0002_is_declined(shopper, runtime):
    session_id = shopper.session_id("tx_1")
    answer = shopper.pay(session_id, "4000 0000 0000 0002")
    assert answer.status_code == 303 and answer.location == "http://shop.test/payment/tx_1"
    assert shopper.status("tx_1") == "failure"
    assert [d.event_status for d in deliveries(runtime)] == ["failure"]
    assert "declined" in page_text(shopper.client.get(f"/pay/{session_id}"))


@pytest.mark.parametrize(("action", "status"), [("complete", "success"), ("fail", "failure")])
def test_3220_asks_for_confirmation(shopper, runtime, action, status):
    session_id = shopper.session_id("tx_1")
    answer = shopper.pay(session_id, "4000 0000 0000 3220")
    assert answer.status_code == 303 and answer.location.endswith(f"/pay/{session_id}/confirm")
    html = page_text(shopper.client.get(f"/pay/{session_id}/confirm"))
    assert re.search(r"<button[^>]*>Complete</button>", html) and re.search(r"<button[^>]*>Fail</button>", html)
    assert shopper.status("tx_1") == "pending" and deliveries(runtime) == []
    answer = shopper.confirm(session_id, action)
    assert answer.status_code == 303 and answer.location == "http://shop.test/payment/tx_1"
    assert shopper.status("tx_1") == status
    assert [d.event_status for d in deliveries(runtime)] == [status]


def test_confirmation_needs_a_known_action(shopper):
    session_id = shopper.session_id("tx_1")
    shopper.pay(session_id, "4000 0000 0000 3220")
    token = form_token(page_text(shopper.client.get(f"/pay/{session_id}/confirm")))
    answer = shopper.client.post(f"/pay/{session_id}/confirm", data={"csrf_token": token, "action": "maybe"})
    assert answer.status_code == 400
    assert shopper.status("tx_1") == "pending"


def test_0077_is_pending_then_succeeds(shopper, runtime):
    session_id = shopper.session_id("tx_1")
    answer = shopper.pay(session_id, "4000 0000 0000 0077")
    assert answer.status_code == 303 and answer.location == "http://shop.test/payment/tx_1"
    assert shopper.status("tx_1") == "pending"
    assert "processing" in page_text(shopper.client.get(f"/pay/{session_id}"))
    runtime.tick()
    assert deliveries(runtime) == []
    assert_settles_once(shopper, runtime)


def test_expire_while_an_accepted_card_settles_is_409_success_not_expired(shopper, runtime):
    session_id = shopper.session_id("tx_1")
    assert shopper.pay(session_id, "4000 0000 0000 0077").status_code == 303
    assert shopper.status("tx_1") == "pending"
    answer = shopper.client.post(f"/sessions/{session_id}/expire", headers=AUTH)
    assert answer.status_code == 409 and answer.get_json()["status"] == "success"
    assert shopper.status("tx_1") == "success"
    assert_settles_once(shopper, runtime)  # the settle timer finds nothing left to do


def test_an_accepted_card_is_not_expired_when_its_session_passes_expires_at(shopper, runtime):
    session_id = shopper.session_id("tx_1")
    assert shopper.pay(session_id, "4000 0000 0000 0077").status_code == 303
    with runtime.storage.session() as db:  # the session's window closes while the card settles
        db.execute(update(PaymentSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    # The worker's next wake-up is the settlement, not the passed expiry (which would spin it).
    with runtime.storage.session() as db:
        settle_at = db.scalar(select(PaymentSession.settle_at))
    assert payments.next_timer_at(runtime) == settle_at
    runtime.tick()  # the expiry timer
    assert shopper.status("tx_1") == "pending"  # /status refreshes too: still settling, not expired
    assert_settles_once(shopper, runtime)


def test_0077_settles_by_itself_with_the_worker_on(make_app):
    from .support import Shopper

    app = make_app(SANDBOX_DELIVERY_WORKER=True, SANDBOX_PENDING_SECONDS=0.2)
    shopper = Shopper(app.test_client())
    shopper.pay(shopper.session_id("tx_1"), "4000000000000077")
    deadline = time.monotonic() + 3
    while shopper.status("tx_1") != "success" and time.monotonic() < deadline:
        time.sleep(0.05)
    with app.extensions["sandbox"].storage.session() as db:
        assert db.scalar(select(PaymentSession.status)) == "success"


@pytest.mark.parametrize(
    ("field", "form", "message"),
    [
        ("card_number", {"card": "4242 4242 4242 4241"}, "This card number is not valid."),
        ("card_number", {"card": "4242 4242 4242 42²2"}, "Enter a card number of 12 to 19 digits."),
        ("expiry", {"expiry": "01/20"}, "This card has expired."),
        ("expiry", {"expiry": "2030-01"}, "Enter the expiry date as MM/YY."),
        ("cvc", {"cvc": "12"}, "Enter the 3-digit security code."),
    ],
)
def test_bad_card_details_are_refused_on_the_page(shopper, runtime, field, form, message):
    session_id = shopper.session_id("tx_1")
    answer = shopper.pay(session_id, **form)
    assert answer.status_code == 422
    html = page_text(answer)
    assert message in html and f'aria-invalid="true" aria-describedby="{field}-error"' in html
    assert f'id="{field}-error">{message}<' in html
    assert "4242 4242 4242 4241" not in html and "4242424242424241" not in html
    assert shopper.status("tx_1") == "pending" and deliveries(runtime) == []
    assert shopper.pay(session_id).status_code == 303  # the shopper can correct it


def test_post_without_a_valid_csrf_token_is_refused(shopper):
    session_id = shopper.session_id("tx_1")
    other_id = shopper.session_id("tx_2")
    other_token = form_token(page_text(shopper.client.get(f"/pay/{other_id}")))
    card = {"card_number": "4242424242424242", "expiry": "12/39", "cvc": "123"}
    for token in (None, "", "123.abc", other_token, "².abc", f"{int(time.time())}.é", "9" * 5000 + ".abc"):
        data = {**card, **({"csrf_token": token} if token is not None else {})}
        assert shopper.client.post(f"/pay/{session_id}", data=data).status_code == 400
    assert shopper.status("tx_1") == "pending"


def test_cancel_returns_to_cancel_url(shopper, runtime):
    session_id = shopper.session_id("tx_1")
    token = form_token(page_text(shopper.client.get(f"/pay/{session_id}")))
    answer = shopper.client.post(f"/pay/{session_id}/cancel", data={"csrf_token": token})
    assert answer.status_code == 303 and answer.location == "http://shop.test/checkout/cancelled/tx_1"
    assert shopper.status("tx_1") == "cancelled"
    assert [d.event_status for d in deliveries(runtime)] == ["cancelled"]


def test_finished_session_page_says_so_and_takes_no_card(shopper, runtime):
    session_id = shopper.session_id("tx_1")
    # This session's own, valid form token, taken while its card form was still shown,
    # so the CSRF check lets the late post through and the finished-session check answers it.
    token = form_token(page_text(shopper.client.get(f"/pay/{session_id}")))
    assert shopper.pay(session_id).status_code == 303
    assert shopper.status("tx_1") == "success"
    html = page_text(shopper.client.get(f"/pay/{session_id}"))
    assert "Payment complete" in html and 'name="card_number"' not in html
    card = {"csrf_token": token, "card_number": "4000 0000 0000 0002", "expiry": "12/39", "cvc": "123",
            "name": "Ada Lovelace"}
    again = shopper.client.post(f"/pay/{session_id}", data=card)
    assert again.status_code == 409
    assert "Payment complete" in page_text(again) and 'name="card_number"' not in page_text(again)
    assert shopper.status("tx_1") == "success"
    assert [d.event_status for d in deliveries(runtime)] == ["success"]


def test_expired_session_page_says_so(shopper):
    session_id = shopper.session_id("tx_1", expires_at="2020-01-01T00:00:00Z")
    answer = shopper.client.get(f"/pay/{session_id}")
    assert answer.status_code == 200 and "expired" in page_text(answer)
    assert 'name="card_number"' not in page_text(answer)


def test_unknown_session_page_is_404_html(client):
    answer = client.get("/pay/cs_nope")
    assert answer.status_code == 404 and answer.mimetype == "text/html"


def test_only_last_four_digits_are_stored_or_logged(shopper, runtime, settings, caplog):
    caplog.set_level("DEBUG")
    numbers = {
        "tx_1": "4242 4242 4242 4242", "tx_2": "4000 0000 0000 0002",
        "tx_3": "4000 0000 0000 3220", "tx_4": "4000 0000 0000 0077", "tx_5": "5555 5555 5555 4444",
    }
    for transaction_id, number in numbers.items():
        shopper.pay(shopper.session_id(transaction_id), number)
    shopper.pay(shopper.session_id("tx_6"), "4242 4242 4242 4241")  # refused by Luhn
    with runtime.storage.session() as db:
        stored = {s.transaction_id: s.card_last4 for s in db.scalars(select(PaymentSession))}
    assert stored == {"tx_1": "4242", "tx_2": "0002", "tx_3": "3220", "tx_4": "0077", "tx_5": "4444", "tx_6": None}
    runtime.storage.dispose()  # flush everything to the file before reading its bytes
    db_path = settings["SANDBOX_DATABASE_URL"].removeprefix("sqlite:///")
    import glob

    raw = b"".join(open(path, "rb").read() for path in glob.glob(db_path + "*"))
    for number in [*numbers.values(), "4242 4242 4242 4241"]:
        for form in (number, number.replace(" ", "")):
            assert form.encode() not in raw
            assert form not in caplog.text


def test_cancel_on_the_confirmation_page_returns_to_cancel_url(shopper, runtime):
    """The 3220 card's extra page is the hosted page too: its Cancel control also ends at cancel_url."""
    session_id = shopper.session_id("tx_1")
    assert shopper.pay(session_id, "4000 0000 0000 3220").status_code == 303
    html = page_text(shopper.client.get(f"/pay/{session_id}/confirm"))
    assert re.search(rf'<form method="post" action="/pay/{session_id}/cancel">\s*'
                     r'<input type="hidden" name="csrf_token" value="[^"]+">\s*<button[^>]*>Cancel</button>', html)
    answer = shopper.client.post(f"/pay/{session_id}/cancel", data={"csrf_token": form_token(html)})
    assert answer.status_code == 303 and answer.location == "http://shop.test/checkout/cancelled/tx_1"
    assert shopper.status("tx_1") == "cancelled"
    assert [d.event_status for d in deliveries(runtime)] == ["cancelled"]

"""The detail page tells a payment's whole story; payloads never show secrets."""

import html as htmllib
import re

from app.models import WebhookRejection
from app.extensions import db
from config import DEV_WEBHOOK_SECRET
from tests.conftest import place_order, post_webhook, sign, start_payment, status_event
from tests.ops.conftest import paid_transaction


def timeline_items(html: str) -> list[str]:
    block = html.split('id="txn-timeline"', 1)[1].split("</ol>", 1)[0]
    return [htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", "<li" + item))).strip()
            for item in block.split("<li")[1:]]


def test_timeline_after_a_full_payment(admin_client, client, gateway):
    order, tx_id, amount = paid_transaction(client, gateway)
    response = admin_client.get(f"/ops/transactions/{tx_id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    items = timeline_items(html)
    expected = [
        ("CREATED", f"payment started for order {order['order_id']}"),
        ("GATEWAY", "gateway session opened"),
        ("WEBHOOK", "webhook: gateway says success"),
        ("STATUS", "status pending -> success"),
        ("FULFILLMENT", "order fulfilled"),
    ]
    assert len(items) == len(expected), items
    for item, (kind, summary) in zip(items, expected):
        assert kind.lower() in item and summary in item, (item, kind, summary)
    assert "(pending → success)" not in items[3]  # the move is said once, not twice
    # order, amounts and gateway ids
    assert order["order_id"] in html and "19.99 USD" in html and f"cs_{tx_id}" in html
    assert "fulfilled" in html
    # the verified delivery is listed with its payload, and no signature or secret is shown
    assert "payment.status_changed" in html
    assert "webhook-signature" not in html and "v1," not in html
    assert DEV_WEBHOOK_SECRET not in html and DEV_WEBHOOK_SECRET.removeprefix("whsec_") not in html


def test_rejected_webhooks_show_with_their_reason(app, admin_client, client, gateway):
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    raw, headers = sign(status_event(tx_id, "success", 1999), secret="whsec_b3RoZXItc2VjcmV0LW5vdC1vdXJz")
    assert client.post("/payment-callback", data=raw, headers=headers).status_code == 400
    post_webhook(client, status_event(tx_id, "failure", 1999))

    log_page = admin_client.get("/ops/webhooks").get_data(as_text=True)
    assert "Recent rejected deliveries" in log_page and "Recent verified deliveries" in log_page
    with app.app_context():
        rejection = db.session.scalar(db.select(WebhookRejection))
        assert rejection.reason.replace("_", " ") in log_page
    assert tx_id in log_page  # the verified failure links its transaction
    assert headers["webhook-signature"] not in log_page

    detail = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert "Rejected deliveries naming this payment" in detail
    assert headers["webhook-signature"] not in detail
    assert "webhook: gateway says failure" in detail


def test_viewer_sees_the_story_but_no_action_forms(viewer_client, client, gateway):
    _, tx_id, _ = paid_transaction(client, gateway)
    html = viewer_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    assert "order fulfilled" in html
    assert "/refund" not in html and "/recheck" not in html
    assert "can view but not act" in html


def test_a_pending_payment_has_nothing_refundable(admin_client, client, gateway):
    order = place_order(client)
    tx_id = start_payment(client, gateway, order["order_id"])["transaction_id"]
    html = admin_client.get(f"/ops/transactions/{tx_id}").get_data(as_text=True)
    remaining = re.search(r'data-field="remaining">([^<]*)<', html).group(1)
    assert remaining == "0.00 USD" and "Refund part of the payment" not in html

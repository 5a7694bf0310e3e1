"""Payloads on ops pages never show secrets, signatures or card numbers."""

from app.ops.redaction import REDACTED, pretty, pretty_text, redact


def test_sensitive_keys_are_redacted_at_any_depth():
    payload = {
        "type": "payment.status_changed",
        "headers": {"webhook-signature": "v1,abc", "Authorization": "Bearer sk_live_x", "webhook-id": "msg_1"},
        "data": {"transaction_id": "txn_1", "amount": 1999, "card_number": "4242424242424242",
                 "nested": [{"api_key": "k", "client_secret": "s", "password": "p"}]},
    }
    clean = redact(payload)
    assert clean["headers"]["webhook-signature"] == REDACTED
    assert clean["headers"]["Authorization"] == REDACTED
    assert clean["headers"]["webhook-id"] == "msg_1"
    assert clean["data"]["card_number"] == REDACTED
    assert clean["data"]["nested"][0] == {"api_key": REDACTED, "client_secret": REDACTED, "password": REDACTED}
    assert clean["data"]["amount"] == 1999 and clean["data"]["transaction_id"] == "txn_1"
    assert payload["headers"]["webhook-signature"] == "v1,abc"  # the original is untouched


def test_credentials_in_free_text_are_scrubbed():
    text = "secret whsec_c2FuZGJveA== sig v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= card 4242 4242 4242 4242"
    scrubbed = pretty_text(text)
    assert "whsec_" not in scrubbed and "K5oZ" not in scrubbed and "4242 4242" not in scrubbed
    assert pretty_text('{"data": {"secret": "x", "status": "success"}}').count(REDACTED) == 1
    assert pretty(None) == "" and pretty_text(None) == ""

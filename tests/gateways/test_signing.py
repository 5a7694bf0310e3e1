"""Our Standard Webhooks code against the independent `standardwebhooks` package."""

import time
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook

from app.gateways import signing
from config import DEV_WEBHOOK_SECRET

BODY = b'{"type":"payment.status_changed","data":{"status":"success"}}'


def test_our_signature_verifies_with_the_library():
    headers = signing.sign(DEV_WEBHOOK_SECRET, "msg_1", BODY).as_dict()
    assert Webhook(DEV_WEBHOOK_SECRET).verify(BODY, headers)["data"]["status"] == "success"


def test_the_library_signature_verifies_with_ours():
    now = datetime.now(timezone.utc)
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(DEV_WEBHOOK_SECRET).sign("msg_2", now, BODY.decode()),
    }
    assert signing.verify([DEV_WEBHOOK_SECRET], headers, BODY) == ("msg_2", int(now.timestamp()))


@pytest.mark.parametrize(("sent_id", "wire"), [("msg_café", "utf-8"), ("msg_€uro", "utf-8"), ("msg_ā", "utf-8"),
                                               ("msg_café", "latin-1")])
def test_a_non_ascii_id_verifies_however_the_sender_put_it_on_the_wire(sent_id, wire):
    """WSGI hands a header over decoded as Latin-1 (PEP 3333): UTF-8 "é" arrives as "Ã©". The
    sender signed the UTF-8 of its id, and put it on the wire as UTF-8 or, as Python's and
    Node's HTTP clients do, as Latin-1 (where it can)."""
    on_the_wire = sent_id.encode(wire)
    now = datetime.now(timezone.utc)
    headers = {
        "webhook-id": on_the_wire.decode("latin-1"),  # as a WSGI server hands it over
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(DEV_WEBHOOK_SECRET).sign(sent_id, now, BODY.decode()),
    }
    assert signing.verify([DEV_WEBHOOK_SECRET], headers, BODY)[1] == int(now.timestamp())


NOW = 1_700_000_000  # a fixed clock: the tolerance boundary is exact, whatever time.time() says


@pytest.mark.parametrize("offset,reason", [(-301, "timestamp_too_old"), (301, "timestamp_too_new")])
def test_tolerance_is_300_seconds(offset, reason):
    headers = signing.sign(DEV_WEBHOOK_SECRET, "m", BODY, timestamp=NOW + offset).as_dict()
    with pytest.raises(signing.SignatureError) as caught:
        signing.verify([DEV_WEBHOOK_SECRET], headers, BODY, now=NOW)
    assert caught.value.reason == reason


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamps_within_300_seconds_are_accepted(offset):
    headers = signing.sign(DEV_WEBHOOK_SECRET, "m", BODY, timestamp=NOW + offset).as_dict()
    assert signing.verify([DEV_WEBHOOK_SECRET], headers, BODY, now=NOW) == ("m", NOW + offset)


@pytest.mark.parametrize("signature", ["", "v1", "v1,", "v1,@@@", "garbage", "v2,AAAA", "v1,AAAA v1,BBBB"])
def test_malformed_signature_headers_are_rejected_not_crashing(signature):
    headers = {"webhook-id": "m", "webhook-timestamp": str(int(time.time())), "webhook-signature": signature}
    with pytest.raises(signing.SignatureError):
        signing.verify([DEV_WEBHOOK_SECRET], headers, BODY)


def test_non_numeric_timestamp_is_rejected():
    headers = {"webhook-id": "m", "webhook-timestamp": "yesterday", "webhook-signature": "v1,AAAA"}
    with pytest.raises(signing.SignatureError) as caught:
        signing.verify([DEV_WEBHOOK_SECRET], headers, BODY)
    assert caught.value.reason == "invalid_timestamp"


def test_bad_secret_is_a_value_error():
    with pytest.raises(ValueError):
        signing.decode_secret("whsec_***")

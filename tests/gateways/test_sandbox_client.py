"""The sandbox adapter's parsing of gateway answers (contract section 4)."""

import pytest
import requests
import responses

from app.domain.status import Status
from app.gateways.base import GatewayError, GatewayRejected, GatewayUnavailable
from app.gateways.sandbox_client import SandboxGateway

BASE = "http://gw.test"


@pytest.fixture
def gw():
    return SandboxGateway(BASE, "sk_test", ["whsec_c2VjcmV0"], backoff=0.0)


@responses.activate
def test_fetch_status_parses_and_404_is_none(gw):
    responses.get(f"{BASE}/status/txn_1", json={"transaction_id": "txn_1", "status": "success",
                                                 "amount": 1999, "currency": "USD"})
    responses.get(f"{BASE}/status/txn_2", status=404, json={"error": "not_found"})
    status = gw.fetch_status("txn_1")
    assert (status.status, status.amount, status.currency) == (Status.SUCCESS, 1999, "USD")
    assert gw.fetch_status("txn_2") is None
    assert responses.calls[0].request.headers["Authorization"] == "Bearer sk_test"


@responses.activate
@pytest.mark.parametrize("body", [{"status": "weird", "amount": 1, "currency": "USD"},
                                  {"status": "success", "amount": 19.99, "currency": "USD"},
                                  {"status": "success", "amount": "1999", "currency": "USD"}])
def test_malformed_status_answers_raise(gw, body):
    responses.get(f"{BASE}/status/txn_1", json=body)
    with pytest.raises(GatewayError):
        gw.fetch_status("txn_1")


@responses.activate
def test_expire_200_and_409(gw):
    responses.post(f"{BASE}/sessions/cs_1/expire", json={"status": "expired"})
    responses.post(f"{BASE}/sessions/cs_2/expire", status=409, json={"status": "success"})
    assert gw.expire_session("cs_1") == Status.EXPIRED
    assert gw.expire_session("cs_2") == Status.SUCCESS


@responses.activate
def test_refund_sends_amount_and_key(gw):
    responses.post(f"{BASE}/refunds", json={"refund_id": "re_1", "status": "succeeded"})
    result = gw.refund("txn_1", 500, "rf_1")
    assert result.refund_id == "re_1" and result.succeeded
    assert responses.calls[0].request.headers["Idempotency-Key"] == "rf_1"


@responses.activate
def test_4xx_is_a_rejection_not_retried(gw):
    responses.post(f"{BASE}/refunds", status=422, json={"error": "refund_exceeds_amount"})
    with pytest.raises(GatewayRejected) as caught:
        gw.refund("txn_1", 10**9, "rf_2")
    assert caught.value.code == "refund_exceeds_amount"
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize("body", ['["a", "list"]', "[" * 30000 + "]" * 30000, "not json"])
def test_odd_refusal_bodies_are_still_a_rejection(gw, body):
    responses.post(f"{BASE}/refunds", status=422, body=body, content_type="application/json")
    with pytest.raises(GatewayRejected) as caught:
        gw.refund("txn_1", 500, "rf_3")
    assert caught.value.code is None


@responses.activate
def test_a_deeply_nested_answer_is_a_gateway_error(gw):
    responses.get(f"{BASE}/status/txn_1", body="[" * 30000 + "]" * 30000, content_type="application/json")
    with pytest.raises(GatewayError):
        gw.fetch_status("txn_1")


@responses.activate
def test_timeouts_are_retried_then_unavailable(gw):
    responses.get(f"{BASE}/status/txn_1", body=requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(GatewayUnavailable):
        gw.fetch_status("txn_1")

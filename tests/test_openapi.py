"""/openapi.json stays true: schemathesis drives the live app from the description.

Every generated request (valid and invalid) must get no 5xx and a response that matches the
documented status codes, content types, headers and schemas; invalid bodies must be refused.
"""

from __future__ import annotations

import socket
import threading

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from werkzeug.serving import make_server

from app import create_app
from app.openapi import SPEC
from app.sandbox.server import serve_in_thread
from tests.conftest import _test_settings, prepare_database

# An invalid body may be refused as too large (413) as well as malformed: a generated body over
# the 64 KiB limit is refused before it is read, which is as much a refusal as a 422.
schema = schemathesis.openapi.from_dict(SPEC, config=SchemathesisConfig.from_dict({"checks": {
    "negative_data_rejection": {"expected-statuses": [
        "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]}}}))


@pytest.fixture(scope="module")
def live_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    sandbox = serve_in_thread("127.0.0.1", 0, {"SANDBOX_DATABASE_URL": f"sqlite:///{tmp / 'sandbox.db'}",
                                               "SANDBOX_DELIVERY_WORKER": False})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    database_url = f"sqlite:///{tmp / 'app.db'}"
    app = create_app({**_test_settings(), "SQLALCHEMY_DATABASE_URI": database_url,
                      "PAYMENT_GATEWAY_URL": sandbox.url, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"})
    prepare_database(app, database_url)
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    sandbox.stop()


def test_the_description_is_served(live_url):
    served = requests.get(f"{live_url}/openapi.json", timeout=5).json()
    assert served["openapi"] == "3.1.0"
    assert set(served["paths"]) >= {"/api/products", "/api/orders", "/api/orders/{order_id}", "/initiate-payment",
                                    "/check-payment-status/{transaction_id}", "/payment-callback"}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_description(case, live_url):
    # Schema-valid is not always acceptable: an unknown SKU or order id is well-formed and
    # still refused (422/404, both documented), so that one check is left out.
    case.call_and_validate(base_url=live_url, excluded_checks=[positive_data_acceptance])

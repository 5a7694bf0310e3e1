"""Every error is JSON on the JSON routes, HTML elsewhere; never a stack trace."""

import io
import json

import pytest

from tests.ops.conftest import csrf_token


@pytest.mark.parametrize("path", ["/api/orders", "/initiate-payment"])
def test_non_json_body_is_415(client, path):
    response = client.post(path, data="order_id=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.get_json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize("path", ["/api/orders", "/initiate-payment"])
def test_malformed_json_is_400(client, path):
    response = client.post(path, data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": "malformed_json",
                                   "message": "The request body is not valid JSON (or nests deeper than 32 levels)."}


@pytest.mark.parametrize("path", ["/api/orders", "/initiate-payment"])
@pytest.mark.parametrize("body", ["NaN", '{"order_id": NaN}', '{"order_id": "x", "amount": Infinity}',
                                  '{"items": [{"sku": "TEE-BLACK", "quantity": -Infinity}]}'])
def test_the_constants_python_reads_but_json_has_not_are_malformed(client, path, body):
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == "malformed_json"


@pytest.mark.parametrize("path", ["/api/orders", "/initiate-payment"])
@pytest.mark.parametrize("body", ["null", "[]", "5", '"x"', "true"])
def test_json_that_is_not_an_object_is_422(client, path, body):
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 422
    assert response.get_json() == {"error": "validation_error", "message": "The JSON body must be an object."}


DEEP_BODIES = {
    # the decoder itself runs out of stack on this one (60 KB, under the 64 KB limit)
    "decoder": "[" * 30000 + "]" * 30000,
    # this one parses, but is deeper than any walk over it should have to go
    "walk": '{"order_id": "x", "items": [{"sku": "TEE-BLACK", "quantity": 1}], "x": ' + "[" * 600 + "]" * 600 + "}",
    "just over the bound": '{"order_id": "x", "x": ' + "[" * 32 + "]" * 32 + "}",
}


@pytest.mark.parametrize("path", ["/api/orders", "/initiate-payment"])
@pytest.mark.parametrize("body", DEEP_BODIES.values(), ids=DEEP_BODIES.keys())
def test_deeply_nested_json_is_400_not_a_fault(client, path, body, caplog):
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == "malformed_json"
    assert "unhandled fault" not in caplog.text


def test_nesting_within_the_bound_is_still_json(client):
    body = '{"items": [{"sku": "NO-SUCH-SKU", "quantity": 1}], "x": ' + "[" * 30 + "]" * 30 + "}"
    response = client.post("/api/orders", data=body, content_type="application/json")
    assert response.get_json()["error"] != "malformed_json"


def test_wrong_method_is_405_json(client):
    response = client.delete("/api/products")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_unknown_api_path_is_json_404(client):
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_unknown_page_is_html_404_unless_json_is_preferred(client):
    page = client.get("/nothing-here", headers={"Accept": "text/html"})
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert b"Page not found" in page.data
    json_404 = client.get("/nothing-here", headers={"Accept": "application/json"})
    assert json_404.status_code == 404 and json_404.get_json()["error"] == "not_found"


def test_oversized_body_is_413(client):
    response = client.post("/initiate-payment", data="x" * (65 * 1024), content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"] == "payload_too_large"


def _chunked(client, path: str, body: bytes):
    """POST ``body`` without Content-Length, as a chunked request reaches the app under gunicorn."""
    return client.post(path, input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_base={"wsgi.input_terminated": True})


@pytest.mark.parametrize("path", ["/api/orders", "/initiate-payment", "/payment-callback"])
def test_an_oversized_chunked_body_is_413_too(client, path):
    """Valid JSON, 200 KB, sent without Content-Length: refused as too large, not as malformed."""
    body = json.dumps({"items": [{"sku": "TEE-BLACK", "quantity": 1}] * 6000, "order_id": "x"}).encode()
    response = _chunked(client, path, body)
    assert response.status_code == 413 and response.get_json()["error"] == "payload_too_large"


def test_a_chunked_body_of_exactly_the_limit_is_not_too_large(app, client):
    limit = app.config["MAX_CONTENT_LENGTH"]
    head = b'{"items": [{"sku": "TEE-BLACK", "quantity": 1}], "pad": "'
    body = head + b"x" * (limit - len(head) - 2) + b'"}'
    assert len(body) == limit
    assert _chunked(client, "/api/orders", body).status_code != 413
    assert _chunked(client, "/api/orders", body[:-2] + b'x"}').status_code == 413  # one byte more


def test_a_small_chunked_body_is_read_whole(client):
    response = _chunked(client, "/api/orders", b'{"items": [{"sku": "TEE-BLACK", "quantity": 2}]}')
    assert response.status_code == 201 and response.get_json()["total"] == 3998


def test_unexpected_fault_is_500_json_without_a_trace(app, client, monkeypatch, caplog):
    from app.services import catalog

    def explode():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(catalog, "list_products", explode)
    response = client.get("/api/products")
    assert response.status_code == 500
    body = response.get_json()
    assert body["error"] == "internal_error"
    assert "secret internals" not in response.get_data(as_text=True)
    assert body["reference"] in caplog.text


@pytest.mark.parametrize("method,path,kwargs", [
    ("post", "/initiate-payment", {"json": {"order_id": "ord_\u0000x"}}),
    ("post", "/api/orders", {"json": {"items": [{"sku": "TEE\u0000", "quantity": 1}]}}),
    ("get", "/check-payment-status/txn_%00abc", {}),
    ("get", "/api/orders/ord_%00abc", {}),
    ("get", "/api/products?x=%00", {}),
    ("post", "/initiate-payment", {"json": {"order_id": "ord_x"}, "headers": {"Idempotency-Key": "k\u0000"}}),
])
def test_nul_characters_are_refused_clearly_on_every_database(client, method, path, kwargs):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code in (400, 422)
    assert response.get_json()["error"] in ("invalid_characters", "validation_error")


def test_nul_in_a_page_form_is_refused(client):
    token = csrf_token(client, "/payment-status")  # a valid form: the refusal is about the NUL only
    response = client.post("/payment-status", data={"csrf_token": token, "order_id": "ord_\u0000",
                                                    "access_code": "x"}, headers={"Accept": "text/html"})
    assert response.status_code == 400
    assert "did not come from this site" not in response.get_data(as_text=True)  # not the CSRF refusal


def test_nul_in_a_form_field_name_is_refused_not_a_500(client):
    # The cart form's field names carry the SKU (qty-<sku>): a NUL there reached the product
    # query, which PostgreSQL refuses ("text fields cannot contain NUL") as a 500.
    token = csrf_token(client, "/")
    response = client.post("/checkout", data={"csrf_token": token, "qty-TEE\u0000": "1"},
                           headers={"Accept": "text/html"})
    assert response.status_code == 400
    assert "did not come from this site" not in response.get_data(as_text=True)  # not the CSRF refusal


def test_the_lookup_form_needs_its_csrf_token(client):
    response = client.post("/payment-status", data={"order_id": "ord_x", "access_code": "x"},
                           headers={"Accept": "text/html"})
    assert response.status_code == 400 and "did not come from this site" in response.get_data(as_text=True)

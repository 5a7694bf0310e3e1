"""OpenAPI 3.1 description of the JSON API (contract sections 2 and 3), served at /openapi.json.

Kept true by tests/test_openapi.py, which runs schemathesis against the live app.
"""

from __future__ import annotations

STATUSES = ["pending", "success", "failure", "expired", "cancelled", "refunded", "partially_refunded"]


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema_ref: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


_COMMON_ERRORS = {
    "400": _error("A NUL character in the path, query or a header (invalid_characters); for a JSON body, "
                  "also malformed JSON (malformed_json)."),
    "429": _error("Too many requests."),
    "500": _error("Unexpected fault (logged with a reference)."),
    "503": _error("The database connection was lost while answering (database_unavailable, with a reference "
                  "and Retry-After): try again."),
}
_BODY_ERRORS = {
    "413": _error("Body too large."),
    "415": _error("Not application/json."),
    "422": _error("The body does not validate."),
}

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {"title": "Fieldgoods checkout API", "version": "1.0.0",
             "description": "Money is integer minor units with an ISO 4217 currency code."},
    "paths": {
        "/api/products": {"get": {
            "operationId": "listProducts",
            "responses": {"200": {"description": "The catalog.", "content": {"application/json": {"schema": {
                "type": "array", "items": {"$ref": "#/components/schemas/Product"}}}}}, **_COMMON_ERRORS},
        }},
        "/api/orders": {"post": {
            "operationId": "createOrder",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/OrderRequest"}}}},
            "responses": {"201": _ok("The order, open.", "CreatedOrder"), **_BODY_ERRORS, **_COMMON_ERRORS},
        }},
        "/api/orders/{order_id}": {"get": {
            "operationId": "getOrder",
            "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _ok("The order.", "Order"), "404": _error("No such order."), **_COMMON_ERRORS},
        }},
        "/initiate-payment": {"post": {
            "operationId": "initiatePayment",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/InitiateRequest"}}}},
            "responses": {
                "200": _ok("The order's still-pending transaction.", "Initiated"),
                "201": _ok("A new pending transaction.", "Initiated"),
                "404": _error("No such order."),
                "409": _error("Order already paid, or the same Idempotency-Key is still in flight."),
                "502": _error("The gateway is unavailable; the body carries the failed transaction_id."),
                **_BODY_ERRORS, **_COMMON_ERRORS,
            },
        }},
        "/check-payment-status/{transaction_id}": {"get": {
            "operationId": "checkPaymentStatus",
            "parameters": [{"name": "transaction_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _ok("The payment's status.", "PaymentStatus"),
                          "404": _error("No such transaction."), **_COMMON_ERRORS},
        }},
        "/payment-callback": {"post": {
            "operationId": "paymentCallback",
            "description": "The gateway's Standard Webhooks delivery (contract sections 3 and 4), verified on the "
                           "raw body. Duplicates, unknown transactions and refused moves are acknowledged with 200.",
            "parameters": [{"name": name, "in": "header", "required": True,
                            "schema": {"type": "string", "minLength": 1}}
                           for name in ("webhook-id", "webhook-timestamp", "webhook-signature")],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/WebhookEvent"}}}},
            "responses": {
                "200": _ok("Received: applied, duplicate, unknown_transaction, refused, ignored, ...", "Received"),
                "400": _error("Missing or wrong signature, a timestamp more than 300 s away, or a body that is "
                              "not an event (invalid_webhook; the reason is in `reason`)."),
                "413": _error("Body too large."),
                "429": _error("Too many refused deliveries from this address."),
                "500": _COMMON_ERRORS["500"],
                "503": _COMMON_ERRORS["503"],  # the gateway delivers again
            },
        }},
        "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "Alive."}}}},
        "/readyz": {"get": {"operationId": "readyz", "responses": {
            "200": {"description": "Database (and Redis) reachable."},
            "503": _error("A dependency is down.")}}},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string", "pattern": "^[a-z0-9_]+$"}, "message": {"type": "string"}}},
        "Product": {"type": "object", "required": ["sku", "name", "price", "currency"], "properties": {
            "sku": {"type": "string"}, "name": {"type": "string"}, "price": {"type": "integer", "minimum": 0},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
        "OrderRequest": {"type": "object", "required": ["items"], "properties": {"items": {
            "type": "array", "minItems": 1, "maxItems": 100, "items": {
                "type": "object", "required": ["sku", "quantity"], "properties": {
                    "sku": {"type": "string", "minLength": 1, "maxLength": 64},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 99}}}}}},
        "Order": {"type": "object",
                  "required": ["order_id", "status", "total", "currency", "paid_transaction_id", "fulfilled_at"],
                  "properties": {
                      "order_id": {"type": "string"}, "status": {"enum": ["open", "paid", "fulfilled"]},
                      "total": {"type": "integer"}, "currency": {"type": "string"},
                      "paid_transaction_id": {"type": ["string", "null"]},
                      "fulfilled_at": {"type": ["string", "null"]}}},
        "CreatedOrder": {"allOf": [{"$ref": "#/components/schemas/Order"}, {
            "type": "object", "required": ["items"], "properties": {"items": {"type": "array"},
                                                                    "access_code": {"type": "string"}}}]},
        "InitiateRequest": {"type": "object", "required": ["order_id"], "properties": {
            "order_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "amount": {"type": ["integer", "null"]}}},
        "Initiated": {"type": "object",
                      "required": ["transaction_id", "status", "payment_url", "expires_at", "status_url"],
                      "properties": {
                          "transaction_id": {"type": "string"}, "status": {"enum": STATUSES},
                          "payment_url": {"type": "string"}, "expires_at": {"type": "string"},
                          "status_url": {"type": "string"}}},
        "WebhookEvent": {"type": "object", "required": ["type", "data"], "properties": {
            "type": {"type": "string"}, "timestamp": {"type": "string"},
            "data": {"type": "object", "properties": {
                "transaction_id": {"type": "string"}, "session_id": {"type": "string"}, "status": {"enum": STATUSES},
                "amount": {"type": "integer"}, "currency": {"type": "string"}}}}},
        "Received": {"type": "object", "required": ["received", "outcome"], "properties": {
            "received": {"const": True}, "outcome": {"type": "string"}}},
        "PaymentStatus": {"type": "object",
                          "required": ["transaction_id", "order_id", "status", "amount", "currency", "updated_at"],
                          "properties": {
                              "transaction_id": {"type": "string"}, "order_id": {"type": "string"},
                              "status": {"enum": STATUSES}, "amount": {"type": "integer"},
                              "currency": {"type": "string"}, "updated_at": {"type": "string"}}},
    }},
}

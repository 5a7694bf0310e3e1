"""app.devserver: the embedded sandbox starts only for the development gateway URL."""

from app import devserver
from config import DEV_SANDBOX_URL


def test_no_sandbox_when_the_gateway_is_elsewhere(app):
    assert app.config["PAYMENT_GATEWAY_URL"] != DEV_SANDBOX_URL
    assert devserver.start_sandbox(app) is None


def test_the_sandbox_is_paired_with_the_app(app, monkeypatch):
    started = {}

    def fake_serve(host, port, settings):
        started.update(host=host, port=port, **settings)
        return "running"

    import app.sandbox.server as server

    monkeypatch.setattr(server, "serve_in_thread", fake_serve)
    app.config["PAYMENT_GATEWAY_URL"] = DEV_SANDBOX_URL
    assert devserver.start_sandbox(app) == "running"
    assert (started["host"], started["port"]) == ("127.0.0.1", 5001)
    assert started["SANDBOX_API_KEY"] == app.config["PAYMENT_GATEWAY_API_KEY"]
    assert started["SANDBOX_WEBHOOK_SECRET"] == app.config["PAYMENT_WEBHOOK_SECRET"].split()[0]

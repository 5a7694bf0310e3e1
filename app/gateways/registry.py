"""Chooses the gateway adapter named by PAYMENT_GATEWAY, one instance per app."""

from __future__ import annotations

from flask import Flask, current_app

from app.gateways.base import PaymentGateway
from config import ConfigurationError


def build_gateway(app: Flask) -> PaymentGateway:
    """Instantiate the adapter configured for ``app``; unknown names fail at start-up."""
    name = app.config["PAYMENT_GATEWAY"]
    if name == "sandbox":
        from app.gateways.sandbox_client import SandboxGateway

        return SandboxGateway.from_config(app.config)
    raise ConfigurationError(f"configuration error: unknown PAYMENT_GATEWAY {name!r} (known: sandbox)")


def init_app(app: Flask) -> None:
    app.extensions["payment_gateway"] = build_gateway(app)


def get_gateway() -> PaymentGateway:
    """The current app's gateway adapter."""
    return current_app.extensions["payment_gateway"]

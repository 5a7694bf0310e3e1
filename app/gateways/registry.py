"""Chooses the gateway adapter named by PAYMENT_GATEWAY, one instance per app."""

from __future__ import annotations

from functools import wraps

from flask import Flask, current_app

from app.connections import end_transaction_before_waiting
from app.gateways.base import PaymentGateway
from config import ConfigurationError


class _NoTransactionAcross:
    """The adapter, with every call to the gateway made with no database transaction open
    (``connections.end_transaction_before_waiting``): a call may take the whole gateway budget,
    and a transaction left open across it holds a connection idle in it. One place for every
    caller, present and future; the adapter itself knows nothing of the database."""

    CALLS = frozenset({"create_session", "fetch_status", "expire_session", "refund"})

    def __init__(self, adapter: PaymentGateway) -> None:
        self._adapter = adapter

    def __getattr__(self, name: str):
        attribute = getattr(self._adapter, name)
        if name not in self.CALLS:
            return attribute

        @wraps(attribute)
        def call(*args, **kwargs):
            end_transaction_before_waiting()  # the arguments were read before: nothing reads again
            return attribute(*args, **kwargs)

        return call


def build_gateway(app: Flask) -> PaymentGateway:
    """Instantiate the adapter configured for ``app``; unknown names fail at start-up."""
    name = app.config["PAYMENT_GATEWAY"]
    if name == "sandbox":
        from app.gateways.sandbox_client import SandboxGateway

        return SandboxGateway.from_config(app.config)
    raise ConfigurationError(f"configuration error: unknown PAYMENT_GATEWAY {name!r} (known: sandbox)")


def init_app(app: Flask) -> None:
    app.extensions["payment_gateway"] = _NoTransactionAcross(build_gateway(app))


def get_gateway() -> PaymentGateway:
    """The current app's gateway adapter."""
    return current_app.extensions["payment_gateway"]

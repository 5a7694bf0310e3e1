"""Fault knobs: make the sandbox misbehave on purpose, globally or for one payment.

A scope is ``"global"`` or a key naming one payment (its transaction_id or session_id).
Knobs set on a key override the global ones for that payment. Knobs live in memory,
seeded from the ``SANDBOX_FAULTS`` setting; the admin endpoint changes them at runtime.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import config

GLOBAL = "global"
MODE_ERROR = "error"
MODE_TIMEOUT = "timeout"
# A "timeout" stalls the answer one second past the app's read timeout for the gateway.
DEFAULT_STALL_SECONDS = float(getattr(config.Config, "GATEWAY_READ_TIMEOUT", 5.0)) + 1.0


class FaultError(ValueError):
    """A knob name or value was refused; the message says which."""


def _bool(value):
    if not isinstance(value, bool):
        raise FaultError("must be true or false")
    return value


def _number(limit):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= limit:
            raise FaultError(f"must be a number from 0 to {limit}")
        return value

    return check


def _count(limit):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise FaultError(f"must be a whole number from 0 to {limit}")
        return value

    return check


def _mode(value):
    if value not in (MODE_ERROR, MODE_TIMEOUT):
        raise FaultError("must be 'error' or 'timeout'")
    return value


def _server_error(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 500 <= value <= 599:
        raise FaultError("must be a status code from 500 to 599")
    return value


KNOBS = {
    "drop_webhook": (_bool, False),
    "duplicate_webhook": (_bool, False),
    "delay_webhook_seconds": (_number(86_400), 0),
    "out_of_order": (_bool, False),
    "fail_create_session": (_count(1_000), 0),
    "fail_create_session_mode": (_mode, MODE_ERROR),
    "fail_create_session_status": (_server_error, 503),
    "create_session_timeout_seconds": (_number(600), DEFAULT_STALL_SECONDS),
    "latency_ms": (_count(600_000), 0),
}


@dataclass(frozen=True)
class Faults:
    """The knobs in force for one payment (global ones overlaid with its own)."""

    drop_webhook: bool = False
    duplicate_webhook: bool = False
    delay_webhook_seconds: float = 0
    out_of_order: bool = False
    latency_ms: int = 0


@dataclass(frozen=True)
class CreateFailure:
    """How one create-session call must fail."""

    mode: str
    status: int
    timeout_seconds: float


def validate_knobs(knobs) -> dict:
    """Return ``knobs`` checked against KNOBS; FaultError names the first bad one."""
    if not isinstance(knobs, dict):
        raise FaultError("Fault knobs must be a JSON object.")
    checked = {}
    for name, value in knobs.items():
        if name not in KNOBS:
            raise FaultError(f"Unknown fault knob {name!r}; known: {', '.join(sorted(KNOBS))}.")
        try:
            checked[name] = KNOBS[name][0](value)
        except FaultError as exc:
            raise FaultError(f"{name} {exc}.") from None
    return checked


class FaultBook:
    """Thread-safe store of fault knobs by scope."""

    def __init__(self, initial: dict | None = None):
        self._lock = threading.Lock()
        self._scopes: dict[str, dict] = {}
        for scope, knobs in (initial or {}).items():
            self.set(scope, knobs)

    def set(self, scope: str, knobs: dict) -> dict:
        """Merge ``knobs`` into ``scope`` and return that scope's knobs now in force."""
        if not isinstance(scope, str) or not 1 <= len(scope) <= 255:
            raise FaultError("The scope must be 'global' or a transaction or session id.")
        checked = validate_knobs(knobs)
        with self._lock:
            current = self._scopes.setdefault(scope, {})
            current.update(checked)
            return dict(current)

    def snapshot(self) -> dict:
        """``{"global": {...}, "sessions": {key: {...}}}`` as set (defaults omitted)."""
        with self._lock:
            return {
                GLOBAL: dict(self._scopes.get(GLOBAL, {})),
                "sessions": {k: dict(v) for k, v in self._scopes.items() if k != GLOBAL},
            }

    def clear(self, scope: str | None = None) -> None:
        """Forget one scope's knobs, or every knob when ``scope`` is None."""
        with self._lock:
            if scope is None:
                self._scopes.clear()
            else:
                self._scopes.pop(scope, None)

    def has_payment_scopes(self) -> bool:
        """True when some knob is set for a single payment (not only globally)."""
        with self._lock:
            return any(scope != GLOBAL for scope in self._scopes)

    def _merged(self, keys) -> dict:
        merged = {name: default for name, (_check, default) in KNOBS.items()}
        merged.update(self._scopes.get(GLOBAL, {}))
        for key in keys:
            if key and key != GLOBAL:
                merged.update(self._scopes.get(key, {}))
        return merged

    def effective(self, *keys: str | None) -> Faults:
        """The delivery and latency knobs in force for a payment known by ``keys``."""
        with self._lock:
            merged = self._merged(keys)
        return Faults(**{name: merged[name] for name in Faults.__dataclass_fields__})

    def take_create_failure(self, transaction_id: str | None) -> CreateFailure | None:
        """Consume one pending create-session failure (the payment's own first), if any."""
        with self._lock:
            for scope in (transaction_id, GLOBAL):
                knobs = self._scopes.get(scope) if scope else None
                if knobs and knobs.get("fail_create_session", 0) > 0:
                    knobs["fail_create_session"] -= 1
                    merged = self._merged([transaction_id])
                    return CreateFailure(
                        mode=knobs.get("fail_create_session_mode", merged["fail_create_session_mode"]),
                        status=knobs.get("fail_create_session_status", merged["fail_create_session_status"]),
                        timeout_seconds=knobs.get(
                            "create_session_timeout_seconds", merged["create_session_timeout_seconds"]
                        ),
                    )
        return None

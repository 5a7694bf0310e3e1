"""Everything one sandbox app owns at runtime, found at ``app.extensions["sandbox"]``."""

from __future__ import annotations

import logging

from app.sandbox import delivery, payments
from app.sandbox.faults import FaultBook
from app.sandbox.storage import SandboxStorage
from app.sandbox.worker import DeliveryWorker

log = logging.getLogger(__name__)


class SandboxRuntime:
    """Settings, storage, fault knobs and the delivery worker of one sandbox app."""

    def __init__(self, settings: dict):
        self.settings = settings
        self.storage = SandboxStorage(settings["SANDBOX_DATABASE_URL"])
        self.faults = FaultBook(settings.get("SANDBOX_FAULTS") or {})
        self.worker = DeliveryWorker(self)

    def start_worker(self) -> bool:
        """Start the background delivery worker (never twice); True if it runs for this app."""
        return self.worker.start()

    def stop(self) -> None:
        """Stop the delivery worker; pending deliveries stay queued in storage."""
        self.worker.stop()

    def close(self) -> None:
        """Stop the worker and release the storage's connections."""
        self.stop()
        self.storage.dispose()

    def wake(self) -> None:
        """Tell the worker there is new work (a no-op when it is not running)."""
        self.worker.wake()

    def stopping(self) -> bool:
        """True once the worker was asked to stop."""
        return self.worker.stopping()

    def tick(self) -> int:
        """One pass: settle due 0077 payments, expire overdue sessions, send due webhooks.

        Returns the number of delivery attempts made. Tests with the worker off call this.
        """
        payments.settle_due(self)
        payments.expire_overdue(self)
        return delivery.deliver_due(self)

    def next_due_moments(self) -> list:
        """When the next delivery, settlement or expiry is due (None entries when none)."""
        return [delivery.next_attempt_at(self), payments.next_timer_at(self)]

    def public_url(self, request_root: str) -> str:
        """The sandbox's public origin: SANDBOX_PUBLIC_URL, else the origin it was reached on."""
        return (self.settings.get("SANDBOX_PUBLIC_URL") or request_root).rstrip("/")

"""The background thread that delivers webhooks, settles the 0077 card and expires sessions.

At most one worker runs per sandbox database in a process: a second app on the same
storage does not start another (it would send every webhook twice).
"""

from __future__ import annotations

import logging
import threading

from app.sandbox.models import utcnow

log = logging.getLogger(__name__)

_running: dict[str, DeliveryWorker] = {}
_running_lock = threading.Lock()

MIN_WAIT_SECONDS = 0.02


class DeliveryWorker:
    """Runs ``runtime.tick()`` in a daemon thread, sleeping until the next thing is due."""

    def __init__(self, runtime):
        self.runtime = runtime
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start the thread; False (and nothing started) if a worker already serves this storage."""
        key = self.runtime.storage.url
        with _running_lock:
            other = _running.get(key)
            if other is self and self.running:
                return True
            if other is not None and other.running:
                log.warning("sandbox delivery worker already running for %s; not starting another", key)
                return False
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sandbox-delivery", daemon=True)
            _running[key] = self
            self._thread.start()
        log.info("sandbox delivery worker started")
        return True

    def wake(self) -> None:
        """Ask the thread to look for work now instead of at its next timer."""
        self._wake.set()

    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stop.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds); safe to call twice."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with _running_lock:
            if _running.get(self.runtime.storage.url) is self:
                del _running[self.runtime.storage.url]
        self._thread = None

    def _seconds_to_next(self) -> float:
        poll = float(self.runtime.settings["SANDBOX_WORKER_POLL_SECONDS"])
        moments = [m for m in self.runtime.next_due_moments() if m is not None]
        if not moments:
            return poll
        wait = (min(moments) - utcnow()).total_seconds()
        return min(poll, max(MIN_WAIT_SECONDS, wait))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.runtime.tick()
                wait = self._seconds_to_next()
            except Exception:  # keep delivering after a transient fault (e.g. a locked database)
                log.exception("sandbox delivery worker pass failed")
                wait = float(self.runtime.settings["SANDBOX_WORKER_POLL_SECONDS"])
            self._wake.wait(wait)
        log.info("sandbox delivery worker stopped")

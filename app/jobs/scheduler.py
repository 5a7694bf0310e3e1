"""The reconciliation loop: a pass every SCHEDULER_INTERVAL seconds, with the `schedule` library.

It runs either in a daemon thread of the web process (``start_in_background``, called by
``app.jobs.init_app`` when SCHEDULER_ENABLED) or in the foreground as its own process
(`flask --app wsgi payments scheduler`). Either way a stop Event ends it cleanly: the pass
in progress claims no new batch, finishes what it holds, and the loop returns. Under
gunicorn's gevent worker the thread is a greenlet, which is fine: the pass waits on I/O.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Callable, Protocol

import click
import schedule
from flask import Flask
from flask.helpers import get_debug_flag
from werkzeug.serving import is_running_from_reloader

from app.jobs.reconcile import PassSummary, run_pass

log = logging.getLogger(__name__)
THREAD_NAME = "reconcile-scheduler"


class StopSignal(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class SignalStop:
    """A stop flag a signal handler may set.

    ``threading.Event.set`` takes the lock that ``Event.wait`` in the interrupted main thread
    may be holding at that very instant, so calling it from a handler can deadlock the process
    (seen in CI: SIGTERM arrived inside ``Condition.wait``). Setting a plain attribute takes no
    lock; ``wait`` sleeps in short slices and looks at the flag between them.
    """

    SLICE = 0.2

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = self.SLICE if deadline is None else min(self.SLICE, deadline - time.monotonic())
            if left <= 0:
                break
            time.sleep(left)
        return self._set


def run_loop(
    app: Flask,
    stop: StopSignal,
    *,
    interval: int,
    run_first: bool = False,
    on_summary: Callable[[PassSummary], None] | None = None,
) -> None:
    """Run a pass every ``interval`` seconds until ``stop`` is set; a failed pass is logged, not fatal."""

    def one_pass() -> None:
        try:
            with app.app_context():
                summary = run_pass(should_stop=stop.is_set)
        except Exception:  # the database may be down for a while; try again next time
            log.exception("reconcile pass failed")
            return
        if on_summary is not None:
            on_summary(summary)

    jobs = schedule.Scheduler()  # our own, not the library's global one
    jobs.every(max(1, interval)).seconds.do(one_pass)
    log.info("reconcile loop started (every %ss, pid %s)", interval, os.getpid())
    if run_first:
        jobs.run_all()
    while not stop.is_set():
        jobs.run_pending()
        stop.wait(max(0.0, jobs.idle_seconds or 0.0))
    jobs.clear()
    log.info("reconcile loop stopped (pid %s)", os.getpid())


class _Background:
    """The one loop thread of this process."""

    def __init__(self, thread: threading.Thread, stop: threading.Event):
        self.thread = thread
        self.stop = stop
        self.pid = os.getpid()


_lock = threading.Lock()
_background: _Background | None = None
_atexit_registered = False


def reason_not_to_start(app: Flask) -> str | None:
    """Why this process must not run the in-process loop, or None when it should."""
    if not app.config.get("SCHEDULER_ENABLED"):
        return "SCHEDULER_ENABLED is off"
    command = click.get_current_context(silent=True)
    if command is not None:
        # Loaded by the `flask` command: only `flask run` serves requests. `db upgrade`,
        # `payments reconcile`, `payments scheduler` and the rest must not start a loop.
        if command.command.name != "run":
            return f"flask command {command.command.name!r} is not a server"
        reload = command.params.get("reload")
        if reload is None:
            reload = get_debug_flag()
        if reload and not is_running_from_reloader():
            return "the reloader's parent process (its child runs the loop)"
    elif app.debug and not is_running_from_reloader():
        return "debug mode outside the reloader's child process"
    return None


def start_in_background(app: Flask) -> threading.Thread | None:
    """Start the loop in a daemon thread unless this process should not run one or already does.

    Returns the loop's thread, or None when not started. At most one per process, however
    many apps are created or however often this is called.
    """
    global _background, _atexit_registered
    reason = reason_not_to_start(app)
    if reason is not None:
        log.debug("reconcile loop not started: %s", reason)
        return None
    with _lock:
        if _background is not None and _background.pid == os.getpid() and _background.thread.is_alive():
            return _background.thread
        stop = threading.Event()
        thread = threading.Thread(
            target=run_loop, args=(app, stop), kwargs={"interval": app.config["SCHEDULER_INTERVAL"]},
            name=THREAD_NAME, daemon=True,
        )
        _background = _Background(thread, stop)
        if not _atexit_registered:
            atexit.register(stop_background)
            _atexit_registered = True
        thread.start()
        return thread


def stop_background(timeout: float = 10.0) -> bool:
    """Ask the background loop to stop and wait for it; True when it is no longer running."""
    global _background
    with _lock:
        running, _background = _background, None
    if running is None or running.pid != os.getpid():
        return True
    running.stop.set()
    running.thread.join(timeout)
    if running.thread.is_alive():
        log.warning("reconcile loop still finishing its pass after %ss", timeout)
        return False
    return True

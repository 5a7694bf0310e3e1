"""Fixtures of the sandbox gateway suite: apps on tmp_path SQLite files, a real webhook receiver."""

from __future__ import annotations

import threading
import time

import pytest

from app.sandbox import create_sandbox_app

from .support import ADMIN_KEY, API_KEY, OUR_THREADS, PUBLIC_URL, WEBHOOK_SECRET, Receiver, Shopper


@pytest.fixture(autouse=True)
def no_threads_left_behind():
    """Every test must stop the threads it started."""
    yield
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        alive = [t.name for t in threading.enumerate() if t.name in OUR_THREADS]
        if not alive:
            return
        time.sleep(0.02)
    pytest.fail(f"threads left running: {alive}")


@pytest.fixture
def settings(tmp_path) -> dict:
    """Fast, isolated sandbox settings with the worker off."""
    return {
        "SANDBOX_API_KEY": API_KEY,
        "SANDBOX_ADMIN_KEY": ADMIN_KEY,
        "SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SANDBOX_DATABASE_URL": f"sqlite:///{tmp_path / 'sandbox.db'}",
        "SANDBOX_PUBLIC_URL": PUBLIC_URL,
        "SANDBOX_DELIVERY_BACKOFF_FACTOR": 0.01,
        "SANDBOX_DELIVERY_TIMEOUT": 1.0,
        "SANDBOX_DELIVERY_WORKER": False,
        "SANDBOX_WORKER_POLL_SECONDS": 0.1,
        "SANDBOX_PENDING_SECONDS": 0.3,
    }


@pytest.fixture
def make_app(settings):
    """Build sandbox apps from ``settings`` plus overrides; all are closed after the test."""
    apps = []

    def build(**overrides):
        app = create_sandbox_app({**settings, **overrides})
        app.testing = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["sandbox"].close()


@pytest.fixture
def app(make_app):
    """A sandbox app with its worker off (tests drive ``runtime.tick()``)."""
    return make_app()


@pytest.fixture
def runtime(app):
    return app.extensions["sandbox"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def shopper(client) -> Shopper:
    return Shopper(client)


@pytest.fixture
def receiver():
    """Make receivers with ``receiver(plan)``; all are stopped after the test."""
    made = []

    def build(plan=None) -> Receiver:
        made.append(Receiver(plan))
        return made[-1]

    yield build
    for item in made:
        item.stop()

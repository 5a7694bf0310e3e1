"""The browser suite: the real app and the real sandbox gateway on loopback, driven by Chromium.

Nothing of ours is mocked. One app (SQLite file, demo catalog) and one sandbox serve every
test of a module; each test gets a fresh browser context (its own cookies). Debian's
chromium is used as installed (tests/browser_setup.py installs it in CI); without it the
tests skip with that reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from app import create_app
from app.extensions import db
from config import DEV_GATEWAY_API_KEY, DEV_WEBHOOK_SECRET

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "test-results" / "screenshots"
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real Chromium against live servers (skipped without it)")


def pytest_collection_modifyitems(config, items):
    if os.path.exists(CHROMIUM):
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing: run tests/browser_setup.py as root (make test does)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


class _LateApp:
    """A WSGI callable bound before the app exists, so the app can be built knowing its port."""

    app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@dataclass
class LiveShop:
    url: str
    gateway_url: str
    app: object

    def admin(self, method: str, path: str, **kwargs) -> requests.Response:
        """Call the sandbox's admin API (fault knobs, deliveries)."""
        response = requests.request(method, f"{self.gateway_url}/_admin{path}", timeout=5,
                                    headers={"Authorization": f"Bearer {DEV_GATEWAY_API_KEY}"}, **kwargs)
        response.raise_for_status()
        return response.json()

    def gateway(self, method: str, path: str, **kwargs) -> requests.Response:
        """Call the sandbox's gateway API as the shop would."""
        return requests.request(method, f"{self.gateway_url}{path}", timeout=5,
                                headers={"Authorization": f"Bearer {DEV_GATEWAY_API_KEY}"}, **kwargs)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The app and the sandbox gateway serving on free loopback ports."""
    from app.sandbox.server import serve_in_thread

    where = tmp_path_factory.mktemp("live")
    sandbox = serve_in_thread("127.0.0.1", 0, {
        "SANDBOX_API_KEY": DEV_GATEWAY_API_KEY,
        "SANDBOX_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
        "SANDBOX_DATABASE_URL": f"sqlite:///{where / 'sandbox.db'}",
        "SANDBOX_PUBLIC_URL": None,
        "SANDBOX_DELIVERY_BACKOFF_FACTOR": 0.01,
        "SANDBOX_DELIVERY_TIMEOUT": 5.0,
        "SANDBOX_WORKER_POLL_SECONDS": 0.2,
        "SANDBOX_PENDING_SECONDS": 2,
    })
    late = _LateApp()
    server = make_server("127.0.0.1", 0, late, threaded=True)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    app = create_app({
        "APP_ENV": "testing",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{where / 'checkout.db'}",
        "PUBLIC_BASE_URL": url,
        "PAYMENT_GATEWAY_URL": sandbox.url,
        "PAYMENT_GATEWAY_API_KEY": DEV_GATEWAY_API_KEY,
        "PAYMENT_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
        "SOCKETIO_ASYNC_MODE": "threading",
        "RATELIMIT_ENABLED": False,
        "SCHEDULER_ENABLED": False,
    })
    with app.app_context():
        from app.services.catalog import seed_demo_catalog

        db.create_all()
        seed_demo_catalog()
    late.app = app
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    thread = threading.Thread(target=server.serve_forever, name="live-app", daemon=True)
    thread.start()
    yield LiveShop(url, sandbox.url, app)
    server.shutdown()
    thread.join(10)
    server.server_close()
    sandbox.stop()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="module")
def chromium():
    """One headless Debian Chromium for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shop_context(chromium, live):
    """A fresh browser profile (cookies, storage) per test."""
    ctx = chromium.new_context(base_url=live.url, viewport={"width": 1024, "height": 720})
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture
def screenshot():
    """``screenshot(page, name)`` saves test-results/screenshots/<name>.png (and docs/ with DOC_SCREENSHOTS=1)."""

    def save(page, name: str) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if os.environ.get("DOC_SCREENSHOTS") == "1":
            DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOC_SCREENSHOTS / path.name)
        return path

    return save

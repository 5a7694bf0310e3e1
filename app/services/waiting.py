"""Waiting for another request's answer: re-read until it is there, holding nothing meanwhile."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from app.extensions import db

T = TypeVar("T")


def wait_for(read: Callable[[], T], done: Callable[[T], bool], seconds: float) -> T:
    """Call ``read`` until ``done`` holds for what it returns or ``seconds`` have passed, and
    return the last value read. The database transaction ends before each pause, so no lock or
    connection is held while waiting and every read sees what others committed since."""
    deadline = time.monotonic() + seconds
    pause = 0.02
    while True:
        value = read()
        left = deadline - time.monotonic()
        if done(value) or left <= 0:
            return value
        db.session.rollback()
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.5)

"""Group commit: the same one-statement write of several concurrent requests, sent as one statement.

A webhook's writes on PostgreSQL are a statement each (``one_statement``), and what a statement
costs the worker is mostly its round trip: the driver's send and wait, SQLAlchemy's execute,
the server's commit. When deliveries arrive together, the first one to write becomes the
leader: it sends its own item together with every item that queued meanwhile, in one statement
that commits alone, and hands each caller its own result. While that statement is out, the next
items queue; the oldest of them leads the next statement. A request alone writes alone, as
before, and waits for nothing but its own statement.

What the statement does for each item is decided item by item inside it (each item its own
compare-and-set), so batching changes how many round trips are made, never what is written.
Two items that would touch the same row (``keys``) never share a statement: the later one waits
for the next (except while a statement is stalled, below: the database then orders them, as it
orders writes from different processes). The writer function is given the items and returns one
result per item (or an exception for that item); an exception it raises is raised to every
caller of that statement. One writer per app and purpose (``writer``); works with threads and
with gevent's greenlets.

A statement that stays out (a row lock held elsewhere, a connection gone quiet) must not hold
every request of the process behind it: once it has been out for ``STALLED_AFTER`` seconds, the
items waiting behind it, and those that come while it stays out, are written each alone, as
they were before group commit, and the next statement to finish hands the lead on as usual.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Callable, Generic, Hashable, Iterable, TypeVar

from flask import current_app

from app.connections import OutcomeUnknown
from app.metrics import GROUP_WRITE_ITEMS

log = logging.getLogger(__name__)
Item = TypeVar("Item")
Result = TypeVar("Result")
MOST_ITEMS = 64  # items in one statement: enough for any burst one worker takes at once
STALLED_AFTER = 1.0  # seconds a statement may be out before the items behind it stop waiting for it


class _Slot(Generic[Item]):
    """One caller's item, and what became of it."""

    __slots__ = ("item", "keys", "ready", "leads", "result", "error")

    def __init__(self, item, keys: Iterable[Hashable]) -> None:
        self.item, self.keys = item, frozenset(keys)
        self.ready = threading.Event()  # set when written (or when handed the lead)
        self.leads = False
        self.result = None
        self.error: BaseException | None = None


class WriterInterrupted(OutcomeUnknown):
    """The caller that was writing a statement with this item was stopped before it was answered:
    whether the statement committed is not known, as when a connection is lost under it."""


def _own(error: BaseException) -> BaseException:
    """A copy of an error shared by a statement's callers, for one of them to raise: raising one
    object in several requests would grow one traceback across all of them."""
    try:
        return copy.copy(error)
    except Exception:
        return error


class GroupWriter(Generic[Item, Result]):
    """Sends concurrent callers' items through ``write`` together, one statement at a time."""

    def __init__(self, name: str, write: Callable[[list], list], keys: Callable[[object], Iterable[Hashable]],
                 most: int = MOST_ITEMS, stalled_after: float | None = None) -> None:
        self._name, self._write, self._keys, self._most = name, write, keys, most
        self._stalled_after = STALLED_AFTER if stalled_after is None else stalled_after
        self._items_per_statement = GROUP_WRITE_ITEMS.labels(name)
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._writing = False  # a leader is writing (or about to): new items wait for it
        self._sent_at = 0.0  # when the statement being written was taken in hand (time.monotonic)
        self._stall_told = 0.0  # the _sent_at of the last stalled statement logged
        self._tell = False

    def submit(self, item: Item) -> Result:
        """Write ``item`` with whatever else is waiting, and return its result (or raise its error)."""
        slot = _Slot(item, self._keys(item))
        with self._lock:
            alone = self._stalled()
            if not alone:
                self._waiting.append(slot)
                slot.leads = not self._writing
                if slot.leads:
                    self._writing, self._sent_at = True, time.monotonic()
        if alone:
            return self._write_alone(item)
        if not slot.leads:
            try:
                while not slot.ready.wait(self._patience(slot)):
                    with self._lock:
                        alone = slot in self._waiting and not slot.leads and self._stalled()
                        if alone:
                            self._waiting.remove(slot)
                    if alone:
                        return self._write_alone(item)
            except BaseException:  # stopped while waiting (a greenlet killed): leave without a trace
                self._abandon(slot)
                raise
        if slot.leads:  # the first to come, or handed the lead as the oldest one waiting
            self._write_next()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _stalled(self) -> bool:
        """(Under the lock.) The statement being written has been out too long to wait for."""
        stalled = self._writing and time.monotonic() - self._sent_at > self._stalled_after
        if stalled and self._stall_told != self._sent_at:
            self._stall_told = self._sent_at
            self._tell = True  # logged once the lock is let go
        return stalled

    def _patience(self, slot: _Slot) -> float | None:
        """How long a waiting caller waits before it looks again: until the statement being written
        has been out ``stalled_after``; with no limit once its item is in that statement (its
        answer comes with it)."""
        with self._lock:
            if slot not in self._waiting:
                return None
            return max(0.005, self._sent_at + self._stalled_after - time.monotonic())

    def _write_alone(self, item: Item) -> Result:
        """``item`` in a statement of its own, beside the one that stays out."""
        if self._tell:
            self._tell = False
            log.warning("%s: a statement has been out for over %.1f s; the writes behind it go alone meanwhile",
                        self._name, self._stalled_after)
        self._items_per_statement.observe(1)
        result = self._write([item])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _abandon(self, slot: _Slot) -> None:
        """Take back the item of a caller that stopped waiting; if it had been handed the lead,
        hand it on. An item already in a statement being written stays there."""
        after = None
        with self._lock:
            if slot not in self._waiting:
                return
            self._waiting.remove(slot)
            if slot.leads:
                after = self._hand_on()
        if after is not None:
            after.ready.set()

    def _hand_on(self) -> _Slot | None:
        """(Under the lock.) The lead goes to the oldest item waiting, or the writer is free."""
        after = self._waiting[0] if self._waiting else None
        if after is None:
            self._writing = False
        else:
            after.leads, self._sent_at = True, time.monotonic()
        return after

    def _take(self) -> list[_Slot]:
        """The oldest waiting items, at most ``most``, no two sharing a key (the oldest always goes)."""
        batch, rest, taken = [], [], set()
        for slot in self._waiting:
            if len(batch) < self._most and taken.isdisjoint(slot.keys):
                batch.append(slot)
                taken |= slot.keys
            else:
                rest.append(slot)
        self._waiting = rest
        return batch

    def _write_next(self) -> None:
        """Write one statement's worth of items (the leader's own first), answer their callers,
        and hand the lead to the oldest item still waiting."""
        with self._lock:
            batch = self._take()
            self._sent_at = time.monotonic()
        try:
            self._items_per_statement.observe(len(batch))
            results = self._write([slot.item for slot in batch])
            for slot, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    slot.error = result
                else:
                    slot.result = result
        except Exception as exc:  # the statement failed for all of them
            batch[0].error = exc
            for slot in batch[1:]:
                slot.error = _own(exc)
        except BaseException as exc:  # the leader itself is being stopped: it re-raises, the others learn why
            for slot in batch[1:]:
                slot.error = WriterInterrupted(f"the statement's writer stopped: {type(exc).__name__}")
            batch[0].error = exc
        finally:
            with self._lock:
                after = self._hand_on()
            for slot in batch[1:]:
                slot.ready.set()
            if after is not None:
                after.ready.set()


def writer(name: str, write: Callable[[list], list], keys: Callable[[object], Iterable[Hashable]],
           of: Hashable = None) -> GroupWriter:
    """The app's one writer for ``name`` and ``of`` (what it writes, when one name serves
    several), made on first use."""
    writers = current_app.extensions.setdefault("group_writes", {})
    found = writers.get((name, of))
    if found is None:  # two first uses at once: one writer is kept, and both use it
        found = writers.setdefault((name, of), GroupWriter(name, write, keys))
    return found

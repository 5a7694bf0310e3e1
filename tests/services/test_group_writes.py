"""Group commit's writer: concurrent callers' items go out together, each gets its own answer.

Plain threads and a recording write function: no Flask, no database (the statements it drives
are tested on PostgreSQL in test_one_statement.py).
"""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.connections import lost_connection
from app.services.group_writes import GroupWriter, WriterInterrupted

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """A write function that records each statement's items, and can be held open until released."""

    def __init__(self, answer=lambda item: item * 10):
        self.statements: list[list] = []
        self.answer = answer
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list) -> list:
        self.statements.append(list(items))
        self.entered.set()
        assert self.release.wait(10)
        return [self.answer(item) for item in items]


def submit_all(writer: GroupWriter, items: list) -> tuple[list, list]:
    """Submit each item from its own thread; (results by item, exceptions by item)."""
    results, errors = [None] * len(items), [None] * len(items)

    def one(index):
        try:
            results[index] = writer.submit(items[index])
        except BaseException as exc:
            errors[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    return results, errors


def waiting_count(writer: GroupWriter) -> int:
    with writer._lock:
        return len(writer._waiting)


def hold_first_statement(writer: GroupWriter, record: Recorder, first, rest: list) -> tuple[list, list]:
    """The first item's statement is held open while ``rest`` queue behind it; then all are released."""
    record.release.clear()
    results, errors = [None] * (len(rest) + 1), [None] * (len(rest) + 1)

    def one(index, item):
        try:
            results[index] = writer.submit(item)
        except BaseException as exc:
            errors[index] = exc

    leader = threading.Thread(target=one, args=(0, first))
    leader.start()
    assert record.entered.wait(10)
    others = [threading.Thread(target=one, args=(i + 1, item)) for i, item in enumerate(rest)]
    for thread in others:
        thread.start()
    for _ in range(1000):
        if waiting_count(writer) == len(rest):
            break
        threading.Event().wait(0.005)
    assert waiting_count(writer) == len(rest)
    record.release.set()
    for thread in [leader, *others]:
        thread.join(20)
    assert not any(thread.is_alive() for thread in [leader, *others])
    return results, errors


def test_an_item_alone_is_written_alone_at_once():
    record = Recorder()
    writer = GroupWriter("test", record, keys=lambda item: [item])
    assert writer.submit(3) == 30
    assert writer.submit(4) == 40
    assert record.statements == [[3], [4]]


def test_items_that_queue_behind_a_statement_share_the_next_one_and_each_gets_its_own_answer():
    record = Recorder()
    writer = GroupWriter("test", record, keys=lambda item: [item])
    results, errors = hold_first_statement(writer, record, 0, list(range(1, 9)))
    assert errors == [None] * 9
    assert results == [n * 10 for n in range(9)]
    assert record.statements[0] == [0]
    assert sorted(record.statements[1]) == list(range(1, 9))  # the eight waiting went out together
    assert len(record.statements) == 2


def test_items_sharing_a_key_never_share_a_statement():
    record = Recorder()
    writer = GroupWriter("test", record, keys=lambda item: [item[0]])  # the key: the letter
    items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3), ("b", 2)]
    results, errors = hold_first_statement(writer, record, ("z", 0), items)
    assert errors == [None] * 7
    for statement in record.statements:
        letters = [letter for letter, _ in statement]
        assert len(letters) == len(set(letters)), statement
    assert sorted(item for statement in record.statements for item in statement) == sorted([("z", 0), *items])
    assert len(record.statements) == 4  # z alone, then a1 b1 c1, a2 b2, a3 (a's in their order)


def test_at_most_the_limit_of_items_share_one_statement():
    record = Recorder()
    writer = GroupWriter("test", record, keys=lambda item: [item], most=3)
    results, errors = hold_first_statement(writer, record, 0, list(range(1, 8)))
    assert errors == [None] * 8 and results == [n * 10 for n in range(8)]
    assert [len(statement) for statement in record.statements] == [1, 3, 3, 1]


def test_an_item_s_own_error_goes_to_its_caller_only():
    record = Recorder(answer=lambda item: ValueError(f"bad {item}") if item == 5 else item * 10)
    writer = GroupWriter("test", record, keys=lambda item: [item])
    results, errors = hold_first_statement(writer, record, 0, [4, 5, 6])
    assert results == [0, 40, None, 60]
    assert [type(error) for error in errors] == [type(None), type(None), ValueError, type(None)]
    assert str(errors[2]) == "bad 5"


def test_a_statement_that_fails_fails_for_each_of_its_callers_and_the_next_one_still_runs():
    failed_once = []

    def answer(item):
        return item * 10

    class Failing(Recorder):
        def __call__(self, items):
            result = super().__call__(items)
            if len(items) > 1 and not failed_once:
                failed_once.append(True)
                raise RuntimeError("the statement failed")
            return result

    record = Failing(answer)
    writer = GroupWriter("test", record, keys=lambda item: [item])
    results, errors = hold_first_statement(writer, record, 0, [1, 2, 3])
    assert results[0] == 0 and errors[0] is None
    assert [str(error) for error in errors[1:]] == ["the statement failed"] * 3
    assert writer.submit(7) == 70  # the writer is free again


def test_a_leader_stopped_mid_statement_tells_the_others_and_frees_the_writer():
    stop = []

    class Stopping(Recorder):
        def __call__(self, items):
            super().__call__(items)
            if len(items) > 1 and not stop:
                stop.append(True)
                raise KeyboardInterrupt  # as a worker's shutdown would stop the greenlet writing
            return [item * 10 for item in items]

    record = Stopping()
    writer = GroupWriter("test", record, keys=lambda item: [item])
    results, errors = hold_first_statement(writer, record, 0, [1, 2, 3])
    assert results[0] == 0
    stopped = [error for error in errors[1:] if isinstance(error, KeyboardInterrupt)]
    told = [error for error in errors[1:] if isinstance(error, WriterInterrupted)]
    assert (len(stopped), len(told)) == (1, 2)  # the leader of the second statement, and its two followers
    assert all(lost_connection(error) for error in told)  # outcome unknown: 503, retried like a lost connection
    assert writer.submit(9) == 90


def test_callers_of_a_failed_statement_each_raise_their_own_copy_of_its_error():
    class Failing(Recorder):
        def __call__(self, items):
            super().__call__(items)
            if len(items) > 1:
                raise LookupError("the statement failed")
            return [item for item in items]

    record = Failing()
    writer = GroupWriter("test", record, keys=lambda item: [item])
    _, errors = hold_first_statement(writer, record, 0, [1, 2, 3])
    failed = errors[1:]
    assert [str(error) for error in failed] == ["the statement failed"] * 3
    assert len({id(error) for error in failed}) == 3  # one traceback each, not one grown across requests


# Under gunicorn's gevent worker a request's greenlet can be killed while it waits for its
# statement (a worker's shutdown after graceful_timeout). Run in a process of its own, patched.
GEVENT_KILL = """
from gevent import monkey; monkey.patch_all()
import json, sys, gevent
from app.services.group_writes import GroupWriter

written, results, greenlets = [], {}, {}
def write(items):
    gevent.sleep(0.1)  # the statement's round trip
    written.append(list(items))
    return [item.upper() for item in items]

class Writer(GroupWriter):
    def _hand_on(self):
        after = super()._hand_on()
        if sys.argv[1] == "handed-the-lead" and after is not None and after.item == "f1":
            greenlets["f1"].kill(block=False)  # lands before the wake-up: f1 never runs as leader
        return after

writer = Writer("test", write, lambda item: [item])
def call(name):
    try:
        results[name] = writer.submit(name)
    except BaseException as exc:
        results[name] = type(exc).__name__
        raise
greenlets["lead"] = gevent.spawn(call, "lead")
gevent.sleep(0.02)
greenlets["f1"] = gevent.spawn(call, "f1")
greenlets["f2"] = gevent.spawn(call, "f2")
gevent.sleep(0.02)
if sys.argv[1] == "queued":
    greenlets["f1"].kill()
gevent.joinall(list(greenlets.values()), timeout=5)
late = gevent.spawn(call, "late")
late.join(timeout=5)
print(json.dumps({"written": written, "results": results, "free": not writer._writing and not writer._waiting}))
"""


@pytest.mark.parametrize("when", ["queued", "handed-the-lead"])
def test_a_caller_killed_while_it_waits_leaves_the_writer_working_for_the_others(when):
    run = subprocess.run([sys.executable, "-c", GEVENT_KILL, when], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.splitlines()[-1])
    assert seen["results"] == {"lead": "LEAD", "f1": "GreenletExit", "f2": "F2", "late": "LATE"}
    assert seen["written"] == [["lead"], ["f2"], ["late"]]  # the killed caller's item is never written
    assert seen["free"]


def test_writes_behind_a_statement_that_stays_out_go_alone_meanwhile():
    """A statement held (a row lock elsewhere): the item queued behind it stops waiting after
    ``stalled_after`` and goes alone, and one that comes meanwhile does not queue at all; the held
    one finishes when let go, and the writer carries on as usual."""
    release, held, statements = threading.Event(), threading.Event(), []

    def write(items):
        statements.append(list(items))
        if 0 in items:
            held.set()
            assert release.wait(10)
        return [item * 10 for item in items]

    writer = GroupWriter("test", write, keys=lambda item: [item], stalled_after=0.2)
    results = {}
    leader = threading.Thread(target=lambda: results.setdefault(0, writer.submit(0)))
    leader.start()
    assert held.wait(10)
    follower = threading.Thread(target=lambda: results.setdefault(1, writer.submit(1)))
    follower.start()
    follower.join(5)
    assert not follower.is_alive() and results == {1: 10}  # went alone while the first stayed out
    assert writer.submit(2) == 20  # came meanwhile: straight to a statement of its own
    release.set()
    leader.join(5)
    assert results == {0: 0, 1: 10}
    assert statements == [[0], [1], [2]]
    assert writer.submit(3) == 30 and statements[-1] == [3]
    assert not writer._writing and not writer._waiting


def test_an_item_queued_just_before_the_stall_bound_stops_waiting_at_the_bound():
    """Counted from when the statement went out, not from when the item queued: queued 0.8 s
    into a 1 s bound, it goes alone about 0.2 s later (not 1 s later)."""
    release, held = threading.Event(), threading.Event()

    def write(items):
        if 0 in items:
            held.set()
            assert release.wait(10)
        return [item * 10 for item in items]

    writer = GroupWriter("test", write, keys=lambda item: [item], stalled_after=1.0)
    leader = threading.Thread(target=writer.submit, args=(0,))
    leader.start()
    assert held.wait(10)
    time.sleep(0.8)
    started = time.monotonic()
    assert writer.submit(1) == 10
    waited = time.monotonic() - started
    release.set()
    leader.join(5)
    assert waited < 0.7, waited


@pytest.mark.parametrize("callers", [2, 16, 48])
def test_many_callers_at_once_each_get_exactly_their_answer(callers):
    record = Recorder()
    writer = GroupWriter("test", record, keys=lambda item: [item % 5])
    items = list(range(callers))
    results, errors = submit_all(writer, items)
    assert errors == [None] * callers
    assert results == [n * 10 for n in items]
    written = [item for statement in record.statements for item in statement]
    assert sorted(written) == items  # each item written once

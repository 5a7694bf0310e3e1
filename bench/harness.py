"""Shared pieces of the benchmarks: servers on loopback, a bounded load generator, figures.

Every benchmark compares the real endpoint with a bare baseline endpoint in the same run,
on the same machine and database, and prints the ratio. Nothing here is a test.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server():
    base = sa.make_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG))
    return base, sa.create_engine(base, isolation_level="AUTOCOMMIT")


def fresh_database(name: str) -> str:
    """Drop and create a PostgreSQL database for a benchmark; returns its URL."""
    base, admin = _server()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_database(name: str) -> None:
    """Drop a benchmark's database."""
    _, admin = _server()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def migrate(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "SCHEDULER_ENABLED": "0"}
    subprocess.run([PYTHON, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True)


@contextmanager
def gunicorn(app_spec: str, env: dict, workers: int = 1) -> Iterator[str]:
    """Run gunicorn (gevent, no control socket) on a free port until the block ends."""
    port = free_port()
    full_env = {**os.environ, "SCHEDULER_ENABLED": "0", "RATELIMIT_ENABLED": "0", "LOG_LEVEL": "WARNING",
                "CHECKOUT_GEVENT": "1", "SOCKETIO_ASYNC_MODE": "gevent", **env}
    cmd = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers), "--access-logfile", "/dev/null", app_spec]
    log_file = tempfile.NamedTemporaryFile("w+", prefix="gunicorn-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                requests.get(url + "/healthz", timeout=2)
                break
            except requests.RequestException:
                if proc.poll() is not None or time.time() > deadline:
                    log_file.seek(0)
                    raise RuntimeError(f"gunicorn {app_spec} did not start: {log_file.read()[-3000:]}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
        os.environ.get("BENCH_KEEP_LOGS") or os.unlink(log_file.name)


@dataclass
class LoadResult:
    label: str
    count: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def throughput(self) -> float:
        return self.count / self.seconds

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def line(self) -> str:
        return (f"{self.label:<32} {self.throughput:8.1f} req/s   p50 {self.pct(50):7.2f} ms   "
                f"p99 {self.pct(99):7.2f} ms   errors {self.errors}")


def run_load(label: str, jobs: list[Callable[[requests.Session], bool]], concurrency: int = 32) -> LoadResult:
    """Run each job once over ``concurrency`` client threads; a job returns True on success."""
    local = threading.local()
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(job):
        nonlocal errors
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        start = time.perf_counter()
        try:
            ok = job(session)
        except requests.RequestException:
            ok = False
        took = time.perf_counter() - start
        with lock:
            latencies.append(took)
            errors += 0 if ok else 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, jobs))
    return LoadResult(label, len(jobs), time.perf_counter() - started, latencies, errors)


Job = Callable[[requests.Session], bool]


def per_round(ids: list[str], n: int, build: Callable[[list[str]], list[Job]]) -> Callable[[int], list[Job]]:
    """Round ``i``'s jobs: ``build`` over the ``i``-th slice of ``n`` ids."""
    return lambda i: build(ids[i * n:(i + 1) * n])


def compare_rounds(
    real_label: str,
    real_jobs: Callable[[int], list[Job]],
    bare_label: str,
    bare_jobs: Callable[[int], list[Job]],
    rounds: int,
    concurrency: int,
) -> list[tuple[LoadResult, LoadResult]]:
    """Run bare and real loads in alternating rounds (bare first), printing each pair.

    One pair of runs on a shared 2-core machine swings by a quarter from run to run; the
    median ratio over alternating rounds is the figure to quote. Each round's jobs are built
    just before it runs, so a signed webhook never waits rounds for its turn and grows stale.
    """
    pairs = []
    for number in range(rounds):
        bare = run_load(bare_label, bare_jobs(number), concurrency)
        real = run_load(real_label, real_jobs(number), concurrency)
        print(f"round {number + 1}: ratio {real.throughput / bare.throughput:.2f}")
        print("  " + bare.line())
        print("  " + real.line())
        pairs.append((real, bare))
    return pairs


def median_ratio_line(name: str, pairs: list[tuple[LoadResult, LoadResult]], target: float | None) -> str:
    ratios = sorted(real.throughput / bare.throughput for real, bare in pairs)
    ratio = statistics.median(ratios)
    verdict = "" if target is None else f"; {'meets' if ratio >= target else 'below'} the target {target}"
    measured_p50 = statistics.median(statistics.median(real.latencies) for real, _ in pairs) * 1000
    return (f"{name}: median ratio {ratio:.2f} over {len(pairs)} rounds "
            f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}{verdict})  p50 {measured_p50:.2f} ms")

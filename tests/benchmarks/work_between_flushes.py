"""Does work done between flushes cost more than the same work in a loop without them?

Raw 10-row commits to a SQLite file (as esbench's raw floor), each after a fixed amount of
pure-Python work, with ``synchronous=FULL`` and then ``OFF``. If the work cost the same in
both, the time per commit would grow by the same amount in both columns; on a machine where
a thread that has waited for the disk runs slower when it wakes, the FULL column grows more,
and ``flush_share.py``'s "waiting" for a workload includes that slowdown of its work.

    python tests/benchmarks/work_between_flushes.py --rounds 3
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path


def spin(iterations: int) -> int:
    """Pure-Python work, touching no memory beyond a few objects."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def iterations_per_us() -> float:
    """How many iterations of :func:`spin` run in a microsecond, in a hot loop."""
    started = time.perf_counter()
    spin(1_000_000)
    return 1_000_000 / ((time.perf_counter() - started) * 1e6)


def us_per_commit(synchronous: str, work_us: float, per_us: float, commits: int) -> float:
    """Microseconds per 10-row commit, each after ``work_us`` of work."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp, "raw.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE t (a TEXT, b INTEGER, c TEXT, d BLOB, PRIMARY KEY (a, b))")
        iterations, state = int(work_us * per_us), b"x" * 200
        started = time.perf_counter()
        for _ in range(commits):
            spin(iterations)
            rows = [(uuid.uuid4().hex, v, "topic", state) for v in range(10)]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        conn.close()
    return elapsed / commits * 1e6


def main() -> None:
    """Print, for each amount of added work, the time per commit with and without flushes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commits", type=int, default=1500)
    args = parser.parse_args()
    per_us = iterations_per_us()
    print("| work added per commit (us) | us per commit, FULL | us per commit, OFF | FULL - OFF |")
    print("|---:|---:|---:|---:|")
    for work_us in (0, 50, 100, 200):
        full = [us_per_commit("FULL", work_us, per_us, args.commits) for _ in range(args.rounds)]
        off = [us_per_commit("OFF", work_us, per_us, args.commits) for _ in range(args.rounds)]
        f, o = statistics.median(full), statistics.median(off)
        print(f"| {work_us} | {f:,.0f} | {o:,.0f} | {f - o:,.0f} |")


if __name__ == "__main__":
    main()

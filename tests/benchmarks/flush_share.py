"""How much of a durable SQLite workload is its flushes, and how much everything else.

A diagnosis, not a setting: each workload (esbench's, at its sizes) and esbench's raw floor
run on a SQLite file twice, back to back, once as always (``synchronous=FULL``) and once
with ``synchronous=OFF`` forced on every connection, so that commits return without waiting
for the disk. The time per operation without flushes is what the library and SQLite do
besides flushing; the difference between the two is the wait for the disk. A workload's
fraction of its ceiling is then (raw floor's time per commit) / (its time per operation),
and this shows which of the two parts makes the gap.

    python tests/benchmarks/flush_share.py --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ceiling import RAW_ROWS, esbench_context, esbench_module, workload_call  # noqa: E402
from run import DEFAULT_ESBENCH  # noqa: E402

# (case, metric, operations per unit of the metric's rate): a 10-row raw commit is one.
CASES = [
    ("raw/sqlite_file", "executemany_batch10_rows_per_s", 1 / 10),
    ("command/sqlite_file", "commands_per_s", 1),
    ("system/sqlite_file/single", "processed_per_s", 1),
    ("system/sqlite_file/multi", "processed_per_s", 1),
    ("bulk/sqlite_file", "events_per_s", 1 / 1000),
]


class _NoFlushConnection(sqlite3.Connection):
    """A connection whose commits don't wait for the disk, whatever it is asked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        super().execute("PRAGMA synchronous=OFF")

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if sql.replace(" ", "").upper().startswith("PRAGMASYNCHRONOUS="):
            sql = "PRAGMA synchronous=OFF"
        return super().execute(sql, *args)


@contextlib.contextmanager
def without_flushes() -> Iterator[None]:
    """Every sqlite3 connection made meanwhile commits without flushing."""
    connect = sqlite3.connect

    def no_flush_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", _NoFlushConnection)
        return connect(*args, **kwargs)

    sqlite3.connect = no_flush_connect  # type: ignore[assignment]
    try:
        yield
    finally:
        sqlite3.connect = connect


def measure(esbench: Any, ctx: Any, case: str, metric: str) -> float:
    """One run of ``case``: its ``metric``."""
    if case.startswith("raw/"):
        return float(esbench.wl_raw(ctx, "sqlite_file", **RAW_ROWS["sqlite_file"])[metric])
    func, backend, params = workload_call(esbench, case)
    return float(func(ctx, backend, **params)[metric])


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; print the time per operation with and without flushes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--esbench", type=Path, default=DEFAULT_ESBENCH)
    args = parser.parse_args(argv)
    esbench = esbench_module(args.esbench)
    ctx = esbench_context(esbench, ["sqlite_file"])
    us: dict[tuple[str, bool], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for case, metric, per_rate in CASES:
                for flushes in (True, False):
                    with contextlib.nullcontext() if flushes else without_flushes():
                        rate = measure(esbench, ctx, case, metric)
                    us.setdefault((case, flushes), []).append(1e6 / (rate * per_rate))
    finally:
        ctx.close()
    print("| operation | us each | us each without flushes | us waiting for the disk |")
    print("|---|---:|---:|---:|")
    for case, _metric, per_rate in CASES:
        full = statistics.median(us[(case, True)])
        off = statistics.median(us[(case, False)])
        what = {1: "", 1 / 10: " (10-row commit)", 1 / 1000: " (1000-event save)"}[per_rate]
        print(f"| {case}{what} | {full:,.0f} | {off:,.0f} | {full - off:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Raw commits on a fresh SQLite file: how fast the first ones are, against later ones.

esbench's ``command`` and ``system`` workloads start on a fresh database file and make a
few thousand commits; its ``raw`` workload, the ceiling they are set against, makes 10,000
commits, most of them after the write-ahead log has grown to its full size. While the WAL
is growing, each commit's flush also has to record the file's new size. This measures that
with plain ``sqlite3`` (no library): one-row transactions, like a command's, on a fresh
file in WAL mode with ``synchronous=FULL``, in the command workload's pattern (400
commits, then 4,000), and then 4,400 more on the same file once its WAL has been reused.

    python tests/benchmarks/fresh_file.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
import uuid

STATE = b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-01-01T00:00:00+00:00"}}' * 3


def commits_per_s(conn: sqlite3.Connection, count: int) -> float:
    """Insert ``count`` rows, one transaction each; return transactions per second."""
    rows = [(uuid.uuid4().hex, 1, "app:Dog.TrickAdded", STATE) for _ in range(count)]
    started = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?)", row)
        conn.execute("COMMIT")
    return count / (time.perf_counter() - started)


def one_run(directory: str) -> dict[str, float]:
    """The rates of one fresh file: the first 400 commits, the next 4,000, 4,400 more."""
    path = os.path.join(directory, f"{uuid.uuid4().hex}.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE events (originator_id TEXT, originator_version INTEGER, "
            "topic TEXT, state BLOB, PRIMARY KEY (originator_id, originator_version))"
        )
        first = commits_per_s(conn, 400)
        next_ = commits_per_s(conn, 4000)
        both = 4400 / (400 / first + 4000 / next_)
        later = commits_per_s(conn, 4400)
    finally:
        conn.close()
    return {"first_400": first, "next_4000": next_, "fresh_4400": both, "later_4400": later}


def main() -> None:
    """Print the medians of ``--repeat`` runs as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        runs = [one_run(directory) for _ in range(args.repeat)]
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(json.dumps({"commits_per_s_median": medians, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()

"""Runner benchmarks: end-to-end throughput and leader-commit to follower-commit latency.

    python tests/benchmarks/runners_bench.py [--stores postgres,sqlite_file] [--events 3000]

For each store and each runner or transport, in one run, with the multi-threaded runner
beside them: the system ``Source -> Sink`` (``runner_system.py``: one event per save, one
copy per notification) is started fresh, then

- latency: the source saves at 50 and then 200 events/s (paced); a watcher polls the sink's
  tracking record every millisecond and notes when each notification id is first tracked;
  latency = that moment - the moment the source's ``save()`` returned (its commit), p50/p99;
- throughput: the source saves ``--events`` events as fast as one thread can; end-to-end
  events/s = events / (first save to the sink tracking the last one);
- idle wake: the source saves one event every ``IDLE_GAP`` seconds, so the follower is idle
  (waiting for a prompt) when each arrives; latency as above, p50/p99. It bounds the time to
  wake an idle follower from above (it also includes the follower's processing and commit);
- ceilings, before any runner starts: ``raw`` is a plain ``sqlite3``/psycopg loop committing
  one row per transaction with the recorders' durability settings (what one durable commit
  per leader save allows); ``source`` is the source alone saving ``--events`` events from one
  thread through the library.

Workers (``worker+...``) are CLI processes (``python -m runners run``); ``processes`` is
MultiProcessRunner with its multiprocessing queues. Writes results/runners.json and prints a
Markdown table. Not collected by pytest; never a timed test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
sys.path[:0] = [str(HERE), str(TESTS)]

from runner_system import SYSTEM, Sink, Source  # noqa: E402

from eventsourcing.system import MultiThreadedRunner  # noqa: E402
from runners import MultiProcessRunner  # noqa: E402
from runners.testing.postgres import resolve_postgres  # noqa: E402
from runners.testing.redis import resolve_redis  # noqa: E402

RUNNERS = {
    "postgres": ["threads", "processes", "worker+redis", "worker+kombu", "worker+postgres"],
    "sqlite_file": ["threads", "processes", "worker+redis", "worker+kombu"],
}
RATES = (50, 200)
RATE_SECONDS = 5.0
IDLE_SAVES = 200
IDLE_GAP = 0.05


class Watcher(threading.Thread):
    """Notes when each of the source's notification ids is first tracked by the sink."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(daemon=True)
        self.sink = sink
        self.seen: dict[int, float] = {}
        self.last = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        recorder = self.sink.recorder
        while not self.stopping.is_set():
            tracked = recorder.max_tracking_id("Source") or 0
            if tracked > self.last:
                now = time.perf_counter()
                for n in range(self.last + 1, tracked + 1):
                    self.seen[n] = now
                self.last = tracked
            time.sleep(0.001)

    def wait_for(self, notification_id: int, timeout: float = 120) -> float:
        deadline = time.perf_counter() + timeout
        while self.last < notification_id:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"sink stuck at {self.last} of {notification_id}")
            time.sleep(0.0005)
        return self.seen[notification_id]


def store_env(store: str, tmp: Path, pg: Any, redis_url: str) -> dict[str, str]:
    if store == "postgres":
        name = f"bench_runners_{os.getpid()}_{time.monotonic_ns()}"
        pg.create_database(name)
        return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **pg.settings.env(name)}
    folder = Path(tempfile.mkdtemp(dir=tmp))
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SOURCE_SQLITE_DBNAME": str(folder / "source.db"),
        "SINK_SQLITE_DBNAME": str(folder / "sink.db"),
    }


def raw_ceiling(store: str, tmp: Path, pg: Any, events: int) -> float:
    """Commits per second of a plain loop: one row per transaction, durable as ours."""
    state = b'{"n":1}' * 20
    if store == "postgres":
        name = f"bench_raw_{os.getpid()}_{time.monotonic_ns()}"
        pg.create_database(name)
        conn = pg.settings.connect(name)
        conn.execute("SET synchronous_commit = on")
        conn.execute("CREATE TABLE raw (id bigserial PRIMARY KEY, state bytea)")
        execute = conn.execute
        begin = "BEGIN"
        sql = "INSERT INTO raw (state) VALUES (%s)"
    else:
        conn = sqlite3.connect(Path(tempfile.mkdtemp(dir=tmp)) / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, state BLOB)")
        execute = conn.execute
        begin = "BEGIN IMMEDIATE"
        sql = "INSERT INTO raw (state) VALUES (?)"
    try:
        start = time.perf_counter()
        for _ in range(events):
            execute(begin)
            execute(sql, (state,))
            execute("COMMIT")
        return events / (time.perf_counter() - start)
    finally:
        conn.close()


def ceiling(env: dict[str, str], events: int) -> float:
    """Saves per second of the source alone, one thread, one commit per save."""
    source = Source(env=env)
    try:
        start = time.perf_counter()
        for n in range(events):
            source.record(n)
        return events / (time.perf_counter() - start)
    finally:
        source.close()


def percentile(ordered: list[float], fraction: float) -> float:
    """The value at ``fraction`` of an ascending list (nearest rank)."""
    return ordered[max(0, math.ceil(len(ordered) * fraction) - 1)]


def measure(store: str, runner: str, env: dict[str, str], redis_url: str, events: int) -> dict:
    transport = runner.partition("+")[2]
    if transport == "redis":
        env = {**env, "PROMPT_TRANSPORT": redis_url}
    elif transport == "kombu":
        env = {**env, "PROMPT_TRANSPORT": f"kombu+{redis_url}"}
    elif transport == "postgres":
        env = {**env, "PROMPT_TRANSPORT": "postgres"}
    worker: subprocess.Popen[bytes] | None = None
    in_process: Any = None
    if runner == "threads":
        in_process = MultiThreadedRunner(SYSTEM, env)
    elif runner == "processes":
        in_process = MultiProcessRunner(SYSTEM, env, poll_interval=5.0)
    if in_process is not None:
        in_process.start()
        source = in_process.get(Source)
    else:
        source = Source(env=env)
        log = open(Path(tempfile.gettempdir()) / f"bench-{runner}.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "runners", "run", "runner_system:SYSTEM", "--app", "Sink",
             "--poll-interval", "5", "--log-level", "WARNING"],
            env={**os.environ, **env, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    sink = Sink(env=env)
    watcher = Watcher(sink)
    watcher.start()
    try:
        # Warm up: the first item wakes everything (and waits for workers to start).
        first = source.record(-1)
        watcher.wait_for(first, timeout=60)
        time.sleep(0.5)
        result: dict[str, Any] = {"store": store, "runner": runner}
        for rate in RATES:
            commits: dict[int, float] = {}
            interval = 1.0 / rate
            start = time.perf_counter()
            for n in range(int(rate * RATE_SECONDS)):
                due = start + n * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                commits[source.record(n)] = time.perf_counter()
            watcher.wait_for(max(commits))
            latencies = sorted((watcher.seen[i] - t) * 1000 for i, t in commits.items())
            result[f"p50_ms_{rate}"] = round(statistics.median(latencies), 2)
            result[f"p99_ms_{rate}"] = round(percentile(latencies, 0.99), 2)
        commits = {}
        for n in range(IDLE_SAVES):
            time.sleep(IDLE_GAP)
            commits[source.record(n)] = time.perf_counter()
            watcher.wait_for(max(commits))
        latencies = sorted((watcher.seen[i] - t) * 1000 for i, t in commits.items())
        result["p50_ms_idle"] = round(statistics.median(latencies), 2)
        result["p99_ms_idle"] = round(percentile(latencies, 0.99), 2)
        start = time.perf_counter()
        last = 0
        for n in range(events):
            last = source.record(n)
        produced = time.perf_counter() - start
        done = watcher.wait_for(last) - start
        result["producer_eps"] = round(events / produced)
        result["end_to_end_eps"] = round(events / done)
        return result
    finally:
        watcher.stopping.set()
        watcher.join()
        sink.close()
        if in_process is not None:
            in_process.stop()
        else:
            source.close()
            assert worker is not None
            worker.terminate()
            worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", default="postgres,sqlite_file")
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    pg = resolve_postgres()
    redis = resolve_redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-runners-"))
    rows: list[dict[str, Any]] = []
    try:
        for store in args.stores.split(","):
            raw = raw_ceiling(store, tmp, pg, args.events)
            source_alone = ceiling(store_env(store, tmp, pg, redis.url), args.events)
            for runner in RUNNERS[store]:
                row = measure(store, runner, store_env(store, tmp, pg, redis.url), redis.url,
                              args.events)  # fmt: skip
                row["raw_eps"] = round(raw)
                row["source_eps"] = round(source_alone)
                row["of_raw"] = round(row["end_to_end_eps"] / raw, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        redis.stop()
        pg.stop()
    (HERE / "results" / "runners.json").write_text(json.dumps(rows, indent=2) + "\n")
    columns = ["store", "runner", "end_to_end_eps", "producer_eps", "raw_eps", "source_eps",
               "of_raw", "p50_ms_50", "p99_ms_50", "p50_ms_200", "p99_ms_200", "p50_ms_idle",
               "p99_ms_idle"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()

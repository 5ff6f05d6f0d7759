"""Benchmark the Paxos example: basic Paxos against multi-Paxos (``PAXOS_MODE``), side by side.

For each mode, runner and store, a cluster of three replicas (``examples.paxos``) is run:
one client doing puts one after another through Replica0 (the latency of a put from its
call to its return, on an idle cluster), then clients spread over the replicas doing puts
at the same time (commands chosen and applied per second, and the latency under that
load), then the same clients doing gets. Each store's raw commit rate (a plain loop of
single-row transactions, durable as ours) is measured in the same run, so that speeds are
reported as ratios of it. With the in-process runners, the run also counts the events the
replicas recorded and the transactions they committed per put, and lists the commits that
one idle put waited for, in order (its dependent commits). Results go to
``results/paxos.json`` and to the Paxos section of ``RESULTS.md`` (between its markers).

    python tests/benchmarks/paxos.py                              # sqlite, both modes
    python tests/benchmarks/paxos.py --backends sqlite,postgres --seconds 5 --clients 64 \
        --runners MultiThreadedRunner,MultiProcessRunner,cli

PostgreSQL uses the POSTGRES_* variables if they are set, else a throwaway server that the
pytest plugin's code starts (``runners.testing.postgres``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(HERE.parent)]

from eventsourcing.system import (  # noqa: E402
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    Runner,
    SingleThreadedRunner,
)
from examples.paxos.application import Replica  # noqa: E402
from examples.paxos.system import Replica0, Replica1, Replica2, system  # noqa: E402
from runners import MultiProcessRunner  # noqa: E402

RUNNERS: dict[str, type[Runner[Any]] | None] = {
    cls.__name__: cls
    for cls in (
        SingleThreadedRunner,
        NewSingleThreadedRunner,
        MultiThreadedRunner,
        NewMultiThreadedRunner,
        MultiProcessRunner,
    )
}
RUNNERS["cli"] = None  # a worker per replica started with the runner CLI, woken through Redis
IN_PROCESS = ("SingleThreadedRunner", "NewSingleThreadedRunner", "MultiThreadedRunner",
              "NewMultiThreadedRunner")  # fmt: skip
REPLICAS = (Replica0, Replica1, Replica2)
REPORT = HERE / "RESULTS.md"
RESULTS = HERE / "results" / "paxos.json"
BEGIN, END = "<!-- PAXOS -->", "<!-- /PAXOS -->"


class Commits:
    """Counts the transactions of every replica in this process, and notes what each
    recorded (by whom, which events), in order."""

    def __init__(self) -> None:
        self.count = 0
        self.log: list[tuple[float, str, list[str]]] = []
        self._lock = threading.Lock()
        self._original = Replica._record

    def __enter__(self) -> Commits:
        commits = self

        def counted(replica: Replica, processing_event: Any) -> Any:
            recordings = commits._original(replica, processing_event)
            kinds = sorted({type(e).__qualname__ for e in processing_event.events})
            with commits._lock:
                commits.count += 1
                commits.log.append((time.perf_counter(), replica.name, kinds))
            return recordings

        Replica._record = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Replica._record = self._original  # type: ignore[method-assign]

    def between(self, start: float, end: float) -> list[tuple[float, str, list[str]]]:
        """The commits made between ``start`` and ``end`` (perf_counter)."""
        with self._lock:
            return [c for c in self.log if start <= c[0] <= end]


# -- stores ------------------------------------------------------------------------------


_server: Any = None
_redis: Any = None
_databases = iter(range(1, 1_000_000))


def postgres_server() -> Any:
    """The PostgreSQL server: POSTGRES_* settings, else a throwaway one."""
    global _server
    if _server is None:
        from runners.testing.postgres import resolve_postgres

        _server = resolve_postgres()
    return _server


def redis_url() -> str:
    """A Redis server's URL (REDIS_URL, else a throwaway one)."""
    global _redis
    if _redis is None:
        from runners.testing.redis import resolve_redis

        _redis = resolve_redis()
    return str(_redis.url)


@contextmanager
def backend_env(backend: str) -> Iterator[dict[str, str]]:
    """An environment giving each replica a fresh database on ``backend``."""
    if backend == "popo":
        yield {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    elif backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
            for name in system.nodes:
                env[f"{name.upper()}_SQLITE_DBNAME"] = os.path.join(folder, f"{name}.sqlite")
            yield env
    else:
        server = postgres_server()
        name = f"paxos_bench_{os.getpid()}_{next(_databases)}"
        server.create_database(name)
        try:
            yield {"PERSISTENCE_MODULE": "eventsourcing.postgres", **server.settings.env(name)}
        finally:
            server.drop_database(name)


def raw_commit_rate(backend: str, commits: int = 1000) -> float:
    """Commits per second of a plain loop: one row per transaction, durable as ours."""
    state = b'{"n":1}' * 20
    with tempfile.TemporaryDirectory() as folder:
        if backend == "postgres":
            server = postgres_server()
            name = f"paxos_raw_{os.getpid()}_{next(_databases)}"
            server.create_database(name)
            conn: Any = server.settings.connect(name)
            conn.execute("SET synchronous_commit = on")
            conn.execute("CREATE TABLE raw (id bigserial PRIMARY KEY, state bytea)")
            begin, sql = "BEGIN", "INSERT INTO raw (state) VALUES (%s)"
        else:
            server, name = None, ""
            conn = sqlite3.connect(os.path.join(folder, "raw.db"), isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, state BLOB)")
            begin, sql = "BEGIN IMMEDIATE", "INSERT INTO raw (state) VALUES (?)"
        try:
            started = time.perf_counter()
            for _ in range(commits):
                conn.execute(begin)
                conn.execute(sql, (state,))
                conn.execute("COMMIT")
            return commits / (time.perf_counter() - started)
        finally:
            conn.close()
            if server is not None:
                server.drop_database(name)


# -- clusters ------------------------------------------------------------------------------


@contextmanager
def cluster(runner_name: str, env: dict[str, str], folder: str) -> Iterator[list[Replica]]:
    """The three replicas running on ``runner_name``; yields a client of each."""
    runner_cls = RUNNERS[runner_name]
    if runner_cls is not None:
        with runner_cls(system, env=env) as runner:
            yield [runner.get(cls) for cls in REPLICAS]
        return
    env = {**env, "PROMPT_TRANSPORT": redis_url()}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "runners", "run", "examples.paxos.system:system", "--app",
             cls.name],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=open(os.path.join(folder, f"{cls.name}.log"), "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        for cls in REPLICAS
    ]  # fmt: skip
    clients = [cls(env=env) for cls in REPLICAS]
    try:
        yield clients
    finally:
        for client in clients:
            client.close()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=120)


# -- workloads -----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The ``p`` percentile (0-100) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def put_latency(replica: Replica, puts: int) -> tuple[list[float], tuple[float, float]]:
    """Seconds each of ``puts`` puts took, one after another; and when the last one ran."""
    latencies = []
    started = ended = 0.0
    for n in range(puts):
        started = time.perf_counter()
        replica.put(f"key{n % 10}", f"value{n}")
        ended = time.perf_counter()
        latencies.append(ended - started)
    return latencies, (started, ended)


def load(
    replicas: list[Replica],
    clients: int,
    seconds: float,
    operation: Callable[[Replica, int, int], Any],
) -> tuple[int, list[float], float]:
    """``clients`` clients, spread over the replicas, each calling ``operation`` one call
    after another for ``seconds``; return the calls, their latencies and the time taken."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(replica: Replica, number: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            operation(replica, number, n)
            with lock:
                latencies.append(time.perf_counter() - started)
            n += 1

    threads = [
        threading.Thread(target=client, args=(replicas[i % len(replicas)], i))
        for i in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies, time.monotonic() - started


def put(replica: Replica, number: int, n: int) -> None:
    replica.put(f"key{number}.{n % 10}", f"{replica.name}.{number}.{n}")


def get(replica: Replica, number: int, n: int) -> None:
    replica.get(f"key{number}.{n % 10}")


def wait_until_agreed(replicas: list[Replica]) -> int:
    """Wait until all replicas have applied as much; return how much."""
    while True:
        applied = {replica.applied_count() for replica in replicas}
        if len(applied) == 1:
            return applied.pop()
        time.sleep(0.01)


def messages_by_kind(replicas: list[Replica]) -> dict[str, int]:
    """How many events of each kind the replicas recorded."""
    counts: collections.Counter[str] = collections.Counter()
    for replica in replicas:
        start = 1
        while True:
            page = replica.recorder.select_notifications(start=start, limit=1000)
            if not page:
                break
            counts.update(n.topic.rsplit(":", 1)[-1] for n in page)
            start = page[-1].id + 1
    return dict(counts)


def restart_load_state(env: dict[str, str], backend: str, replica: Replica) -> dict[str, Any]:
    """What a replica restarted from its database does before it serves: construct it and
    load its store (and ledger) from their last snapshots; timed, with the history's size."""
    if backend == "popo":
        return {}
    started = time.perf_counter()
    fresh = type(replica)(env=env)
    try:
        store = fresh.store()
        fresh.ledger()
        seconds = time.perf_counter() - started
    finally:
        fresh.close()
    return {
        "restart_load_ms": seconds * 1000,
        "history_commands": replica.applied_count(),
        "store_keys": len(store.data),
    }


def failover(backend: str, how: str, rounds: int, args: argparse.Namespace) -> dict[str, Any]:
    """Multi-Paxos: ``rounds`` times, SIGKILL or SIGSTOP the leader's worker process while
    clients of the others put; time from the signal until a put invoked just after it
    returns (a new leader serves). Workers are ``tests/paxos/paxos_worker.py`` processes."""
    sys.path.insert(0, str(ROOT / "tests" / "paxos"))
    from paxos_cluster import Cluster

    times: list[float] = []
    with tempfile.TemporaryDirectory() as folder, backend_env(backend) as env:
        env = {**env, "PAXOS_MODE": "multi", "PAXOS_TIMEOUT": "120", "SQLITE_LOCK_TIMEOUT": "20",
               "PAXOS_POLL_INTERVAL": "0.005", "PAXOS_NUDGE_AFTER": args.nudge_after,
               "PAXOS_LEASE": args.lease}  # fmt: skip
        cluster = Cluster(env, Path(folder))
        clients = [cls(env=env) for cls in REPLICAS]
        try:
            for cls in REPLICAS:
                cluster.start(cls.name)
            clients[0].put("warm-up", "1")
            for _ in range(rounds):
                times.append(one_failover(cluster, clients, how))
        finally:
            for worker in cluster.workers.values():
                worker.send_signal(signal.SIGCONT)
                worker.kill()
                worker.wait()
            for client in clients:
                client.close()
    result = {"backend": backend, "signal": how, "rounds": rounds,
              "p50_s": statistics.median(times), "max_s": max(times), "times_s": times}  # fmt: skip
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def one_failover(cluster: Any, clients: list[Replica], how: str) -> float:
    """One round of :func:`failover`; returns the seconds until a new leader served."""
    while True:  # the leader, as its own ledger says
        leaders = [c.name for c in clients if c.ledger().is_leader]
        if leaders:
            break
        time.sleep(0.01)
    survivors = [c for c in clients if c.name != leaders[0]]
    stop = threading.Event()

    def background(replica: Replica, number: int) -> None:
        n = 0
        while not stop.is_set():
            put(replica, number, n)
            n += 1

    threads = [threading.Thread(target=background, args=(survivors[i % 2], i)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    signalled = time.perf_counter()
    if how == "SIGKILL":
        cluster.kill(leaders[0])
    else:
        cluster.pause(leaders[0])
    survivors[0].put("probe", str(signalled))
    served = time.perf_counter() - signalled
    stop.set()
    for thread in threads:
        thread.join()
    if how == "SIGKILL":
        cluster.start(leaders[0])
    else:
        cluster.resume(leaders[0])
    clients[0].put("after", str(signalled))  # everyone back
    return served


def run_one(mode: str, runner_name: str, backend: str, raw: float, args: argparse.Namespace
            ) -> dict[str, Any]:  # fmt: skip
    """Measure one mode on one runner and one store."""
    result: dict[str, Any] = {"mode": mode, "runner": runner_name, "backend": backend,
                              "raw_commits_per_second": raw}  # fmt: skip
    in_process = runner_name in IN_PROCESS
    with (
        tempfile.TemporaryDirectory() as folder,
        backend_env(backend) as env,
        Commits() as commits,
    ):
        env = {**env, "PAXOS_TIMEOUT": "120", "PAXOS_MODE": mode, "PAXOS_POLL_INTERVAL": "0.005"}
        with cluster(runner_name, env, folder) as replicas:
            replicas[0].put("warm-up", "1")
            wait_until_agreed(replicas)
            idle, (last_start, last_end) = put_latency(replicas[0], args.puts)
            path = commits.between(last_start, last_end)
            wait_until_agreed(replicas)
            before_commits, before = commits.count, messages_by_kind(replicas)
            puts, loaded, elapsed = load(replicas, args.clients, args.seconds, put)
            wait_until_agreed(replicas)
            after = messages_by_kind(replicas)
            load_commits = commits.count - before_commits
            gets, read, read_elapsed = load(replicas, args.clients, args.seconds, get)
            result.update(restart_load_state(env, backend, replicas[0]))
            messages = {k: after[k] - before.get(k, 0) for k in after}
            result.update(
                puts_per_second=puts / elapsed,
                puts=puts,
                gets_per_second=gets / read_elapsed,
                idle_p50_ms=statistics.median(idle) * 1000,
                idle_p99_ms=percentile(idle, 99) * 1000,
                load_p50_ms=statistics.median(loaded) * 1000,
                load_p99_ms=percentile(loaded, 99) * 1000,
                get_p50_ms=statistics.median(read) * 1000,
                events_per_put=sum(messages.values()) / puts,
                commits_per_put=load_commits / puts if in_process else None,
                idle_path=[(name, kinds) for _, name, kinds in path] if in_process else None,
                messages=messages,
            )
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    """The Markdown tables of the results."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run on {when}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, with `{command}`. Three replicas. Idle: {args.puts} puts "
        f"one after another through Replica0. Load: {args.clients} clients spread over the "
        f"replicas, each putting (then getting) one call after another for "
        f"{args.seconds:g} s. *raw* is the store's rate of single-row commits (one thread) "
        "measured in the same run; *idle p50 / raw commit* is the put's median latency in "
        "raw commit times, *puts / raw* and *gets / raw* the rates as fractions of the raw "
        "rate. Events and commits are counted over all three replicas, per put (in-process "
        "runners only).",
        "",
        "| store | mode | runner | raw commits/s | put p50 idle (ms) | idle p50 / raw commit "
        "| puts/s | puts / raw | put p50 load (ms) | put p99 load (ms) | gets/s | gets / puts "
        "| events/put | commits/put | restart: load state (ms) | commands in history |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        raw = r["raw_commits_per_second"]
        commits = "" if r["commits_per_put"] is None else f"{r['commits_per_put']:.2f}"
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['runner']} | {raw:,.0f} "
            f"| {r['idle_p50_ms']:.1f} | {r['idle_p50_ms'] / (1000 / raw):.1f} "
            f"| {r['puts_per_second']:,.0f} | {r['puts_per_second'] / raw:.2f} "
            f"| {r['load_p50_ms']:.1f} | {r['load_p99_ms']:.1f} | {r['gets_per_second']:,.0f} "
            f"| {r['gets_per_second'] / r['puts_per_second']:.2f} "
            f"| {r['events_per_put']:.1f} | {commits} | {r.get('restart_load_ms', 0):.0f} "
            f"| {r.get('history_commands', '')} |"
        )
    paths = [r for r in results if r["idle_path"]]
    if paths:
        lines += [
            "",
            "The commits one idle put waited for (the last of the idle puts), in order: "
            "replica, and the events it recorded in that transaction.",
            "",
            "| store | mode | runner | commits | in order |",
            "|---|---|---|---:|---|",
        ]
        for r in paths:
            steps = "; ".join(f"{name}: {', '.join(kinds) or '(tracking only)'}"
                              for name, kinds in r["idle_path"])  # fmt: skip
            lines.append(
                f"| {r['backend']} | {r['mode']} | {r['runner']} | {len(r['idle_path'])} "
                f"| {steps} |"
            )
    return "\n".join(lines)


def failover_report(failovers: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The table of the failovers, if any were run."""
    if not failovers:
        return ""
    lines = [
        "",
        "",
        f"Failover (multi-Paxos, {failovers[0]['rounds']} rounds per signal, worker processes, "
        f"`PAXOS_NUDGE_AFTER={args.nudge_after}`, `PAXOS_LEASE={args.lease}`): the leader's "
        "worker is signalled while 4 clients of the others put; the time is from the signal "
        "until a put invoked just after it returns.",
        "",
        "| store | signal | p50 (s) | max (s) |",
        "|---|---|---:|---:|",
    ]
    for f in failovers:
        lines.append(f"| {f['backend']} | {f['signal']} | {f['p50_s']:.2f} | {f['max_s']:.2f} |")
    return "\n".join(lines)


def write_section(tables: str) -> None:
    """Replace the tables in the Paxos section of RESULTS.md, keeping the analysis below."""
    text = REPORT.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    section = text[start:end]
    marker = "\n### Analysis"
    analysis = section[section.index(marker) :] if marker in section else ""
    REPORT.write_text(text[:start] + "\n" + tables + "\n" + analysis.rstrip() + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--modes", default="basic,multi")
    parser.add_argument("--runners", default="MultiThreadedRunner")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=12, help="clients in all")
    parser.add_argument("--puts", type=int, default=100, help="puts for the idle latency")
    parser.add_argument("--failovers", type=int, default=0, help="rounds per signal (multi)")
    parser.add_argument("--nudge-after", default="0.25", help="PAXOS_NUDGE_AFTER, failovers")
    parser.add_argument("--lease", default="0.5", help="PAXOS_LEASE in the failovers")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md")
    args = parser.parse_args(argv)
    command = "python tests/benchmarks/paxos.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = []
    for backend in args.backends.split(","):
        raw = raw_commit_rate(backend) if backend != "popo" else float("inf")
        for runner_name in args.runners.split(","):
            for mode in args.modes.split(","):
                results.append(run_one(mode, runner_name, backend, raw, args))
    failovers = [
        failover(backend, how, args.failovers, args)
        for backend in args.backends.split(",")
        if backend != "popo" and args.failovers
        for how in ("SIGKILL", "SIGSTOP")
    ]
    text = report(results, args, command.strip()) + failover_report(failovers, args)
    if not args.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps({"runs": results, "failovers": failovers}, indent=2))
        write_section(text)
    else:
        print(text)
    for server in (_server, _redis):
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

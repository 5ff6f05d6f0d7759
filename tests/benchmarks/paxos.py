"""Benchmark the Paxos example: commands chosen per second by three replicas, put latency.

For each in-process runner and each store, a cluster of three replicas (``examples.paxos``)
is run twice: once with one client doing puts one after another through one replica (the
latency of a put from its call to its return, on an idle cluster), and once with clients of
every replica doing puts at the same time (commands chosen and applied per second, and the
latency under that load). Each run also counts the events the replicas recorded (messages)
and the transactions they committed, per chosen command. Results go to
``results/paxos.json`` and to the Paxos section of ``RESULTS.md`` (between its markers).

    python tests/benchmarks/paxos.py                              # popo and sqlite
    python tests/benchmarks/paxos.py --backends popo,sqlite,postgres --seconds 5

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
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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

RUNNERS: list[type[Runner[Any]]] = [
    SingleThreadedRunner,
    NewSingleThreadedRunner,
    MultiThreadedRunner,
    NewMultiThreadedRunner,
]
REPORT = HERE / "RESULTS.md"
RESULTS = HERE / "results" / "paxos.json"
BEGIN, END = "<!-- PAXOS -->", "<!-- /PAXOS -->"


class Commits:
    """Counts the transactions of every replica (each save, and each processed batch)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._original = Replica._record

    def __enter__(self) -> Commits:
        commits = self

        def counted(replica: Replica, processing_event: Any) -> Any:
            with commits._lock:
                commits.count += 1
            return commits._original(replica, processing_event)

        Replica._record = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Replica._record = self._original  # type: ignore[method-assign]


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
        with postgres_database() as env:
            yield {"PERSISTENCE_MODULE": "eventsourcing.postgres", **env}


_server: Any = None
_databases = iter(range(1, 1_000_000))


@contextmanager
def postgres_database() -> Iterator[dict[str, str]]:
    """POSTGRES_* settings of a fresh database (dropped after)."""
    global _server
    if _server is None:
        from runners.testing.postgres import resolve_postgres

        _server = resolve_postgres()
    name = f"paxos_bench_{os.getpid()}_{next(_databases)}"
    _server.create_database(name)
    try:
        yield _server.settings.env(name)
    finally:
        _server.drop_database(name)


def percentile(values: list[float], p: float) -> float:
    """The ``p`` percentile (0-100) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def put_latency(replica: Replica, puts: int) -> list[float]:
    """Seconds each of ``puts`` puts took, one after another."""
    latencies = []
    for n in range(puts):
        started = time.perf_counter()
        replica.put(f"key{n % 10}", f"value{n}")
        latencies.append(time.perf_counter() - started)
    return latencies


def load(replicas: list[Replica], clients: int, seconds: float) -> tuple[int, list[float], float]:
    """Clients of every replica put for ``seconds``; return puts, latencies and elapsed."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(replica: Replica, number: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            replica.put(f"key{number}.{n % 10}", f"{replica.name}.{number}.{n}")
            with lock:
                latencies.append(time.perf_counter() - started)
            n += 1

    threads = [
        threading.Thread(target=client, args=(replica, i))
        for replica in replicas
        for i in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies, time.monotonic() - started


def wait_until_agreed(replicas: list[Replica]) -> int:
    """Wait until all replicas have applied the same slots; return how many."""
    while True:
        applied = {replica.store().next_slot for replica in replicas}
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
            counts.update(n.topic.rsplit(".", 1)[-1] for n in page)
            start = page[-1].id + 1
    return dict(counts)


def run_one(
    runner_cls: type[Runner[Any]], backend: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Measure one runner on one store."""
    result: dict[str, Any] = {"runner": runner_cls.__name__, "backend": backend}
    with backend_env(backend) as env, Commits() as commits:
        env = {**env, "PAXOS_TIMEOUT": "120"}
        runner = runner_cls(system, env=env)
        with runner:
            replicas: list[Replica] = [runner.get(c) for c in (Replica0, Replica1, Replica2)]
            idle = put_latency(replicas[0], args.puts)
            wait_until_agreed(replicas)
            idle_commits = commits.count
            before_commits, before_slots = commits.count, replicas[0].store().next_slot
            before = messages_by_kind(replicas)
            puts, loaded, elapsed = load(replicas, args.clients, args.seconds)
            slots = wait_until_agreed(replicas) - before_slots
            after = messages_by_kind(replicas)
            messages = {k: after[k] - before.get(k, 0) for k in after}
            result.update(
                commands_per_second=puts / elapsed,
                puts=puts,
                slots=slots,
                idle_p50_ms=statistics.median(idle) * 1000,
                idle_p99_ms=percentile(idle, 99) * 1000,
                load_p50_ms=statistics.median(loaded) * 1000,
                load_p99_ms=percentile(loaded, 99) * 1000,
                events_per_command=sum(messages.values()) / puts,
                commits_per_command=(commits.count - before_commits) / puts,
                idle_commits_per_command=idle_commits / args.puts,
                messages=messages,
            )
    print(json.dumps(result), file=sys.stderr)
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown tables of the results."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run on {when}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, with `python tests/benchmarks/paxos.py --backends "
        f"{args.backends} --seconds {args.seconds:g} --clients {args.clients} --puts "
        f"{args.puts}`. Three replicas; under load, {args.clients} clients per replica put "
        f"for {args.seconds:g} s; idle latency is {args.puts} puts one after another through "
        "Replica0. Events (under load) and commits are counted over all three replicas, per put "
        "chosen; slots/cmd above 1 would be no-ops from takeovers.",
        "",
        "| store | runner | commands/s | put p50 idle (ms) | put p99 idle (ms) "
        "| put p50 load (ms) | put p99 load (ms) | events/cmd | commits/cmd (idle) "
        "| commits/cmd (load) | slots/cmd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['runner']} | {r['commands_per_second']:,.0f} "
            f"| {r['idle_p50_ms']:.1f} | {r['idle_p99_ms']:.1f} | {r['load_p50_ms']:.1f} "
            f"| {r['load_p99_ms']:.1f} | {r['events_per_command']:.1f} "
            f"| {r['idle_commits_per_command']:.1f} | {r['commits_per_command']:.2f} "
            f"| {r['slots'] / r['puts']:.2f} |"
        )
    kinds = sorted({k for r in results for k in r["messages"]})
    lines += [
        "",
        "Events recorded per put chosen, by kind (under load):",
        "",
        "| store | runner | " + " | ".join(kinds) + " |",
        "|---|---|" + "---:|" * len(kinds),
    ]
    for r in results:
        cells = [f"{r['messages'].get(k, 0) / r['puts']:.2f}" for k in kinds]
        lines.append(f"| {r['backend']} | {r['runner']} | " + " | ".join(cells) + " |")
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
    parser.add_argument("--backends", default="popo,sqlite")
    parser.add_argument("--runners", default=",".join(cls.__name__ for cls in RUNNERS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4, help="clients per replica")
    parser.add_argument("--puts", type=int, default=200, help="puts for the idle latency")
    args = parser.parse_args(argv)
    runners = {cls.__name__: cls for cls in RUNNERS}
    results = [
        run_one(runners[name], backend, args)
        for backend in args.backends.split(",")
        for name in args.runners.split(",")
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    write_section(report(results, args))
    if _server is not None:
        _server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

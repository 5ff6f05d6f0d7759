"""Read aggregates of 100 events with and without a snapshot, on any ``eventsourcing``.

``esbench.py`` (the shared yardstick) reads aggregates by replaying all their events; this
script adds the same read starting from a snapshot taken at version 90, so that a get loads
one snapshot and ten events. It uses only API that ``eventsourcing`` 9.x shares, so the
same script measures ours and the anchor::

    python snapshots.py [--aggregates 1500] [--repeat 3] [--backends popo,sqlite_file,...]

It prints a JSON object: for each backend and mode, the median aggregates per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

EVENTS = 100
SNAPSHOT_AT = 90


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


class Kennel(Application):
    is_snapshotting_enabled = True


def backend_env(backend: str, tmpdir: str, run: int) -> dict[str, str]:
    if backend == "popo":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if backend == "sqlite_file":
        path = os.path.join(tmpdir, f"kennel-{run}.sqlite")
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path}
    if backend == "sqlite_memory":
        name = f"file:kennel{run}?mode=memory&cache=shared"
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": name}
    raise SystemExit(f"unknown backend {backend!r}: use popo, sqlite_file or sqlite_memory")


def measure(backend: str, mode: str, aggregates: int, tmpdir: str, run: int) -> float:
    """Return aggregates read per second; only the reads are timed."""
    app = Kennel(env=backend_env(backend, tmpdir, run))
    ids = []
    for i in range(aggregates):
        dog = Dog(f"dog{i}")
        for j in range(EVENTS - 1):
            dog.add_trick(f"trick{j}")
        app.save(dog)
        ids.append(dog.id)
        if mode == "snapshot":
            app.take_snapshot(dog.id, version=SNAPSHOT_AT)
    if mode == "events":
        app.snapshots = None  # replay every event
        app.repository.snapshot_store = None
    started = time.perf_counter()
    for dog_id in ids:
        dog = app.repository.get(dog_id)
    elapsed = time.perf_counter() - started
    assert len(dog.tricks) == EVENTS - 1
    app.close()
    return aggregates / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aggregates", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="popo,sqlite_file,sqlite_memory")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    run = 0
    with tempfile.TemporaryDirectory() as tmpdir:
        for backend in args.backends.split(","):
            for mode in ("events", "snapshot"):
                rates = []
                for _ in range(args.repeat):
                    run += 1
                    rates.append(measure(backend, mode, args.aggregates, tmpdir, run))
                results[f"{backend}/{mode}"] = statistics.median(rates)
                print(
                    f"{backend}/{mode}: {results[f'{backend}/{mode}']:,.0f} aggregates/s",
                    file=sys.stderr,
                )
    json.dump(results, sys.stdout, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

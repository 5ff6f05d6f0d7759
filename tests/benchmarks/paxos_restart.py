"""Benchmark acceptance 5 of the Paxos example: a replica restarted after a long history.

A multi-Paxos cluster of three replicas (``MultiThreadedRunner``) on SQLite files (or
PostgreSQL) takes puts from 64 clients over a small store (``--keys`` keys, overwritten)
until the history holds each of ``--histories`` commands. At each, the cluster is stopped
and two times are taken:

- *replica load*: constructing Replica0 from its database, loading its store and ledger
  (from their last snapshots) and reading a key from the store, as a get served from
  applied state does;
- *cluster serves*: starting the runner again on the same databases and calling
  ``Replica0.get`` until it returns (this includes electing a leader again).

Then the cluster runs on, to the next history. The times should not grow with the history.

    python tests/benchmarks/paxos_restart.py --histories 10000,100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE)]

from paxos import REPLICAS, backend_env  # noqa: E402

from eventsourcing.system import MultiThreadedRunner  # noqa: E402
from examples.paxos.domainmodel import Store  # noqa: E402
from examples.paxos.system import Replica0, system  # noqa: E402

RESULTS = HERE / "results" / "paxos_restart.json"


def fill(runner: MultiThreadedRunner, until: int, clients: int, keys: int) -> float:
    """Put from ``clients`` clients until Replica0 has applied ``until`` commands."""
    replicas = [runner.get(cls) for cls in REPLICAS]
    done = threading.Event()
    started = time.perf_counter()

    def client(number: int) -> None:
        replica = replicas[number % len(replicas)]
        n = 0
        while not done.is_set():
            replica.put(f"key{(number * 7 + n) % keys}", f"{number}.{n}")
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    while replicas[0].applied_count() < until:
        time.sleep(0.2)
    done.set()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def replica_load(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Seconds to construct Replica0 and read a key from its store and ledger."""
    started = time.perf_counter()
    replica = Replica0(env=env)
    try:
        store = replica.store()
        replica.ledger()
        store.data.get("key0")
        seconds = time.perf_counter() - started
        events = len(list(replica.repository.event_store.get(Store.create_id(replica.index))))
        snapshot = (
            list(replica.snapshots.get(Store.create_id(replica.index), desc=True, limit=1))
            if replica.snapshots is not None
            else []
        )
        version = snapshot[0].originator_version if snapshot else 0
        facts = {
            "commands": store.commands_applied,
            "keys": len(store.data),
            "store_events": events,
            "store_version": store.version,
            "snapshot_version": version,
            "events_loaded": store.version - version,
            "notifications": replica.recorder.max_notification_id(),
        }
    finally:
        replica.close()
    return seconds, facts


def cluster_serves(env: dict[str, str]) -> tuple[float, MultiThreadedRunner]:
    """Seconds from starting the runner on the databases until Replica0 serves a get."""
    started = time.perf_counter()
    runner = MultiThreadedRunner(system, env=env)
    runner.start()
    runner.get(Replica0).get("key0")
    return time.perf_counter() - started, runner


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write results/paxos_restart.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--histories", default="10000,100000")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="replica loads per history")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(), backend_env(args.backend) as env:
        env = {**env, "PAXOS_MODE": "multi", "PAXOS_TIMEOUT": "120",
               "PAXOS_POLL_INTERVAL": "0.005", "PAXOS_NUDGE_AFTER": "0.25"}  # fmt: skip
        runner = MultiThreadedRunner(system, env=env)
        runner.start()
        for history in (int(h) for h in args.histories.split(",")):
            filled = fill(runner, history, args.clients, args.keys)
            runner.stop()
            loads = []
            for _ in range(args.repeat):
                seconds, facts = replica_load(env)
                loads.append(seconds)
            serves, runner = cluster_serves(env)
            result = {"backend": args.backend, "history": history, "fill_s": filled,
                      "replica_load_ms": statistics.median(loads) * 1000,
                      "replica_load_ms_all": [s * 1000 for s in loads],
                      "cluster_serves_ms": serves * 1000, **facts}  # fmt: skip
            print(json.dumps(result), flush=True)
            results.append(result)
        runner.stop()
    RESULTS.parent.mkdir(exist_ok=True)
    path = RESULTS.with_name(f"paxos_restart_{args.backend}.json")
    path.write_text(json.dumps(results, indent=2))
    from paxos import _redis, _server

    for server in (_server, _redis):
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

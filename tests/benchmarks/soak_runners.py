"""Soak: workers killed with SIGKILL at random moments while a producer saves, with Redis
stopped and started now and then; at the end, every notification was processed once.

    python tests/benchmarks/soak_runners.py [--kills 100] [--events 100000] [--store postgres]

Workers run through the CLI (``python -m runners run``) for Counters and Totals of the test
system model, prompted through Redis Streams; a process manager's part is played here (a
killed worker is started again at once; one that exits is started again). Recovery time
of a kill: from SIGKILL to the new worker holding the lease again. Prints a summary and
writes it as JSON to tests/benchmarks/results/soak-runners.json. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path[:0] = [str(TESTS), str(TESTS / "runtime")]

from runner_helpers import (  # noqa: E402
    ROOT,
    Apps,
    WorkerProcess,
    assert_exactly_once,
    wait_settled,
)
from system_model import Counters, Expected  # noqa: E402

from runners.testing.postgres import resolve_postgres  # noqa: E402
from runners.testing.redis import RedisServer, resolve_redis  # noqa: E402


def main() -> None:
    """Run the soak and print (and save) what it saw."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--redis-outages", type=int, default=3)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-runners-"))
    server = resolve_postgres()
    redis = resolve_redis(["pip", "path"])  # a server of our own, to halt and resume
    try:
        name = f"soak_{os.getpid()}"
        server.create_database(name)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            **server.settings.env(name),
            "PROMPT_TRANSPORT": redis.url,
        }
        try:
            result = soak(args, env, redis, tmp)
        except BaseException:
            # Keep the evidence: the database, its server and the logs stay for a look.
            print(f"kept {server.settings!r} database {name!r} and logs in {tmp}", flush=True)
            redis.stop()
            raise
        server.drop_database(name)
    finally:
        redis.stop()
    server.stop()
    print(json.dumps(result, indent=2))
    out = HERE / "results" / "soak-runners.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


def soak(args: argparse.Namespace, env: dict[str, str], redis: RedisServer, tmp: Path) -> dict:
    full_env = {**os.environ, **env, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    workers = {
        app: WorkerProcess(
            ["run", "system_model:SYSTEM", "--app", app, "--poll-interval", "0.5"],
            full_env,
            tmp / f"{app}.log",
        ).start()
        for app in ("Counters", "Totals")
    }
    for worker in workers.values():
        worker.wait_for("holding the lease")
    out = tmp / "produced.json"
    started = time.monotonic()
    producer = subprocess.Popen(
        [sys.executable, str(TESTS / "runtime" / "producer.py"), str(args.events), str(out)],
        env=full_env,
        stdout=(tmp / "producer.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    rng = random.Random(args.seed)
    # Spread the kills over the producer's expected run; measure each recovery.
    interval = max(0.2, estimate_seconds(args.events) / args.kills)
    outage_every = max(1, args.kills // (args.redis_outages + 1))
    recoveries: list[float] = []
    exits_restarted = 0
    kills = outages = 0
    while producer.poll() is None or kills < args.kills:
        time.sleep(rng.uniform(0.2, 2 * interval))
        app = rng.choice(list(workers))
        worker = workers[app]
        held_before = worker.text().count("holding the lease")
        worker.kill()
        killed = time.monotonic()
        kills += 1
        worker.start()
        if kills % outage_every == 0 and outages < args.redis_outages:
            redis.halt()
            time.sleep(rng.uniform(2, 5))
            redis.resume()
            outages += 1
        for other in workers.values():
            if other.process is not None and other.process.poll() is not None:
                other.start()
                exits_restarted += 1
        try:
            recoveries.append(worker.wait_for("holding the lease", held_before + 1, 60) - killed)
        except AssertionError:
            worker.start()
            exits_restarted += 1
        if kills % 10 == 0:
            print(f"{time.monotonic() - started:.0f}s: {kills} kills, {outages} Redis outages, "
                  f"recovery p50 {statistics.median(recoveries):.2f}s", flush=True)  # fmt: skip
    produced = time.monotonic() - started
    tricks = {UUID(k): v for k, v in json.loads(out.read_text()).items()}
    expected = Expected(list(tricks), tricks, 0)
    assert producer.wait() == 0, (tmp / "producer.log").read_text()
    apps = Apps(env)
    try:
        wait_settled(apps, timeout=600)
        settled = time.monotonic() - started
        recorded = apps.get(Counters).recorder.max_notification_id()
        print(f"counter events: {recorded}, expected {expected.counter_events}", flush=True)
        assert_exactly_once(apps, expected)
    finally:
        apps.close()
    for worker in workers.values():
        worker.terminate()
    producer_log = (tmp / "producer.log").read_text()
    return {
        "events": args.events,
        "kills": kills,
        "redis_outages": outages,
        "workers_restarted_after_exiting": exits_restarted,
        "producer_seconds": round(produced, 1),
        "settled_seconds": round(settled, 1),
        "recovery_seconds": {
            "p50": round(statistics.median(recoveries), 2),
            "p90": round(statistics.quantiles(recoveries, n=10)[-1], 2),
            "max": round(max(recoveries), 2),
        },
        "producer_publish_warnings": producer_log.count("Can't publish prompts"),
        "exactly_once": True,
    }


def estimate_seconds(events: int) -> float:
    """About how long the producer takes (one PostgreSQL commit per event)."""
    return events / 400


if __name__ == "__main__":
    main()

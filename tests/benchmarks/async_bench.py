"""The asyncio API against our own sync API, on PostgreSQL, in one run.

    python tests/benchmarks/async_bench.py [--concurrency 1,16,256] [--duration 3] [--repeat 2]

Workload (the ``concurrent`` workload of run.py, for both APIs): each of ``n`` workers loops
``register_dog`` (a new Dog, one event) then ``add_trick`` (``repository.get`` + ``save``) on
dogs of its own, so there are no version conflicts. ``sync`` runs ``n`` threads sharing one
``Application``; ``async`` runs ``n`` tasks sharing one ``AsyncApplication`` in one event
loop. Both get the same settings (``POSTGRES_POOL_SIZE=10``, ``POSTGRES_MAX_OVERFLOW=10``)
and a fresh database per case; after an untimed warm-up round each, the workers run for
``--duration`` seconds. commands/s = commands completed / elapsed; p50/p99 = time per
command. The two APIs alternate (sync, async, sync, async...) and the best of ``--repeat``
runs of each is kept.

Event-loop stall (async only), two measures:

- wake-up lateness: a task sleeps 1 ms in a loop and notes how late it wakes
  (``late_max_ms``, ``late_p99_ms``). It includes waiting behind the other ready tasks (at
  256 tasks a loop iteration runs many) and the OS descheduling the process on a shared
  machine, so it bounds a stall from above;
- the longest step: in a separate run of the same case, every callback the loop runs (each
  step of each task) is timed, in wall time and in the loop thread's CPU time
  (``step_max_ms``, ``step_cpu_max_ms``, with the callback that took longest). A call that
  blocked the loop (on I/O, a lock, or work) would be one long step; CPU time leaves out
  the process being descheduled by others' work on the machine. The same run times the
  cyclic garbage collector's pauses (``gc.callbacks``): ``gc2_max_ms`` is the longest full
  (generation 2) collection, which walks every tracked object of the process.

The server: ``POSTGRES_*`` from the environment, else a throwaway one from the testing
extra's binaries (runners.testing). Not collected by pytest; never a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.asyncio import AsyncApplication  # noqa: E402
from examples.dogschool.domainmodel import Dog  # noqa: E402
from runners.testing.postgres import PostgresDatabase, resolve_postgres  # noqa: E402

POOL = {"POSTGRES_POOL_SIZE": "10", "POSTGRES_MAX_OVERFLOW": "10"}


class SyncSchool(Application[UUID]):
    name = "DogSchool"

    def command(self, name: str) -> None:
        dog = Dog(name)
        self.save(dog)
        dog = self.repository.get(dog.id)
        dog.add_trick("sit")
        self.save(dog)


class AsyncSchool(AsyncApplication[UUID]):
    name = "DogSchool"

    async def command(self, name: str) -> None:
        dog = Dog(name)
        await self.save(dog)
        dog = await self.repository.get(dog.id)
        dog.add_trick("sit")
        await self.save(dog)


def summarise(latencies: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "commands_per_s": round(len(ordered) / elapsed, 1),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
        "p99_ms": round(1000 * ordered[int(len(ordered) * 0.99)], 2),
        "commands": len(ordered),
    }


def run_sync(env: dict[str, str], n: int, duration: float) -> dict[str, float]:
    school = SyncSchool(env=env)
    latencies: list[float] = []
    lock = threading.Lock()
    start_barrier = threading.Barrier(n + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        school.command(f"warm{i}")
        start_barrier.wait()
        mine = []
        while (t0 := time.perf_counter()) < deadline[0]:
            school.command(f"dog{i}")
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    try:
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(worker, i) for i in range(n)]
            deadline[0] = float("inf")
            start_barrier.wait()
            started = time.perf_counter()
            deadline[0] = started + duration
            for future in futures:
                future.result()
            elapsed = time.perf_counter() - started
    finally:
        school.close()
    return summarise(latencies, elapsed)


class StepTimer:
    """Times every callback the event loop runs (each task step), while installed."""

    def __init__(self, *, freeze: bool = False) -> None:
        self.freeze = freeze
        self.max_wall = self.max_cpu = 0.0
        self.slowest = ""
        self._original = asyncio.events.Handle._run

    def __enter__(self) -> StepTimer:
        original, timer = self._original, self

        def timed_run(handle: asyncio.events.Handle) -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            original(handle)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            timer.max_cpu = max(timer.max_cpu, cpu)
            if wall > timer.max_wall:
                timer.max_wall = wall
                timer.slowest = repr(handle)[:160]

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
        return self

    def __exit__(self, *args: object) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]


async def run_async(
    env: dict[str, str], n: int, duration: float, timer: StepTimer | None = None
) -> dict[str, float]:
    school = AsyncSchool(env=env)
    await school.open()
    if timer is not None and timer.freeze:
        gc.freeze()  # as a service may after start-up: old objects leave the collector's scans
    latencies: list[float] = []
    lags: list[float] = []
    try:
        await asyncio.gather(*(school.command(f"warm{i}") for i in range(n)))
        stop = asyncio.Event()

        async def monitor() -> None:
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                t0 = loop.time()
                await asyncio.sleep(0.001)
                lags.append(loop.time() - t0 - 0.001)

        async def worker(i: int) -> None:
            while (t0 := time.perf_counter()) < deadline:
                await school.command(f"dog{i}")
                latencies.append(time.perf_counter() - t0)

        watcher = asyncio.create_task(monitor())
        started = time.perf_counter()
        deadline = started + duration
        with timer or contextlib.nullcontext():  # the timed window only, not start-up
            await asyncio.gather(*(worker(i) for i in range(n)))
        elapsed = time.perf_counter() - started
        stop.set()
        await watcher
    finally:
        await school.aclose()
    result = summarise(latencies, elapsed)
    lags.sort()
    result["late_max_ms"] = round(1000 * lags[-1], 2)
    result["late_p99_ms"] = round(1000 * lags[int(len(lags) * 0.99)], 2)
    return result


class GCPauses:
    """Times the cyclic garbage collector's pauses (``gc.callbacks``), per generation."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]  # wall time
        self.longest_cpu = [0.0, 0.0, 0.0]  # the collecting thread's CPU time
        self.count = [0, 0, 0]
        self._started = self._started_cpu = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started, self._started_cpu = time.perf_counter(), time.thread_time()
            return
        generation = info["generation"]
        pause = time.perf_counter() - self._started
        cpu = time.thread_time() - self._started_cpu
        self.longest[generation] = max(self.longest[generation], pause)
        self.longest_cpu[generation] = max(self.longest_cpu[generation], cpu)
        self.count[generation] += 1


def measure_steps(env: dict[str, str], n: int, duration: float, freeze: bool) -> dict[str, Any]:
    timer = StepTimer(freeze=freeze)
    pauses = GCPauses()
    gc.callbacks.append(pauses)
    try:
        result = asyncio.run(run_async(env, n, duration, timer))
    finally:
        gc.callbacks.remove(pauses)
        gc.unfreeze()
    suffix = "_frozen" if freeze else ""
    return {
        f"step_max_ms{suffix}": round(1000 * timer.max_wall, 2),
        f"step_cpu_max_ms{suffix}": round(1000 * timer.max_cpu, 2),
        f"slowest_step{suffix}": timer.slowest,
        f"late_max_ms_steps_run{suffix}": result["late_max_ms"],
        # The longest full (generation 2) collection, and how many ran in the timed window.
        f"gc2_max_ms{suffix}": round(1000 * pauses.longest[2], 2),
        f"gc2_cpu_max_ms{suffix}": round(1000 * pauses.longest_cpu[2], 2),
        f"gc2_count{suffix}": pauses.count[2],
        f"gc01_max_ms{suffix}": round(1000 * max(pauses.longest[:2]), 2),
        f"gc01_cpu_max_ms{suffix}": round(1000 * max(pauses.longest_cpu[:2]), 2),
    }


def best_of(
    repeat: int, runs: dict[str, Callable[[], dict[str, float]]]
) -> dict[str, dict[str, float]]:
    """The best run of each API, the APIs alternating (sync, async, sync, async...), so a
    neighbour's load on the shared machine falls on both alike."""
    results: dict[str, list[dict[str, float]]] = {api: [] for api in runs}
    for _ in range(repeat):
        for api, run in runs.items():
            results[api].append(run())
    return {api: max(rs, key=lambda r: r["commands_per_s"]) for api, rs in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,16,256")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "tests/benchmarks/results/async.json")
    args = parser.parse_args(argv)
    server = resolve_postgres()
    rows: list[dict[str, Any]] = []
    try:
        for n in [int(c) for c in args.concurrency.split(",")]:

            def env_of(database: PostgresDatabase) -> dict[str, str]:
                return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env, **POOL}

            def one_run(api: str, n: int = n) -> dict[str, float]:
                with PostgresDatabase.create(server) as database:
                    if api == "sync":
                        return run_sync(env_of(database), n, args.duration)
                    return asyncio.run(run_async(env_of(database), n, args.duration))

            best = best_of(args.repeat, {api: partial(one_run, api) for api in ("sync", "async")})
            for api in ("sync", "async"):
                result: dict[str, Any] = dict(best[api])
                for freeze in (False, True) if api == "async" else ():
                    with PostgresDatabase.create(server) as database:
                        result.update(measure_steps(env_of(database), n, args.duration, freeze))
                rows.append({"api": api, "concurrency": n, **result})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    by = {(r["api"], r["concurrency"]): r for r in rows}
    lines = [
        "| concurrency | sync commands/s | async commands/s | async/sync | sync p50/p99 ms "
        "| async p50/p99 ms | wake-up late max/p99 ms | longest step wall/CPU ms "
        "| longest full gc wall/CPU ms | same, gc.freeze() after start-up: step, full gc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted({r["concurrency"] for r in rows}):
        s, a = by[("sync", n)], by[("async", n)]
        lines.append(
            f"| {n} | {s['commands_per_s']:,} | {a['commands_per_s']:,} | "
            f"{a['commands_per_s'] / s['commands_per_s']:.2f} | {s['p50_ms']}/{s['p99_ms']} | "
            f"{a['p50_ms']}/{a['p99_ms']} | {a['late_max_ms']}/{a['late_p99_ms']} | "
            f"{a['step_max_ms']}/{a['step_cpu_max_ms']} | "
            f"{a['gc2_max_ms']}/{a['gc2_cpu_max_ms']} ({a['gc2_count']}x) | "
            f"{a['step_max_ms_frozen']}/{a['step_cpu_max_ms_frozen']}, "
            f"{a['gc2_max_ms_frozen']}/{a['gc2_cpu_max_ms_frozen']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

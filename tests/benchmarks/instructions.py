"""Instructions per event (callgrind) for esbench's bulk and system workloads, in memory.

Timings on a shared machine are noisy; instruction counts are not. Each workload runs under
``valgrind --tool=callgrind`` at two sizes, and the difference in the process's total
instructions, divided by the difference in events, is the cost of one event (imports and
set-up cancel out). Usage: ``python tests/benchmarks/instructions.py [bulk|system]``.

Workload shapes are esbench's (``../shared/bench/esbench.py``): ``bulk`` saves batches of
100 Dog aggregates with 10 events each to SQLite in memory (the aggregates are made before
and outside the difference); ``system`` runs the leader and ProcessApplication follower under
the SingleThreadedRunner on SQLite in memory, 10 dogs adding one trick each per round.
Hash seed fixed; counts still vary by a few thousand per system event from run to run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ESBENCH_DIR = ROOT.parent / "shared" / "bench"

# (smaller size, larger size, events per unit of size)
SIZES = {"bulk": (1, 3, 1000), "system": (5, 25, 10)}


def instructions(workload: str, size: int) -> int:
    """Total instructions of one run of ``workload`` at ``size``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--run",
                workload,
                str(size),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{result.stderr}")
    return int(match.group(1))


def run(workload: str, size: int) -> None:
    """The measured workload (in the process valgrind runs)."""
    sys.path.insert(0, str(ESBENCH_DIR))
    import esbench  # type: ignore[import-not-found]

    from eventsourcing.system import SingleThreadedRunner, System

    def memory_db(name: str) -> str:
        return f"file:{name}?mode=memory&cache=shared"

    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
    if workload == "bulk":
        cls = esbench.unique_app_class(esbench.DogSchool, "BulkSchool")
        app = cls(env={**env, "SQLITE_DBNAME": memory_db(cls.name)})
        app.save(*esbench._make_dogs(100, 10, 10**6))  # warm-up
        batches = [esbench._make_dogs(100, 10, s * 100) for s in range(SIZES["bulk"][1])]
        for batch in batches[:size]:
            app.save(*batch)
        return
    leader_cls = esbench.unique_app_class(esbench.LeaderBase, "Leader")
    follower_cls = esbench.unique_app_class(esbench.FollowerBase, "Follower")
    for name in (leader_cls.name, follower_cls.name):
        env[f"{name.upper()}_SQLITE_DBNAME"] = memory_db(name)
    runner = SingleThreadedRunner(System(pipes=[[leader_cls, follower_cls]]), env=env)
    runner.start()
    leader, follower = runner.get(leader_cls), runner.get(follower_cls)
    dogs = [esbench.Dog(f"dog{i}") for i in range(10)]
    for dog in dogs:
        leader.save(dog)
    for trick in esbench.TRICKS[:size]:
        for dog in dogs:
            dog.add_trick(trick)
            leader.save(dog)
    counter = follower.repository.get(esbench.Counter.create_id(dogs[0].id))
    assert counter.count == size, counter.count
    runner.stop()


def main() -> None:
    """Print the instructions per event of the workloads named (default: both)."""
    if sys.argv[1:2] == ["--run"]:
        run(sys.argv[2], int(sys.argv[3]))
        return
    for workload in sys.argv[1:] or list(SIZES):
        small, large, per = SIZES[workload]
        delta = instructions(workload, large) - instructions(workload, small)
        print(f"{workload}: {delta // ((large - small) * per):,} instructions per event")


if __name__ == "__main__":
    main()

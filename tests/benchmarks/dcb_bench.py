"""DCB workloads, ours against ``eventsourcing`` 9.5.6, alternated pair by pair.

Every case runs in a fresh process, first with one library and then with the other (the
order swaps from one pair to the next), each on a fresh store; the ratio of a pair is
ours/9.5.6 operations per second, and the report gives the median of the pairs' ratios.

Workloads (``--only``):

* ``enrol``: the decision cycle of one client of the course-enrolment example. A student
  joins a course: read the events of the course's tag and of the student's tag (types
  ``CourseRegistered``, ``StudentRegistered``, ``StudentJoinedCourse``), then append a
  ``StudentJoinedCourse`` tagged with both, on the condition that nothing matching that
  query was appended after the read's head.                     -> enrolments/s
* ``append``: the conditional append alone, after the position of the client's last
  append (no read).                                             -> appends/s
* ``read``: reads by query (one course's tag, three types) of a store of 2,000 events
  over 100 courses and 200 students, about 20 events each.      -> reads/s
* ``save``: the application layer: a new enduring object with two decisions, saved with
  ``repository.save`` (msgpack mapper).                         -> objects/s
* ``update``: ``repository.get`` of an object, one more decision, ``repository.save``.
                                                                -> updates/s

Backends: ``popo``, ``postgres`` (a throwaway server from ``runners.testing.postgres``
unless ``POSTGRES_*`` name one; ``synchronous_commit`` stays on and is checked) and
``sqlite`` (ours only: 9.5.6 has no SQLite DCB recorder; reported as ops/s).

    .venv/bin/python tests/benchmarks/dcb_bench.py                 # all, 5 pairs
    .venv/bin/python tests/benchmarks/dcb_bench.py --only enrol --backends postgres

Writes ``results/dcb.json`` and the section between ``<!-- DCB -->`` and ``<!-- /DCB -->``
of ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS_JSON = HERE / "results" / "dcb.json"
REPORT = HERE / "RESULTS.md"
BEGIN, END = "<!-- DCB -->", "<!-- /DCB -->"
WORKLOADS = ("enrol", "append", "read", "save", "update")
BACKENDS = ("popo", "postgres", "sqlite")
# Operations per measured run, by backend (PostgreSQL commits are durable: about 1 ms each).
SIZES = {"popo": 2000, "sqlite": 1000, "postgres": 1000}
TYPES = ["CourseRegistered", "StudentRegistered", "StudentJoinedCourse"]


# -- the worker: runs one case with whichever eventsourcing this interpreter imports -------


def worker(workload: str, backend: str, size: int) -> dict[str, Any]:
    from eventsourcing.dcb.application import DCBApplication
    from eventsourcing.dcb.msgpack import MessagePackMapper
    from eventsourcing.utils import get_topic

    module = "postgres_tt" if backend == "postgres" else backend
    env = {
        "PERSISTENCE_MODULE": f"eventsourcing.dcb.{module}",
        "MAPPER_TOPIC": get_topic(MessagePackMapper),
    }
    app = type("Enrolment", (DCBApplication,), {})(env)
    try:
        result: dict[str, Any] = {}
        if backend == "postgres":
            result["synchronous_commit"] = _synchronous_commit(app)
        run = CASES[workload]
        run(app, max(10, size // 10), "warm")  # unrecorded warm-up, other tags
        started = time.perf_counter()
        run(app, size, "run")
        result["ops_per_s"] = size / (time.perf_counter() - started)
        return result
    finally:
        app.close()


def _synchronous_commit(app: Any) -> str:
    with app.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute("SHOW synchronous_commit")
        row = curs.fetchone()
    return str(row["synchronous_commit"] if isinstance(row, dict) else row[0])


def _enrol_query(course: str, student: str) -> Any:
    from eventsourcing.dcb.api import DCBQuery, DCBQueryItem

    return DCBQuery(
        items=[DCBQueryItem(types=TYPES, tags=[course]), DCBQueryItem(types=TYPES, tags=[student])]
    )


def _joined(course: str, student: str) -> Any:
    from eventsourcing.dcb.api import DCBEvent

    return DCBEvent(type="StudentJoinedCourse", data=b'{"joined":1}', tags=[course, student])


def case_enrol(app: Any, n: int, prefix: str) -> None:
    from eventsourcing.dcb.api import DCBAppendCondition

    recorder = app.recorder
    for i in range(n):
        course, student = f"{prefix}-course-{i % 10}", f"{prefix}-student-{i}"
        query = _enrol_query(course, student)
        response = recorder.read(query)
        for _ in response:
            pass
        condition = DCBAppendCondition(fail_if_events_match=query, after=response.head)
        recorder.append([_joined(course, student)], condition)


def case_append(app: Any, n: int, prefix: str) -> None:
    from eventsourcing.dcb.api import DCBAppendCondition

    recorder = app.recorder
    last = None
    for i in range(n):
        course, student = f"{prefix}-course-{i % 10}", f"{prefix}-student-{i}"
        condition = DCBAppendCondition(
            fail_if_events_match=_enrol_query(course, student), after=last
        )
        last = recorder.append([_joined(course, student)], condition)


def case_read(app: Any, n: int, prefix: str) -> None:
    from eventsourcing.dcb.api import DCBEvent, DCBQuery, DCBQueryItem

    recorder = app.recorder
    courses = [f"{prefix}-course-{c}" for c in range(100)]
    batch = []
    for i in range(2000):
        course, student = courses[i % 100], f"{prefix}-student-{i % 200}"
        batch.append(DCBEvent(TYPES[i % 3], b'{"x":1}', [course, student]))
        if len(batch) == 100:
            recorder.append(batch)
            batch = []
    for i in range(n):
        query = DCBQuery(items=[DCBQueryItem(types=TYPES, tags=[courses[i % 100]])])
        count = sum(1 for _ in recorder.read(query))
        assert count == 20, count


def _dog_class() -> Any:
    from eventsourcing.dcb.domain import EnduringObject
    from eventsourcing.dcb.msgpack import Decision, InitialDecision
    from eventsourcing.domain import event

    class Dog(EnduringObject[Decision, str]):
        class Registered(InitialDecision):
            dog_id: str
            name: str

        @event(Registered)
        def __init__(self, *, name: str) -> None:
            self.name = name
            self.tricks: list[str] = []

        class TrickAdded(Decision):
            trick: str

        @event(TrickAdded)
        def add_trick(self, trick: str) -> None:
            self.tricks.append(trick)

    return Dog


DOG: Any = None


def dog_class() -> Any:
    global DOG
    if DOG is None:
        DOG = _dog_class()
    return DOG


def case_save(app: Any, n: int, prefix: str) -> None:
    dog = dog_class()
    for i in range(n):
        fido = dog(name=f"{prefix}-{i}")
        fido.add_trick("roll over")
        app.repository.save(fido)


def case_update(app: Any, n: int, prefix: str) -> None:
    dog = dog_class()
    ids = []
    for i in range(100):
        fido = dog(name=f"{prefix}-{i}")
        app.repository.save(fido)
        ids.append(fido.id)
    for i in range(n):
        fido = app.repository.get(ids[i % 100])
        fido.add_trick("sit")
        app.repository.save(fido)


CASES = {
    "enrol": case_enrol,
    "append": case_append,
    "read": case_read,
    "save": case_save,
    "update": case_update,
}


# -- the driver ----------------------------------------------------------------------------


class Postgres:
    """Fresh databases on one server, made on demand."""

    def __init__(self) -> None:
        self.server: Any = None
        self.count = 0

    def database(self) -> tuple[str, dict[str, str]]:
        if self.server is None:
            sys.path.insert(0, str(ROOT))
            from runners.testing.postgres import resolve_postgres

            self.server = resolve_postgres()
        self.count += 1
        name = f"dcb_bench_{os.getpid()}_{self.count}"
        self.server.create_database(name)
        return name, dict(self.server.settings.env(name))

    def drop(self, name: str) -> None:
        self.server.drop_database(name)


def run_case(python: str, workload: str, backend: str, size: int, pg: Postgres, ours: bool) -> Any:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if ours:
        environ["PYTHONPATH"] = str(ROOT)
    dbname = None
    with tempfile.TemporaryDirectory() as folder:
        if backend == "postgres":
            dbname, pg_env = pg.database()
            environ.update(pg_env)
        elif backend == "sqlite":
            environ["SQLITE_DBNAME"] = os.path.join(folder, "dcb.sqlite")
        try:
            command = [python, __file__, "--worker", workload, backend, str(size)]
            # Run from a folder without an ``eventsourcing`` in it, for the anchor's sake.
            result = subprocess.run(
                command, env=environ, capture_output=True, text=True, check=False, cwd=folder
            )
        finally:
            if dbname is not None:
                pg.drop(dbname)
    if result.returncode != 0:
        raise RuntimeError(f"{workload}/{backend} failed with {python}:\n{result.stderr}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "BACKEND", "SIZE"))
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.worker:
        workload, backend, size = args.worker
        print(json.dumps(worker(workload, backend, int(size))))
        return

    sys.path.insert(0, str(HERE.parent))
    from anchor import anchor_python

    anchor, ours = str(anchor_python()), sys.executable
    pg = Postgres()
    started = datetime.datetime.now(datetime.UTC)
    cases: dict[str, Any] = {}
    for backend in args.backends.split(","):
        for workload in args.only.split(","):
            size = max(10, round(SIZES[backend] * args.scale))
            key = f"{workload}/{backend}"
            case: dict[str, Any] = {"size": size, "ours": [], "anchor": [], "ratios": []}
            for pair in range(args.pairs):
                if backend == "sqlite":  # ours only
                    case["ours"].append(run_case(ours, workload, backend, size, pg, True))
                    continue
                order = [(anchor, False), (ours, True)]
                if pair % 2:
                    order.reverse()
                got = {}
                for python, is_ours in order:
                    got[is_ours] = run_case(python, workload, backend, size, pg, is_ours)
                case["ours"].append(got[True])
                case["anchor"].append(got[False])
                case["ratios"].append(got[True]["ops_per_s"] / got[False]["ops_per_s"])
            summarise(case)
            cases[key] = case
            print(f"{key}: {line(case)}", file=sys.stderr)
    finished = datetime.datetime.now(datetime.UTC)
    data = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "pairs": args.pairs,
            "scale": args.scale,
            "loadavg": os.getloadavg()[0],
        },
        "cases": cases,
    }
    print(json.dumps(data, indent=2))
    if not args.no_write:
        RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")
        write_section(report(data))


def summarise(case: dict[str, Any]) -> None:
    case["ours_median"] = statistics.median(r["ops_per_s"] for r in case["ours"])
    if case["anchor"]:
        case["anchor_median"] = statistics.median(r["ops_per_s"] for r in case["anchor"])
        case["ratio_median"] = statistics.median(case["ratios"])
        case["ratio_min"], case["ratio_max"] = min(case["ratios"]), max(case["ratios"])
    settings = {r.get("synchronous_commit") for r in case["ours"] + case["anchor"]} - {None}
    if settings:
        case["synchronous_commit"] = sorted(settings)


def line(case: dict[str, Any]) -> str:
    if "ratio_median" not in case:
        return f"ours {case['ours_median']:.0f}/s"
    return (
        f"ours {case['ours_median']:.0f}/s, 9.5.6 {case['anchor_median']:.0f}/s, "
        f"ratio {case['ratio_median']:.2f} ({case['ratio_min']:.2f}-{case['ratio_max']:.2f})"
    )


def report(data: dict[str, Any]) -> str:
    meta = data["meta"]
    rows = [
        f"Run on {meta['started'][:16].replace('T', ' ')}-{meta['finished'][11:16]} UTC, "
        f"CPython {meta['python']}, 2 cores shared with other sessions (load average "
        f"{meta['loadavg']:.1f} at the end), with `python tests/benchmarks/dcb_bench.py "
        f"--pairs {meta['pairs']}`. Each pair runs one case in a fresh process with each "
        "library on a fresh store, the order swapped from pair to pair; *ratio* is the median "
        "of the pairs' ours/9.5.6 ratios (min-max beside it). PostgreSQL is a throwaway local "
        "server with `synchronous_commit=on` (checked in every run). SQLite: ours only "
        "(9.5.6 has no SQLite DCB recorder). Workloads are described in `dcb_bench.py`; "
        "figures in `results/dcb.json`.",
        "",
        "| workload | backend | ops/run | 9.5.6 ops/s | ours ops/s | ratio ours/9.5.6 | min-max |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, case in data["cases"].items():
        workload, backend = key.split("/")
        if "ratio_median" in case:
            rows.append(
                f"| {workload} | {backend} | {case['size']} | {case['anchor_median']:.0f} | "
                f"{case['ours_median']:.0f} | **{case['ratio_median']:.2f}** | "
                f"{case['ratio_min']:.2f}-{case['ratio_max']:.2f} |"
            )
        else:
            rows.append(
                f"| {workload} | {backend} | {case['size']} | - | {case['ours_median']:.0f} "
                "| - | - |"
            )
    return "\n".join(rows)


def write_section(body: str) -> None:
    """Replace this benchmark's section of RESULTS.md (or add it at the end)."""
    text = REPORT.read_text()
    section = f"{BEGIN}\n## DCB (`dcb_bench.py`)\n\n{body}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    REPORT.write_text(text)


if __name__ == "__main__":
    main()

"""Fractions of the ceiling: each durable workload set against a raw floor measured just before.

The disk of a shared machine changes speed from minute to minute (raw 10-row SQLite commits
on one file ran at 2,700 to 4,800 a second within the same hour), so a floor measured at the
end of a long pass says little about a workload measured minutes before it. Here each round
runs, for every durable workload of ``run.py``'s ``CEILINGS``, esbench's ``raw`` floor and
then the workload, back to back, at esbench's own sizes: each pair gives one fraction, and
the rounds give its median and spread. Run with any interpreter that imports an
``eventsourcing`` (``run.py --ceilings`` runs it with the anchor's and with ours):

    python tests/benchmarks/ceiling.py --backends sqlite_file,postgres --rounds 3 --json out.json

PostgreSQL needs the POSTGRES_* variables, as for ``run.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import CEILINGS, DEFAULT_ESBENCH  # noqa: E402

# The raw floor at a third of esbench's size or less: long enough to be steady, short
# enough to sit right beside its workload.
RAW_ROWS = {
    "sqlite_file": {"rows_batch10": 20_000, "rows_batch1000": 100_000},
    "postgres": {"rows_batch10": 10_000, "rows_batch1000": 100_000},
}


def esbench_module(path: Path) -> Any:
    """Import the shared yardstick from ``path``."""
    sys.path.insert(0, str(path.parent))
    import esbench  # type: ignore[import-not-found]

    return esbench


def esbench_context(esbench: Any, backends: list[str]) -> Any:
    """esbench's context for calling its workloads directly, its PostgreSQL checked if used."""
    ctx = esbench.Context(argparse.Namespace(tmpdir=tempfile.gettempdir(), system_timeout=300.0))
    if "postgres" in backends:
        ctx.pg_check()  # says which POSTGRES_* setting is missing, not a failed connection
    return ctx


def workload_call(esbench: Any, case: str) -> tuple[Any, str, dict[str, Any]]:
    """esbench's function, backend and parameters for a case such as ``system/postgres/multi``."""
    workload, backend, *variant = case.split("/")
    spec = esbench.WORKLOADS[workload]
    params = {
        name: value.get(backend) if isinstance(value, dict) else value
        for name, value in spec["params"].items()
    }
    if workload == "system":
        params["runner"] = variant[0]
    if workload == "concurrent":
        params["threads"] = int(variant[0].removeprefix("t"))
    return spec["func"], backend, params


def run_rounds(args: argparse.Namespace) -> dict[str, Any]:
    """Raw floor then workload, for each durable case of the backends, ``args.rounds`` times."""
    esbench = esbench_module(args.esbench)
    backends = args.backends.split(",")
    ctx = esbench_context(esbench, backends)
    cases = [c for c in CEILINGS if c[0].split("/")[1] in backends]
    fractions: dict[str, list[float]] = {case: [] for case, *_ in cases}
    ceilings: dict[str, list[float]] = {case: [] for case, *_ in cases}
    try:
        for _ in range(args.rounds):
            for case, metric, raw_case, raw_metric, per_raw, _how, _target in cases:
                backend = raw_case.split("/")[1]
                floor = esbench.wl_raw(ctx, backend, **RAW_ROWS[backend])[raw_metric]
                func, backend, params = workload_call(esbench, case)
                value = func(ctx, backend, **params)[metric]
                fractions[case].append(value / (floor * per_raw))
                ceilings[case].append(floor * per_raw)
                print(f"{case}: {fractions[case][-1]:.0%}", file=sys.stderr)
    finally:
        ctx.close()
    return {"fractions": fractions, "ceilings": ceilings, "rounds": args.rounds}


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and write the fractions as JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite_file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--esbench", type=Path, default=DEFAULT_ESBENCH)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    args.json.write_text(json.dumps(run_rounds(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

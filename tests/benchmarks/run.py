"""Benchmark ours against ``eventsourcing`` 9.5.6 in one sitting; write RESULTS.md.

Runs the shared yardstick ``esbench.py`` (``../shared/bench/``) and ``snapshots.py`` (this
folder) first with the anchor's interpreter and then with ours, on the same machine, and
writes ``RESULTS.md`` beside this file: the ratios first, then both full tables. The
analysis section of an existing RESULTS.md (between the ANALYSIS markers) is kept.

    python tests/benchmarks/run.py                        # popo and sqlite, repeat 3
    python tests/benchmarks/run.py --backends popo,sqlite,postgres --repeat 5
    python tests/benchmarks/run.py --only domain,command  # a subset of workloads

PostgreSQL needs the POSTGRES_* variables of a server where the user may create databases
(``eval "$(../shared/bench/pg_local.sh start)"`` starts a throwaway one).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
REPORT = HERE / "RESULTS.md"
DEFAULT_ESBENCH = ROOT.parent / "shared" / "bench" / "esbench.py"
WORKLOADS = "domain,command,bulk,read,log,system,concurrent,latency,raw"
BEGIN, END = "<!-- ANALYSIS -->", "<!-- /ANALYSIS -->"
PAXOS_BEGIN, PAXOS_END = "<!-- PAXOS -->", "<!-- /PAXOS -->"  # written by paxos.py

sys.path.insert(0, str(HERE.parent))
from anchor import anchor_python  # noqa: E402


def run_esbench(python: Path, label: str, args: argparse.Namespace) -> Path:
    out = RESULTS / f"{label}.json"
    command = [
        str(python),
        str(args.esbench),
        "--only",
        args.only,
        "--backends",
        args.backends,
        "--repeat",
        str(args.repeat),
        "--label",
        label,
        "--json",
        str(out),
    ]
    if args.scale != 1.0:
        command += ["--scale", str(args.scale)]
    print(f"== esbench with {label}", file=sys.stderr)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=RESULTS)
    return out


def run_snapshots(python: Path, label: str, args: argparse.Namespace) -> dict[str, float]:
    backends = ",".join(b for b in expand(args.backends) if b != "postgres")
    print(f"== snapshots with {label}", file=sys.stderr)
    result = subprocess.run(
        [
            str(python),
            str(HERE / "snapshots.py"),
            "--backends",
            backends,
            "--repeat",
            str(args.repeat),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=RESULTS,
    )
    data: dict[str, float] = json.loads(result.stdout)
    (RESULTS / f"{label}-snapshots.json").write_text(json.dumps(data, indent=2))
    return data


def expand(backends: str) -> list[str]:
    names = []
    for name in backends.split(","):
        names += ["sqlite_file", "sqlite_memory"] if name == "sqlite" else [name]
    return names


def esbench_md(esbench: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(esbench), *args], check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def snapshots_table(anchor: dict[str, float], ours: dict[str, float]) -> str:
    rows = [
        "| backend/mode | anchor aggregates/s | ours aggregates/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for key, base in anchor.items():
        rows.append(f"| {key} | {base:,.0f} | {ours[key]:,.0f} | {ours[key] / base:.2f} |")
    return "\n".join(rows)


def kept_analysis(begin: str = BEGIN, end: str = END) -> str:
    if REPORT.exists():
        match = re.search(f"{begin}(.*?){end}", REPORT.read_text(), flags=re.DOTALL)
        if match:
            return match.group(1).strip()
    return "(to be written)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="popo,sqlite")
    parser.add_argument("--only", default=WORKLOADS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--esbench", type=Path, default=Path(os.environ.get("ESBENCH", DEFAULT_ESBENCH))
    )
    args = parser.parse_args(argv)
    if not args.esbench.exists():
        parser.error(f"esbench.py not found at {args.esbench}: pass --esbench or set ESBENCH")
    RESULTS.mkdir(exist_ok=True)
    anchor = anchor_python()
    anchor_json = run_esbench(anchor, "anchor", args)
    ours_json = run_esbench(Path(sys.executable), "ours", args)
    anchor_snap = run_snapshots(anchor, "anchor", args)
    ours_snap = run_snapshots(Path(sys.executable), "ours", args)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = f"""# Benchmarks: ours against eventsourcing 9.5.6

Run on {when}, {platform.python_implementation()} {platform.python_version()},
{os.cpu_count()} cores, with `python tests/benchmarks/run.py --backends {args.backends}
--only {args.only} --repeat {args.repeat}`: the anchor first, then ours, in one sitting.
Ratios are ours / anchor (medians; above 1 is faster). Raw JSON is in `results/`.

## Analysis

{BEGIN}
{kept_analysis()}
{END}

## Paxos example (`paxos.py`)

{PAXOS_BEGIN}
{kept_analysis(PAXOS_BEGIN, PAXOS_END)}
{PAXOS_END}

## Ratios (esbench workloads)

{esbench_md(args.esbench, "--compare", str(anchor_json), str(ours_json))}

## Reads with and without a snapshot (`snapshots.py`)

{snapshots_table(anchor_snap, ours_snap)}

## Ours

{esbench_md(args.esbench, "--render-md", str(ours_json))}

## Anchor: eventsourcing 9.5.6

{esbench_md(args.esbench, "--render-md", str(anchor_json))}
"""
    REPORT.write_text(report)
    print(f"wrote {REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
REPORT = HERE / "RESULTS.md"
DEFAULT_ESBENCH = ROOT.parent / "shared" / "bench" / "esbench.py"
WORKLOADS = "domain,command,bulk,read,log,system,concurrent,latency,raw"
BEGIN, END = "<!-- ANALYSIS -->", "<!-- /ANALYSIS -->"
PAXOS_BEGIN, PAXOS_END = "<!-- PAXOS -->", "<!-- /PAXOS -->"  # written by paxos.py
# Written from runners_bench.py and soak_runners.py runs.
RUNNERS_BEGIN, RUNNERS_END = "<!-- RUNNERS -->", "<!-- /RUNNERS -->"

sys.path.insert(0, str(HERE.parent))
from anchor import anchor_python  # noqa: E402


def installed_python() -> Path:
    """An interpreter that imports ours as a wheel install would: from a plain path entry.

    The development environment installs the package in editable mode, whose import hook
    (a ``.pth`` file run at every start) loads pathlib, re and urllib: about 2 MB of peak
    RSS and 20 ms that no user's install has. This environment puts the repository and the
    development environment's site-packages on the path as plain entries instead, so no
    ``.pth`` file of the development environment runs.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    home = cache / "eventsourcing-tests" / f"ours-installed-py{sys.version_info[1]}"
    python = home / "bin" / "python"
    if not python.exists():
        venv.create(home, with_pip=False, clear=True, symlinks=True)
    site_packages = sysconfig.get_path("purelib")
    target = sysconfig.get_path("purelib", vars={"base": str(home), "platbase": str(home)})
    Path(target, "eventsourcing-bench.pth").write_text(f"{ROOT}\n{site_packages}\n")
    # Byte-compiled, as pip does on install: a module compiled at import raises the peak
    # RSS of every process by the compiler's memory (about 3 MB for this package).
    packages = [str(ROOT / name) for name in ("eventsourcing", "runners")]
    subprocess.run([str(python), "-m", "compileall", "-q", *packages], check=True)
    return python


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
    if args.isolate:
        command.append("--isolate")
    print(f"== esbench with {label}", file=sys.stderr)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=RESULTS)
    return out


# Peak RSS is measured in a run of its own: a fresh process per case (esbench --isolate),
# at a fifth of the size, so that the speed run is not slowed by starting processes.
MEMORY_WORKLOADS = "domain,command,bulk,read,log,system"
MEMORY_SCALE = 0.2
# What a process holds once it has imported the package, before any workload.
IMPORTED = (
    "import eventsourcing.application, eventsourcing.system; "
    "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
)


def run_memory(python: Path, label: str, args: argparse.Namespace) -> Path:
    """Peak RSS of each case, each repetition in a fresh process; return the JSON's path."""
    memory_args = {"only": MEMORY_WORKLOADS, "repeat": 1, "scale": MEMORY_SCALE, "isolate": True}
    out = run_esbench(python, f"{label}-rss", argparse.Namespace(**{**vars(args), **memory_args}))
    imported = subprocess.run(
        [str(python), "-c", IMPORTED], check=True, capture_output=True, text=True, cwd=RESULTS
    )
    result = json.loads(out.read_text())
    result["meta"]["imported_rss_mb"] = int(imported.stdout) / 1024
    out.write_text(json.dumps(result, indent=2))
    return out


def memory_table(anchor: dict[str, Any], ours: dict[str, Any]) -> str:
    """Each case's peak RSS, anchor and ours, and what a process holds once imported."""
    rows = ["| case | anchor peak MB | ours peak MB | ours - anchor |", "|---|---:|---:|---:|"]
    for case in ours["cases"]:
        base, new = median(anchor, case, "peak_rss_mb"), median(ours, case, "peak_rss_mb")
        if base is not None and new is not None:
            rows.append(f"| {case} | {base:.1f} | {new:.1f} | {new - base:+.1f} |")
    base, new = anchor["meta"].get("imported_rss_mb"), ours["meta"].get("imported_rss_mb")
    if base is not None and new is not None:
        rows.append(f"| imported, no workload | {base:.1f} | {new:.1f} | {new - base:+.1f} |")
    return "\n".join(rows)


def run_ceilings(python: Path, label: str, args: argparse.Namespace) -> Path:
    """``ceiling.py``'s paired rounds with ``python``; return the JSON's path."""
    out = RESULTS / f"{label}-ceilings.json"
    backends = [b for b in expand(args.backends) if b in ("sqlite_file", "postgres")]
    print(f"== paired ceilings with {label}", file=sys.stderr)
    command = [str(python), str(HERE / "ceiling.py"), "--backends", ",".join(backends)]
    command += ["--rounds", str(args.repeat), "--esbench", str(args.esbench), "--json", str(out)]
    subprocess.run(command, check=True, cwd=RESULTS)  # its progress and errors on stderr
    return out


def how_paired(args: argparse.Namespace) -> str:
    """How the table of fractions was made, for the report."""
    if paired_ceilings(args) is None:
        return "Each run is set against the raw floors of its own esbench pass."
    return (
        "Each fraction comes from `ceiling.py`: every round runs the raw floor and then the "
        "workload back to back, and the table gives the median of the rounds and their "
        "spread (ours), each run set against its own floors."
    )


def paired_ceilings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``ceiling.py``'s results for the anchor and ours, if asked for and there."""
    paths = [RESULTS / f"{label}-ceilings.json" for label in ("anchor", "ours")]
    if not args.ceilings or not all(path.exists() for path in paths):
        return None
    anchor, ours = (json.loads(path.read_text()) for path in paths)
    return anchor, ours


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
            "--aggregates",
            str(max(1, round(1500 * args.scale))),
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
    return without_machine_paths(result.stdout.strip(), esbench)


def without_machine_paths(text: str, esbench: Path) -> str:
    """``text`` with this machine's paths written relative to the repository."""
    for path, name in (
        (esbench.resolve().parent.parent, "../shared"),
        (ROOT, "."),
        (Path.home(), "~"),  # the anchor's virtual environment is cached there
    ):
        text = text.replace(f"{path}/", f"{name}/").replace(str(path), name)
    return text


# How close each durable workload comes to what the database gives a plain sqlite3/psycopg
# loop in the same run (esbench's `raw` workload): (case, metric, raw case, raw metric,
# library units per raw unit, how the ceiling is derived, target).
COMMITS = "executemany_batch10_rows_per_s"  # rows/s in 10-row transactions: / 10 = commits/s
CEILINGS = [
    (
        "command/sqlite_file",
        "commands_per_s",
        "raw/sqlite_file",
        COMMITS,
        1 / 10,
        "raw commits/s (one commit per command)",
        0.90,
    ),
    (
        "system/sqlite_file/single",
        "processed_per_s",
        "raw/sqlite_file",
        COMMITS,
        1 / 20,
        "raw commits/s / 2 (the leader's commit, then the follower's)",
        0.90,
    ),
    (
        "system/sqlite_file/multi",
        "processed_per_s",
        "raw/sqlite_file",
        COMMITS,
        1 / 10,
        "raw commits/s (one per leader save; the follower batches)",
        0.90,
    ),
    (
        "concurrent/sqlite_file/t1",
        "commands_per_s",
        "raw/sqlite_file",
        COMMITS,
        1 / 10,
        "raw commits/s (one commit per command)",
        None,
    ),
    (
        "bulk/sqlite_file",
        "events_per_s",
        "raw/sqlite_file",
        "executemany_batch1000_rows_per_s",
        1,
        "raw rows/s, 1000-row executemany per transaction",
        0.75,
    ),
    (
        "command/postgres",
        "commands_per_s",
        "raw/postgres",
        COMMITS,
        1 / 10,
        "raw commits/s (one commit per command)",
        None,
    ),
    (
        "system/postgres/single",
        "processed_per_s",
        "raw/postgres",
        COMMITS,
        1 / 20,
        "raw commits/s / 2 (the leader's commit, then the follower's)",
        0.85,
    ),
    (
        "system/postgres/multi",
        "processed_per_s",
        "raw/postgres",
        COMMITS,
        1 / 10,
        "raw commits/s (one per leader save; the follower batches)",
        0.85,
    ),
    (
        "concurrent/postgres/t1",
        "commands_per_s",
        "raw/postgres",
        COMMITS,
        1 / 10,
        "raw commits/s (one commit per command)",
        None,
    ),
    (
        "bulk/postgres",
        "events_per_s",
        "raw/postgres",
        "copy_batch1000_rows_per_s",
        1,
        "raw rows/s, 1000-row COPY (text) per transaction",
        0.60,
    ),
]
# Not flush-bound, so measured against the anchor instead: (case, metric, target ratio).
AGAINST_ANCHOR = [("bulk/sqlite_memory", "events_per_s", 2.5)]


def median(result: dict[str, Any], case: str, metric: str) -> float | None:
    """The median of ``metric`` in ``case`` of an esbench JSON result, if it was measured."""
    found = result["cases"].get(case, {}).get("metrics", {}).get(metric)
    return None if found is None else float(found["median"])


def ceiling_table(
    anchor: dict[str, Any],
    ours: dict[str, Any],
    paired: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> str:
    """Each durable workload as a fraction of its ceiling, each run against its own raw.

    With ``paired`` (``ceiling.py``'s results, anchor and ours), each fraction is the median
    of the rounds' fractions, each set against the raw floor measured just before it;
    otherwise the esbench medians of the workload and of the raw floor are set together.
    """
    rows = [
        "| workload | ceiling | ceiling (ours' run) | anchor | ours | ours, spread | target "
        "| met |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]

    def fraction(
        result: dict[str, Any], case: str, metric: str, raw: str, raw_metric: str, per_raw: float
    ) -> float | None:
        value, floor = median(result, case, metric), median(result, raw, raw_metric)
        return None if value is None or not floor else value / (floor * per_raw)

    for case, metric, raw, raw_metric, per_raw, how, target in CEILINGS:
        if paired is not None:
            if case not in paired[1]["fractions"]:
                continue
            ours_fractions = paired[1]["fractions"][case]
            ours_fraction = statistics.median(ours_fractions)
            anchor_fraction = statistics.median(paired[0]["fractions"][case])
            ceiling = statistics.median(paired[1]["ceilings"][case])
            spread = f"{min(ours_fractions):.0%}-{max(ours_fractions):.0%}"
        else:
            found = fraction(ours, case, metric, raw, raw_metric, per_raw)
            if found is None:
                continue
            ours_fraction, spread = found, "-"
            anchor_fraction = fraction(anchor, case, metric, raw, raw_metric, per_raw)
            ceiling = (median(ours, raw, raw_metric) or 0) * per_raw
        rows.append(
            f"| {case} {metric} | {how} | {ceiling:,.0f} | {percent(anchor_fraction)} "
            f"| {percent(ours_fraction)} | {spread} | {percent(target)} "
            f"| {met(ours_fraction, target)} |"
        )
    for case, metric, target in AGAINST_ANCHOR:
        base, new = median(anchor, case, metric), median(ours, case, metric)
        if base and new:
            rows.append(
                f"| {case} {metric} | the anchor's rate (not flush-bound) | {base:,.0f} | 1.00x "
                f"| {new / base:.2f}x | - | {target:.1f}x | {met(new / base, target)} |"
            )
    return "\n".join(rows)


def percent(fraction: float | None) -> str:
    """``fraction`` as a whole percentage ("-" for none)."""
    return "-" if fraction is None else f"{fraction:.0%}"


def met(value: float, target: float | None) -> str:
    """Whether ``value`` reaches ``target`` ("-" when there is no target)."""
    return "-" if target is None else ("yes" if value >= target else "no")


def memory_section(args: argparse.Namespace) -> str:
    """The peak RSS table, if this run (or, with --report-only, an earlier one) measured it."""
    anchor_json, ours_json = RESULTS / "anchor-rss.json", RESULTS / "ours-rss.json"
    if not args.memory or not anchor_json.exists() or not ours_json.exists():
        return ""
    anchor, ours = json.loads(anchor_json.read_text()), json.loads(ours_json.read_text())
    return f"""## Peak RSS

Measured after the speed runs, anchor then ours: `esbench.py --only {MEMORY_WORKLOADS}
--scale {MEMORY_SCALE} --repeat 1 --isolate`, each case in a fresh process (its peak includes
the interpreter, the imports, the warm-up and the measured run). The last row is a process
that has only imported `eventsourcing.application` and `eventsourcing.system`.

{memory_table(anchor, ours)}

"""


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
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write RESULTS.md from the JSON files already in results/, running nothing "
        "(give the options of the run that made them, for the report's header)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="run each repetition in a fresh process and report its peak RSS (esbench --isolate)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help=f"also measure peak RSS: {MEMORY_WORKLOADS} at --scale {MEMORY_SCALE}, each case "
        "in a fresh process (esbench --isolate), after the speed runs",
    )
    parser.add_argument(
        "--ceilings",
        action="store_true",
        help="set each durable workload against a raw floor measured just before it "
        "(ceiling.py, --repeat rounds), after the speed runs, for the table of fractions",
    )
    args = parser.parse_args(argv)
    if not args.esbench.exists():
        parser.error(f"esbench.py not found at {args.esbench}: pass --esbench or set ESBENCH")
    RESULTS.mkdir(exist_ok=True)
    if args.report_only:
        anchor_json, ours_json = RESULTS / "anchor.json", RESULTS / "ours.json"
        anchor_snap = json.loads((RESULTS / "anchor-snapshots.json").read_text())
        ours_snap = json.loads((RESULTS / "ours-snapshots.json").read_text())
    else:
        anchor = anchor_python()
        anchor_json = run_esbench(anchor, "anchor", args)
        ours = installed_python()
        ours_json = run_esbench(ours, "ours", args)
        anchor_snap = run_snapshots(anchor, "anchor", args)
        ours_snap = run_snapshots(ours, "ours", args)
        if args.ceilings:
            run_ceilings(anchor, "anchor", args)
            run_ceilings(ours, "ours", args)
        if args.memory:
            run_memory(anchor, "anchor", args)
            run_memory(ours, "ours", args)
    anchor_result = json.loads(anchor_json.read_text())
    ours_result = json.loads(ours_json.read_text())
    meta = ours_result["meta"]
    when = meta["date_utc"][:16].replace("T", " ") + " UTC"
    scale = f" --scale {args.scale}" if args.scale != 1.0 else ""
    flags = " --isolate" * args.isolate + " --memory" * args.memory + " --ceilings" * args.ceilings
    report = f"""# Benchmarks: ours against eventsourcing 9.5.6

Run on {when}, {meta["python_implementation"]} {meta["python"]},
{meta["cpu_count"]} cores, with `python tests/benchmarks/run.py --backends {args.backends}
--only {args.only} --repeat {args.repeat}{scale}{flags}`: the anchor
first, then ours, in one sitting.
Ratios are ours / anchor (medians; above 1 is faster). Raw JSON is in `results/`.

## Fractions of the ceiling

What each durable workload reaches of what its commits and rows allow, measured in the same
sitting by esbench's `raw` workload (a plain `sqlite3` / psycopg loop writing rows like the
stored events, with the same durability settings). {how_paired(args)} A raw commit here is
a 10-row transaction, a little dearer than one row, so the commit ceilings are slightly low
(in our favour).

{ceiling_table(anchor_result, ours_result, paired_ceilings(args))}

{memory_section(args)}## Analysis

{BEGIN}
{kept_analysis()}
{END}

## Paxos example (`paxos.py`)

{PAXOS_BEGIN}
{kept_analysis(PAXOS_BEGIN, PAXOS_END)}
{PAXOS_END}

{RUNNERS_BEGIN}
{kept_analysis(RUNNERS_BEGIN, RUNNERS_END)}
{RUNNERS_END}

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

"""``eventsourcing-runner`` (also ``python -m runners``): run workers, show their progress.

Every option can also be set by an environment variable (``EVENTSOURCING_RUNNER_<OPTION>``,
listed in ``--help``); applications read their own settings (``PERSISTENCE_MODULE``,
``POSTGRES_*``, ``PROMPT_TRANSPORT``...) from the environment as usual.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.asyncio import AsyncSystem
from eventsourcing.deadletters import OPEN_STATUSES, FollowerStateRecorder
from eventsourcing.persistence import PersistenceError
from eventsourcing.system import System
from eventsourcing.utils import strtobool
from runners.commands import COMMANDS, EXAMPLES, add_commands, print_table
from runners.errors import (
    ConfigurationError,
    PolicyError,
    RefusedError,
    SystemTopicError,
    TransportConnectionError,
)
from runners.exit_codes import (
    EXIT_ERROR,
    EXIT_FORCED,
    EXIT_OK,
    EXIT_PROCESSING_ERROR,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from runners.lag import follower_lag
from runners.metrics import UNHEALTHY_AFTER, serve_metrics
from runners.multiprocess import MultiProcessRunner
from runners.table import CLI_RUNNERS, RUNNERS
from runners.threads import WorkerThreads
from runners.worker import POLL_INTERVAL, check_follower_name, handle_stop_signals

__all__ = [
    "EXIT_ERROR",
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_PROCESSING_ERROR",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "load_system",
    "main",
    "progress_bars",
    "status_rows",
]

logger = logging.getLogger("runners.cli")

ENV_PREFIX = "EVENTSOURCING_RUNNER_"

EPILOG = f"""\
examples:
  # one worker for one application (start a second one anywhere: it stands by)
  eventsourcing-runner run myproject.system:system --app Counters
  # several applications in one process, one thread each
  eventsourcing-runner run myproject.system:system --app Counters --app Totals
  # the whole system in one command, one OS process per application
  eventsourcing-runner run myproject.system:system --all --runner processes
  # how far behind each follower is (as JSON, or refreshed every second)
  eventsourcing-runner status myproject.system:system
  eventsourcing-runner status myproject.system:system --json
  eventsourcing-runner status myproject.system:system --watch
{EXAMPLES}
SYSTEM is a topic 'module:attribute' naming a System, or a function returning one; the
current folder is importable. Applications take their settings from the environment,
prefixed by their name to single one out (COUNTERS_POSTGRES_DBNAME), for example:
  PERSISTENCE_MODULE=eventsourcing.postgres POSTGRES_HOST=... POSTGRES_DBNAME=...
  PROMPT_TRANSPORT=redis://localhost:6379/0   (or kombu+<broker url>, postgres; unset: poll)

environment variables: every option has one, EVENTSOURCING_RUNNER_ and the option in
capitals (EVENTSOURCING_RUNNER_SYSTEM, _APP as a comma-separated list, _ALL, _RUNNER,
_POLL_INTERVAL, _NO_LEASE, _METRICS_PORT, _METRICS_HOST, _UNHEALTHY_AFTER, _JSON, _WATCH,
_INTERVAL, _LOG_LEVEL, _TRACEBACK).

health and metrics (--metrics-port N, needs pip install 'eventsourcing[metrics]'):
  GET /healthz  200 while the worker runs (holding its lease or standing by); 503 once its
                database has failed for --unhealthy-after seconds: a liveness probe
  GET /readyz   200 once connected and while the database answers and the follower is
                not paused: a readiness probe
  GET /metrics  Prometheus metrics: notifications processed, events recorded, batch
                durations, tracked and leader positions, lag, last batch time, lease held,
                policy retries, notifications parked and skipped, retries resolved, paused
  with --runner processes, the i-th application's process serves on N + i

exit codes:
  0  stopped cleanly (SIGTERM/SIGINT finish the batch in hand first)
  1  an unexpected error (traceback logged)
  2  bad input: the message names the problem and the fix
  3  a policy (or decoding) error stopped a worker, with FOLLOWER_ERRORS=stop; nothing of
     that batch was recorded (by default a worker retries, then parks it: dead-letters)
  4  a database could not be reached at start-up (a broker that is down is no error: the
     worker polls the leaders' logs, and listens again once the broker is back)
  5  a second SIGTERM/SIGINT: exited at once, the batch in hand rolled back
  6  refused: the operation is unsafe now (say, a reset while a worker runs); nothing
     was changed, and the message says what to do

what a worker does when a policy raises (its environment, application-prefixed or not):
  FOLLOWER_ERRORS=park|retry|skip|stop   after the retries: park the notification as a
      dead letter, with every later one of its aggregate (default); retry for ever; record
      it and go on; or stop the worker (exit 3)
  FOLLOWER_RETRIES=3  FOLLOWER_RETRY_DELAY=0.5  FOLLOWER_RETRY_MAX_DELAY=30   (seconds,
      doubling from the delay up to the maximum)
"""


class _UsageError(Exception):
    """Bad command-line input, reported as one line with EXIT_USAGE."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _UsageError(f"{message} (see --help)")


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_flag(name: str) -> bool:
    """Whether the variable of option ``name`` holds a truth value (unset or not one: no)."""
    try:
        return strtobool(str(_env(name, "")).strip())
    except ValueError:
        return False


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with defaults from ``EVENTSOURCING_RUNNER_*`` variables."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging level (default INFO)",
    )
    _flag(common, "--traceback", "show the traceback of an error, not just its one-line message")
    parser = _Parser(
        prog="eventsourcing-runner",
        description="Run the applications of an event-sourced System as workers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = ",".join(["run", "status", *COMMANDS])
    commands = parser.add_subparsers(dest="command", metavar=f"{{{names}}}", parser_class=_Parser)
    run = _command(commands, "run", "run workers for applications of SYSTEM", common)
    apps = _env("APP")
    run.add_argument(
        "--app",
        dest="apps",
        action="append",
        metavar="NAME",
        help="an application to process (repeat for several)",
    )
    run.set_defaults(env_apps=[a.strip() for a in apps.split(",") if a.strip()] if apps else [])
    _flag(run, "--all", "every follower of SYSTEM")
    run.add_argument(
        "--runner",
        choices=list(CLI_RUNNERS),
        default=_env("RUNNER", "threads"),
        help="single: one loop for all; threads: a thread each (default); processes: a "
        "process each",
    )
    _seconds(
        run, "--poll-interval", POLL_INTERVAL, "read the leaders' logs this often without a prompt"
    )
    _flag(run, "--no-lease", "don't take the lease (only if no other worker can run it)")
    run.add_argument(
        "--metrics-port",
        type=int,
        default=_env("METRICS_PORT"),
        metavar="N",
        help="serve /healthz, /readyz and /metrics on port N (the metrics extra)",
    )
    run.add_argument(
        "--metrics-host",
        default=_env("METRICS_HOST", "127.0.0.1"),
        metavar="HOST",
        help="address to serve them on (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    _seconds(
        run,
        "--unhealthy-after",
        UNHEALTHY_AFTER,
        "/healthz fails after this long without a database",
    )
    status = _command(commands, "status", "show how far behind each follower is", common)
    _flag(status, "--json", "print JSON (one document per refresh)")
    _flag(status, "--watch", "refresh until interrupted")
    _seconds(status, "--interval", 1, "seconds between refreshes with --watch")
    add_commands(lambda name, description: _command(commands, name, description, common))
    return parser


def _command(
    commands: Any, name: str, description: str, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, with the common options and the SYSTEM argument."""
    command: argparse.ArgumentParser = commands.add_parser(
        name,
        parents=[common],
        help=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("system", nargs="?", default=_env("SYSTEM"), metavar="SYSTEM")
    return command


def _flag(parser: argparse.ArgumentParser, option: str, description: str) -> None:
    """An on/off option, on by default where its environment variable says yes."""
    name = option.removeprefix("--").replace("-", "_").upper()
    parser.add_argument(option, action="store_true", default=_env_flag(name), help=description)


def _seconds(
    parser: argparse.ArgumentParser, option: str, default: float, description: str
) -> None:
    """A positive number of seconds, with its default from the environment."""
    name = option.removeprefix("--").replace("-", "_").upper()
    parser.add_argument(
        option,
        type=_positive,
        default=_env(name, str(default)),
        metavar="SECONDS",
        help=f"{description} (default {default:g})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    show_traceback = "--traceback" in (argv if argv is not None else sys.argv) or _env_flag(
        "TRACEBACK"
    )
    try:
        args = build_parser().parse_args(argv)
        show_traceback = args.traceback
        logging.basicConfig(
            level=args.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if args.command is None:
            raise _UsageError(
                f"say which command: run, status, or one of {', '.join(COMMANDS)} (see --help)"
            )
        if not args.system:
            raise _UsageError(
                "SYSTEM is missing: give a topic such as myproject.system:system, or set "
                f"{ENV_PREFIX}SYSTEM"
            )
        system = load_system(args.system)
        if isinstance(system, AsyncSystem) and args.command != "run":
            raise _UsageError(
                f"{args.command} works on a System of sync applications, and {args.system!r} "
                "is an AsyncSystem: name a System of sync classes with the same names (they "
                "read the same tables), or see `run` for async followers"
            )
        command: Callable[[argparse.Namespace, System], int] = {
            "run": _run,
            "status": _status,
            **COMMANDS,
        }[args.command]
        return command(args, system)
    except (_UsageError, ConfigurationError, ValueError) as error:
        return _fail(error, EXIT_USAGE, show_traceback)
    except (PersistenceError, TransportConnectionError) as error:
        return _fail(error, EXIT_UNREACHABLE, show_traceback)
    except PolicyError as error:
        return _fail(error, EXIT_PROCESSING_ERROR, show_traceback)
    except RefusedError as error:
        return _fail(error, EXIT_REFUSED, show_traceback)
    except Exception as error:
        traceback.print_exc()
        return _fail(error, EXIT_ERROR, False)


def _fail(error: BaseException, code: int, show_traceback: bool) -> int:
    if show_traceback:
        traceback.print_exception(error)
    message = " ".join(str(error).split())
    print(f"eventsourcing-runner: error: {message}", file=sys.stderr)
    return code


def load_system(topic: str) -> System:
    """Return the System that ``topic`` (``module:attribute``) names, calling a function."""
    module_name, sep, attr_path = topic.partition(":")
    if not sep or not module_name or not attr_path:
        msg = (
            f"SYSTEM {topic!r} is not a topic: write 'module:attribute', such as "
            "myproject.system:system"
        )
        raise SystemTopicError(msg)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the project's folder
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            msg = (
                f"No module named {e.name!r} (from SYSTEM {topic!r}): check the name, and run "
                "from the project's folder or add it to PYTHONPATH"
            )
            raise SystemTopicError(msg) from e
        raise SystemTopicError(f"Module {module_name!r} failed to import: {e}") from e
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            systems = _systems_in(importlib.import_module(module_name))
            hint = f"; it has the System(s) {systems}" if systems else ""
            msg = f"{module_name!r} has no attribute {attr_path!r} (from SYSTEM {topic!r}){hint}"
            raise SystemTopicError(msg) from None
    if not isinstance(obj, System) and callable(obj) and not isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, System):
        msg = (
            f"SYSTEM {topic!r} is a {type(obj).__name__}, not a System: name a System or a "
            "function that returns one"
        )
        raise SystemTopicError(msg)
    return obj


def _systems_in(module: Any) -> list[str]:
    return [f"{module.__name__}:{k}" for k, v in vars(module).items() if isinstance(v, System)]


# -- run ----------------------------------------------------------------------------------


def _run(args: argparse.Namespace, system: System) -> int:
    names = _chosen_names(args, system)
    if isinstance(system, AsyncSystem):  # async followers: one event loop
        from runners.async_worker import run_async_workers

        return run_async_workers(system, names, args)
    runner_cls = RUNNERS[CLI_RUNNERS[args.runner]]
    if issubclass(runner_cls, MultiProcessRunner):
        return _run_processes(runner_cls, system, names, args)
    return _run_threads(runner_cls, system, names, args)


def _chosen_names(args: argparse.Namespace, system: System) -> list[str]:
    names: list[str] = list(args.apps or args.env_apps)
    if args.all and names:
        raise _UsageError("give either --all or --app NAME, not both")
    if args.all:
        names = system.followers
    if not names:
        raise _UsageError(
            f"say which applications to run: --app NAME (one of {system.followers}) or --all"
        )
    for name in names:
        check_follower_name(system, name)
    return names


def _run_threads(
    runner_cls: type[WorkerThreads], system: System, names: list[str], args: argparse.Namespace
) -> int:
    progress = progress_bars()
    metrics = None
    if args.metrics_port is not None:
        metrics = serve_metrics(args.metrics_port, args.metrics_host, args.unhealthy_after)[0]
    runner = runner_cls(
        system,
        names,
        poll_interval=args.poll_interval,
        use_lease=not args.no_lease,
        progress=progress,
        metrics=metrics,
    )
    runner.open()
    handle_stop_signals(runner.stop)
    logger.info("Running %s (%s)", ", ".join(names), args.runner)
    return runner.run()


def _run_processes(
    runner_cls: type[MultiProcessRunner], system: System, names: list[str], args: argparse.Namespace
) -> int:
    runner = runner_cls(
        system,
        followers=names,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        unhealthy_after=args.unhealthy_after,
    )
    stopping = threading.Event()
    handle_stop_signals(stopping.set)
    with runner:
        while not stopping.wait(0.5):
            if runner.has_errored.is_set():
                break
    return EXIT_OK


def progress_bars() -> Callable[[str, str, int, int], None] | None:
    """Progress bars of catching up, on a terminal with the cli extra (else None)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return None  # the cli extra brings it
    bars: dict[tuple[str, str], Any] = {}

    def show(follower: str, leader: str, done: int, total: int) -> None:
        bar = bars.get((follower, leader))
        if bar is None:
            bar = bars[(follower, leader)] = tqdm(
                total=total, desc=f"{follower} <- {leader}", unit="ev", leave=False
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return show


# -- status -------------------------------------------------------------------------------


def status_rows(system: System, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each follower's position in each of its leaders' logs, how far behind it is (the
    notifications it has yet to process: :func:`runners.lag.follower_lag`), how many of
    them are parked (open dead letters), and whether it is paused."""
    rows: list[dict[str, Any]] = []
    apps: dict[str, Any] = {}
    try:
        for name in system.nodes:
            apps[name] = system.get_app_cls(name)(env=env)
        for leader, follower in system.edges:
            lag = follower_lag(apps[follower], leader, apps[leader])
            parked, paused = _follower_state(apps[follower].recorder, leader)
            rows.append(
                {
                    "follower": follower,
                    "leader": leader,
                    "tracked": lag.tracked,
                    "leader_last": lag.leader_last,
                    "lag": lag.lag,
                    "parked": parked,
                    "paused": paused,
                }
            )
    finally:
        for app in apps.values():
            app.close()
    return rows


def _follower_state(recorder: Any, leader: str) -> tuple[int, bool]:
    """A follower's open dead letters of ``leader``, and whether it is paused."""
    if not isinstance(recorder, FollowerStateRecorder):
        return 0, False
    counts = recorder.count_dead_letters()
    parked = sum(counts.get((leader, status), 0) for status in OPEN_STATUSES)
    return parked, recorder.is_paused


def _status(args: argparse.Namespace, system: System) -> int:
    interrupted = threading.Event()
    if args.watch:
        handle_stop_signals(interrupted.set)
    while True:
        rows = status_rows(system)
        if args.json:
            print(json.dumps(rows), flush=True)
        else:
            shown = [{**row, "paused": "yes" if row["paused"] else "no"} for row in rows]
            print_table(shown, STATUS_HEADERS, numeric=STATUS_NUMBERS, stamp=args.watch)
        if not args.watch or interrupted.wait(args.interval):
            return EXIT_OK


STATUS_HEADERS = ["follower", "leader", "tracked", "leader_last", "lag", "parked", "paused"]
STATUS_NUMBERS = {"tracked", "leader_last", "lag", "parked"}

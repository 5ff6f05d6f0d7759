"""``python -m examples.paxos``: the demo, and a client of a running cluster."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from examples.paxos.application import CommandTimeoutError, KeyValueError, Replica
from examples.paxos.system import system

# Exit codes.
EXIT_OK = 0
EXIT_NO = 1  # get: the key is not set; cas: not applied; demo: the replicas disagree
EXIT_USAGE = 2  # argparse's own
EXIT_TIMEOUT = 3  # not chosen and applied in time (is a majority of replicas running?)
EXIT_CONFIG = 4  # no database configured for the replica

EXAMPLES = """\
examples:
  # Three replicas on SQLite files in a temporary folder, commands racing for slots.
  python -m examples.paxos demo

  # Against a running cluster (see README): the replicas' databases as the workers have them.
  export PERSISTENCE_MODULE=eventsourcing.sqlite
  export REPLICA0_SQLITE_DBNAME=/data/replica0.sqlite   # and REPLICA1_..., REPLICA2_...
  python -m examples.paxos put colour red
  python -m examples.paxos get colour --replica Replica2
  python -m examples.paxos cas colour red blue
  python -m examples.paxos cas owner - alice --absent
  python -m examples.paxos delete colour --timeout 5
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.paxos",
        description="A replicated key-value store on Paxos, with event-sourced replicas.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("demo", help="run three replicas on SQLite files and show they agree")
    put = client_parser(commands, "put", "set KEY to VALUE")
    put.add_argument("value", metavar="VALUE")
    client_parser(commands, "get", "print the value of KEY (exit 1 if it is not set)")
    client_parser(commands, "delete", "remove KEY")
    cas = client_parser(commands, "cas", "set KEY to NEW if its value is EXPECTED (exit 1 if not)")
    cas.add_argument("expected", metavar="EXPECTED")
    cas.add_argument("new", metavar="NEW")
    cas.add_argument(
        "--absent", action="store_true", help="expect KEY not to be set (EXPECTED is ignored)"
    )
    return parser


def client_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse.ArgumentParser:
    """A subcommand that sends a command through one replica of a running cluster."""
    parser = commands.add_parser(name, help=help, description=help.capitalize() + ".")
    parser.add_argument("key", metavar="KEY")
    parser.add_argument(
        "--replica",
        default="Replica0",
        choices=list(system.nodes),
        help="the replica to send the command through (default: Replica0)",
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, help="seconds to wait (default: PAXOS_TIMEOUT or 30)"
    )
    return parser


def positive_seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        msg = f"expected a positive number of seconds, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from examples.paxos.demo import run_demo

        return EXIT_OK if run_demo() else EXIT_NO
    problem = configuration_problem(args.replica)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_CONFIG
    replica_cls = system.get_app_cls(args.replica)
    assert issubclass(replica_cls, Replica)
    with replica_cls() as replica:
        try:
            return run_client_command(replica, args)
        except CommandTimeoutError as error:
            print(error, file=sys.stderr)
            return EXIT_TIMEOUT
        except KeyValueError as error:
            print(error, file=sys.stderr)
            return EXIT_USAGE


def configuration_problem(replica: str) -> str | None:
    """Why this process cannot reach the replica's database, if it cannot."""
    prefix = replica.upper() + "_"
    module = os.environ.get(prefix + "PERSISTENCE_MODULE") or os.environ.get("PERSISTENCE_MODULE")
    if module in (None, "", "eventsourcing.popo"):
        return (
            f"No database is configured for {replica}: set PERSISTENCE_MODULE "
            f"(eventsourcing.sqlite or eventsourcing.postgres) and the database settings, "
            f"e.g. {prefix}SQLITE_DBNAME, as the replica's worker has them"
        )
    return None


def run_client_command(replica: Replica, args: argparse.Namespace) -> int:
    """Send the command through ``replica``, print its outcome, return the exit code."""
    timeout = args.timeout
    if args.command == "put":
        replica.execute(replica.command("put", args.key, value=args.value), timeout)
        print(f"{args.key}={args.value}")
    elif args.command == "get":
        value = replica.execute(replica.command("get", args.key), timeout)
        if value is None:
            print(f"{args.key} is not set", file=sys.stderr)
            return EXIT_NO
        print(value)
    elif args.command == "delete":
        replica.execute(replica.command("delete", args.key), timeout)
        print(f"deleted {args.key}")
    else:
        expected = None if args.absent else args.expected
        command = replica.command("cas", args.key, value=args.new, expected=expected)
        if not replica.execute(command, timeout):
            print(f"not set: {args.key} was not {expected!r}", file=sys.stderr)
            return EXIT_NO
        print(f"{args.key}={args.new}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

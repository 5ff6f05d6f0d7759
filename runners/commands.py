"""The CLI's commands that operate a follower: ``dead-letters``, ``retry``, ``discard``,
``pause``, ``resume``, ``reset`` and ``rebuild`` (the work is :mod:`runners.control`'s)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.deadletters import OPEN_STATUSES, STATUSES, DeadLetter
from eventsourcing.system import System
from runners.control import PAUSE_WAIT, FollowerControl, LetterKey
from runners.lag import follower_lag
from runners.worker import Worker

__all__ = ["COMMANDS", "add_commands", "print_table"]

Command = Callable[[argparse.Namespace, System], int]

EXAMPLES = """\
  # what a follower could not process (add --json for everything, tracebacks too)
  eventsourcing-runner dead-letters myproject.system:system --app Counters
  # after a fix is deployed: retry one, one aggregate's, or all (the worker does it)
  eventsourcing-runner retry myproject.system:system --app Counters 1234
  eventsourcing-runner retry myproject.system:system --app Counters --originator <id>
  eventsourcing-runner retry myproject.system:system --app Counters --all
  eventsourcing-runner discard myproject.system:system --app Counters 1234 --reason "bad data"
  # stop processing a follower, keeping its workers (and across their restarts)
  eventsourcing-runner pause myproject.system:system --app Counters
  eventsourcing-runner resume myproject.system:system --app Counters
  # move a follower's position in a leader's log, or replay a projection from the start
  eventsourcing-runner reset myproject.system:system --app Counters --leader Orders --to 5000
  eventsourcing-runner reset myproject.system:system --app Counters --to start --pause
  eventsourcing-runner rebuild myproject.system:system --app Totals --pause
"""


def add_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add the follower commands with ``add(name, description)``, which makes a parser
    with the common options and SYSTEM."""
    letters = add("dead-letters", "list what a follower's policy could not process")
    _app(letters)
    letters.add_argument("--leader", metavar="NAME", help="only the letters of this leader")
    letters.add_argument("--originator", metavar="ID", help="only this aggregate's letters")
    letters.add_argument(
        "--status",
        dest="statuses",
        action="append",
        choices=STATUSES,
        help="only letters with this status (repeat; default: parked and retrying)",
    )
    letters.add_argument("--json", action="store_true", help="print JSON, tracebacks included")

    retry = add("retry", "have the active worker process dead letters again, in order")
    _app(retry)
    _choice_of_letters(retry)

    discard = add("discard", "give up on dead letters, keeping why")
    _app(discard)
    _choice_of_letters(discard)
    discard.add_argument("--reason", required=True, help="why (kept with the letters)")

    pause = add("pause", "stop processing a follower; its workers keep their lease, idle")
    _app(pause)
    _wait(pause)
    resume = add("resume", "let a paused follower's workers go on")
    _app(resume)

    reset = add("reset", "move a follower's position in a leader's log")
    _app(reset)
    reset.add_argument("--leader", metavar="NAME", help="the leader (needed if it has several)")
    reset.add_argument(
        "--to", required=True, metavar="N", help="a notification id, 'start' or 'end'"
    )
    _pausing(reset)

    rebuild = add("rebuild", "erase what a follower derived, and replay its leaders")
    _app(rebuild)
    rebuild.add_argument(
        "--with-followers",
        action="store_true",
        help="rebuild the applications that follow it too (else refused if there are any)",
    )
    _pausing(rebuild)
    rebuild.add_argument(
        "--no-wait", action="store_true", help="return once erased, without waiting for the replay"
    )


def _app(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", required=True, metavar="NAME", help="the follower")


def _choice_of_letters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "letters",
        nargs="*",
        metavar="LETTER",
        help="notification ids, as N (a follower of one leader) or LEADER:N",
    )
    parser.add_argument("--originator", metavar="ID", help="every open letter of one aggregate")
    parser.add_argument("--all", dest="everything", action="store_true", help="every one")


def _wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=PAUSE_WAIT,
        metavar="SECONDS",
        help=f"how long the active worker has to stop processing (default {PAUSE_WAIT:g})",
    )


def _pausing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pause",
        action="store_true",
        help="if a worker is running, pause it meanwhile (else the command is refused)",
    )
    _wait(parser)


# -- the commands -------------------------------------------------------------------


def _dead_letters(args: argparse.Namespace, system: System) -> int:
    with FollowerControl(system, args.app) as control:
        letters = control.dead_letters(
            leader=args.leader,
            statuses=args.statuses or OPEN_STATUSES,
            originator=args.originator,
        )
    if args.json:
        print(json.dumps([_letter_json(d) for d in letters]), flush=True)
        return 0
    if not letters:
        print(f"{args.app} has no dead letters of those statuses.")
        return 0
    print_table([_letter_row(d) for d in letters], LETTER_HEADERS, numeric={"id", "attempts"})
    return 0


LETTER_HEADERS = ["leader", "id", "originator", "version", "status", "attempts", "error"]


def _letter_row(letter: DeadLetter) -> dict[str, Any]:
    error = f"{letter.error_type}: {letter.error_message}" if letter.error_type else letter.reason
    error = " ".join(error.split())
    return {
        "leader": letter.leader_name,
        "id": letter.notification_id,
        "originator": letter.originator_id,
        "version": letter.originator_version,
        "status": letter.status,
        "attempts": letter.attempts,
        "error": error if len(error) <= 72 else error[:71] + "…",
    }


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "leader": letter.leader_name,
        "notification_id": letter.notification_id,
        "originator_id": letter.originator_id,
        "originator_version": letter.originator_version,
        "topic": letter.topic,
        "status": letter.status,
        "attempts": letter.attempts,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "traceback": letter.traceback,
        "first_failed_at": letter.first_failed_at.isoformat(),
        "last_failed_at": letter.last_failed_at.isoformat(),
        "reason": letter.reason,
    }


def _retry(args: argparse.Namespace, system: System) -> int:
    with FollowerControl(system, args.app) as control:
        keys = _letter_keys(args.letters, system, args.app)
        count = control.retry(keys, originator=args.originator, everything=args.everything)
        running = control.worker_is_running()
    where = "the active worker retries them" if running else "a worker retries them once started"
    print(f"{count} dead letter(s) of {args.app} to retry: {where}, in order.")
    return 0


def _discard(args: argparse.Namespace, system: System) -> int:
    with FollowerControl(system, args.app) as control:
        keys = _letter_keys(args.letters, system, args.app)
        count = control.discard(
            keys, reason=args.reason, originator=args.originator, everything=args.everything
        )
    print(f"{count} dead letter(s) of {args.app} discarded.")
    return 0


def _letter_keys(texts: Sequence[str], system: System, app: str) -> list[LetterKey]:
    leaders = system.follows[app]
    keys: list[LetterKey] = []
    for text in texts:
        leader, sep, number = text.rpartition(":")
        if not sep:
            if len(leaders) != 1:
                msg = f"{app!r} follows {leaders}: write LEADER:N, not {text!r}"
                raise ValueError(msg)
            leader = leaders[0]
        if leader not in leaders or not number.isdigit():
            msg = f"Invalid dead letter {text!r}: write N or LEADER:N, LEADER one of {leaders}"
            raise ValueError(msg)
        keys.append((leader, int(number)))
    return keys


def _pause(args: argparse.Namespace, system: System) -> int:
    with FollowerControl(system, args.app) as control:
        worker = control.pause(args.wait)
    if worker is None:
        print(f"{args.app} is paused (no worker is running; any that starts stays idle).")
    else:
        print(f"{args.app} is paused: worker {worker} has stopped processing it.")
    return 0


def _resume(args: argparse.Namespace, system: System) -> int:
    with FollowerControl(system, args.app) as control:
        control.resume()
    print(f"{args.app} resumed: its worker goes on within a poll interval.")
    return 0


def _reset(args: argparse.Namespace, system: System) -> int:
    leaders = system.follows.get(args.app, [])
    leader = args.leader
    if leader is None:
        if len(leaders) != 1:
            raise ValueError(f"{args.app!r} follows {leaders}: say which with --leader")
        leader = leaders[0]
    with FollowerControl(system, args.app) as control:
        position = control.reset(leader, args.to, pause=args.pause, wait=args.wait)
    where = "the start" if position is None else f"notification {position}"
    print(f"{args.app} is at {where} of {leader}'s log: it processes what comes after, once.")
    return 0


def _rebuild(args: argparse.Namespace, system: System) -> int:
    with FollowerControl(system, args.app) as control:
        running = control.worker_is_running()
        names = control.rebuild(
            with_followers=args.with_followers,
            pause=args.pause,
            wait=args.wait,
            erased=lambda name: print(f"{name}: erased", flush=True),
        )
    if args.no_wait:
        print(f"Rebuilding {', '.join(names)}: the workers replay from the start.")
        return 0
    if not running:
        for name in names:  # in processing order: each gets all of its leaders' events
            replay_alone(system, name)
    _watch_replay(system, names)
    print(f"Rebuilt {', '.join(names)}.")
    return 0


def replay_alone(system: System, name: str) -> None:
    """Process ``name``'s leaders to their ends in this process, holding its lease
    (skipped if a worker has started meanwhile: then it replays)."""
    from runners.cli import progress_bars

    worker = Worker(system, [name], progress=progress_bars())
    worker.catch_up()


def _watch_replay(system: System, names: list[str], interval: float = 0.5) -> None:
    """Show the replay of ``names`` until each has caught up with its leaders."""
    edges = [(leader, name) for leader, name in system.edges if name in names]
    bar = _bar(sum(1 for _ in edges))
    apps: dict[str, Any] = {n: system.get_app_cls(n)() for n in {n for e in edges for n in e}}
    try:
        while True:
            lags = [follower_lag(apps[f], leader, apps[leader]) for leader, f in edges]
            if bar is not None:
                bar.total = sum(lag.leader_last for lag in lags)
                bar.n = sum(lag.tracked for lag in lags)
                bar.refresh()
            if all(lag.lag == 0 for lag in lags):
                break
            time.sleep(interval)
    finally:
        if bar is not None:
            bar.close()
        for app in apps.values():
            app.close()


def _bar(edges: int) -> Any:
    if not sys.stderr.isatty() or not edges:
        return None
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return None  # the cli extra brings it
    return tqdm(desc="replaying", unit="ev", leave=False)


COMMANDS: dict[str, Command] = {
    "dead-letters": _dead_letters,
    "retry": _retry,
    "discard": _discard,
    "pause": _pause,
    "resume": _resume,
    "reset": _reset,
    "rebuild": _rebuild,
}


def print_table(
    rows: list[dict[str, Any]], headers: list[str], *, numeric: set[str], stamp: bool = False
) -> None:
    """Print ``rows`` under ``headers``, the ``numeric`` columns aligned right."""
    cells = [[str(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    if stamp:
        print(time.strftime("%H:%M:%S"))
    for row in [[h.upper() for h in headers], *cells]:
        print(
            "  ".join(
                c.rjust(w) if h in numeric else c.ljust(w)
                for c, w, h in zip(row, widths, headers, strict=True)
            ).rstrip()
        )
    print(flush=True)

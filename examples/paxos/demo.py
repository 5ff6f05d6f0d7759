"""The demo: three replicas on SQLite files agree on a log, with clients racing for slots.

Needs the ``examples`` extra for its tables: ``pip install 'eventsourcing[examples]'``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

try:
    from rich.console import Console
    from rich.table import Table
except ImportError as error:  # pragma: no cover
    msg = (
        "The demo prints tables with rich: install the extra, pip install 'eventsourcing[examples]'"
    )
    raise ImportError(msg) from error

from eventsourcing.system import Runner
from examples.paxos.application import Replica
from examples.paxos.domainmodel import Command
from examples.paxos.system import Replica0, Replica1, Replica2, system
from runners import MultiProcessRunner


def run_demo(console: Console | None = None) -> bool:
    """Run the demo in a temporary folder; return whether the replicas agree."""
    console = console or Console()
    with tempfile.TemporaryDirectory() as folder:
        # The clients here poll for their results often: the replicas are other processes.
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "PAXOS_POLL_INTERVAL": "0.01"}
        for cls in (Replica0, Replica1, Replica2):
            env[f"{cls.name.upper()}_SQLITE_DBNAME"] = os.path.join(folder, f"{cls.name}.sqlite")
        console.print(f"Three replicas, each an OS process with its own SQLite file in {folder}")
        runner: Runner[UUID] = MultiProcessRunner(system, env=env)
        with runner:
            replicas = [runner.get(cls) for cls in (Replica0, Replica1, Replica2)]
            started = time.monotonic()
            send_commands(console, replicas)
            wait_until_all_applied(replicas)
            elapsed = time.monotonic() - started
            slots = replicas[0].store().next_slot
            console.print(f"\n{slots} slots chosen and applied by all three in {elapsed:.2f} s")
            console.print(log_table(replicas))
            console.print(store_table(replicas))
            for line in races(replicas):
                console.print(line)
            agree = len({tuple(r.applied_commands()) for r in replicas}) == 1
    console.print("The replicas agree." if agree else "[red]The replicas disagree![/red]")
    return agree


def send_commands(console: Console, replicas: Sequence[Replica]) -> None:
    """Commands through different replicas, one after another, then racing."""
    r0, r1, r2 = replicas
    say = console.print
    r0.put("colour", "red")
    say("Replica0: put colour=red")
    say(f"Replica1: get colour -> {r1.get('colour')}")
    say(f"Replica2: cas colour red->blue -> {r2.cas('colour', 'red', 'blue')}")
    say(f"Replica0: cas colour red->green -> {r0.cas('colour', 'red', 'green')}")
    say("All three at once: put size=S via Replica0, =M via Replica1, =L via Replica2")
    race(*(lambda r=r, v=v: r.put("size", v) for r, v in zip(replicas, "SML", strict=True)))
    say(f"Replica2: get size -> {r2.get('size')}")
    won = race(*(lambda r=r: r.cas("owner", None, r.name) for r in replicas))
    outcomes = dict(zip(system.nodes, won, strict=True))
    say(f"All three at once: cas owner (unset)->own name -> {outcomes}")
    r1.delete("colour")
    say("Replica1: delete colour")
    say(f"Replica0: get colour -> {r0.get('colour')}")


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Make the calls at the same moment, from threads; return their results."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def wait_until_all_applied(replicas: Sequence[Replica], timeout: float = 30.0) -> None:
    """Wait until every replica has applied as many slots as the most advanced one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = {replica.store().next_slot for replica in replicas}
        if len(applied) == 1:
            return
        time.sleep(0.01)


def sender(command: Command) -> str:
    """The replica a client sent the command through (named in its request id)."""
    return command.request_id.split("/")[0] if command.op != "noop" else "-"


def log_table(replicas: Sequence[Replica]) -> Table:
    """Each replica's log side by side: the command chosen in each slot, and its ballot."""
    table = Table(title="Log: the command each replica has chosen in each slot")
    table.add_column("slot", justify="right")
    table.add_column("sent to")
    for replica in replicas:
        table.add_column(replica.name)
    table.add_column("ballot")
    for number in range(max(replica.store().next_slot for replica in replicas)):
        slots = [replica.slot(number) for replica in replicas]
        chosen = [slot.chosen if slot else None for slot in slots]
        first = next((command for command in chosen if command), None)
        ballot = next((str(s.chosen_ballot) for s in slots if s and s.chosen_ballot), "-")
        cells = [str(command) if command else "-" for command in chosen]
        table.add_row(str(number), sender(first) if first else "-", *cells, ballot)
    return table


def store_table(replicas: Sequence[Replica]) -> Table:
    """Each replica's store side by side."""
    stores = [replica.store().data for replica in replicas]
    table = Table(title="Store: each replica's keys and values")
    table.add_column("key")
    for replica in replicas:
        table.add_column(replica.name)
    for key in sorted(set().union(*stores)):
        table.add_row(key, *(store.get(key, "-") for store in stores))
    return table


def races(replicas: Sequence[Replica]) -> list[str]:
    """Lines about the commands that lost a race for a slot, and where they went."""
    replica = replicas[0]
    log = replica.applied_commands()
    slot_of = {command.request_id: number for number, command in enumerate(log)}
    lines = []
    for number, chosen in enumerate(log):
        for other in replicas:
            slot = other.slot(number)
            lost = slot.lost_command if slot else None
            if lost is not None:
                lines.append(
                    f"Slot {number}: {other.name} proposed '{lost}', {sender(chosen)}'s "
                    f"'{chosen}' was chosen; {other.name} proposed it again, and it was "
                    f"chosen in slot {slot_of.get(lost.request_id, '?')}"
                )
    return lines

"""One replica in an OS process of its own, following every replica by polling their logs.

``python tests/paxos/paxos_worker.py Replica1`` runs replica ``Replica1`` of
``examples.paxos.system:system`` with the databases named by the environment, as a worker
of the runtime will (until then, the tests use this small loop). It reads each leader's log
through an instance of the leader's class over the leader's database, processes what is
new, and sleeps briefly when there was nothing. It prints ``ready`` once it is following,
and stops at SIGTERM; SIGKILL stops it anywhere, which is the point.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from typing import Any

from eventsourcing.system import Follower
from examples.paxos.system import system

POLL_INTERVAL = 0.005


def main(name: str) -> int:
    """Run replica ``name`` until SIGTERM."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the tests' view of a hang
    replica: Follower[Any] = system.follower_cls(name)()
    leaders = {
        leader: replica if leader == name else system.get_app_cls(leader)()
        for leader in system.follows[name]
    }
    for leader_name, leader in leaders.items():
        replica.follow(leader_name, leader.notification_log)
    print("ready", flush=True)
    try:
        while not stopping.is_set():
            for leader_name in leaders:
                replica.pull_and_process(leader_name)
            stopping.wait(POLL_INTERVAL)
    finally:
        for leader in {id(app): app for app in leaders.values()}.values():
            leader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

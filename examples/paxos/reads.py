"""Multi-Paxos reads that take no slot: served from the leader's store, under its lease.

A read through the log (``PAXOS_READS=log``, and every read in basic Paxos) is a command
like any other: it is linearizable because it takes a place in the log. With
``PAXOS_READS=lease`` (the default with multi-Paxos) a client reads instead, from the
leader's database:

1. it notes the time ``t0`` and loads the leader's ledger (after ``t0``);
2. if the ledger's lease holds at ``t0``, its *read index* is the leader's next slot:
   every write completed before ``t0`` was chosen in a slot before it, because no other
   replica can lead before the lease ends, and this leader recorded each slot it proposed
   before sending it;
3. it waits until the leader's store has applied every slot before the read index, and
   answers from the store.

Otherwise (no lease, a leader it cannot reach, a store that does not catch up within a
lease) it reads through the log.

The lease. An acceptor that accepts a leader's proposal promises no other replica (and
does not campaign itself) for ``PAXOS_LEASE`` seconds (default 1) by its own clock, counted
from the time it accepted; the leader's lease runs ``PAXOS_LEASE`` seconds from the time it
*proposed* the latest slot of its term that a majority accepted (earlier than any of those
acceptances). The clock assumption: the clocks of the replicas' processes and of the
clients differ by less than ``PAXOS_CLOCK_ERROR`` seconds (default 0.1), which the lease
is shortened by, and run at the same rate within that over a lease. A leader stopped
(SIGSTOP) or cut off keeps its lease only until it ends: the others elect a new leader
after it, and readers of the old one read through the log once it has ended. The cost: a
new leader is elected no sooner than ``PAXOS_LEASE`` after the old one was last accepted.

A client of a follower reads from the leader's database when it can reach it: when the
leader's database is configured in the client's environment (``REPLICA1_SQLITE_DBNAME``,
one PostgreSQL database for all, ...); an in-memory (POPO) leader it cannot reach.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from examples.paxos.domainmodel import Store
from examples.paxos.ledger import Ledger

if TYPE_CHECKING:  # pragma: no cover
    from examples.paxos.application import Replica

LEASE = "lease"
LOG = "log"
READS = (LEASE, LOG)


class LeaseReader:
    """A client's reads under the leader's lease (the module docstring says how)."""

    def __init__(self, replica: Replica, lease: float, clock_error: float) -> None:
        self.replica = replica
        self.lease = lease
        self.clock_error = clock_error
        self._lock = threading.Lock()
        self._cached: dict[tuple[int, UUID], Any] = {}  # aggregates, fast-forwarded
        self._others: dict[int, Replica | None] = {}  # other replicas' databases

    def read(self, key: str) -> tuple[bool, str | None]:
        """``(True, value)`` if the read was served under a lease, else ``(False, None)``."""
        started = time.time()
        app: Replica | None = self.replica
        assert app is not None
        ledger = self._latest(app, Ledger.create_id(app.index), _ledger_view)
        if ledger is not None and not ledger[0] and ledger[3] is not None:
            app = self._other(ledger[3])
            ledger = (
                None
                if app is None
                else self._latest(app, Ledger.create_id(app.index), _ledger_view)
            )
        if app is None or ledger is None:
            return False, None
        is_leader, lease_from, read_index, _ = ledger
        if not is_leader or started >= lease_from + self.lease - self.clock_error:
            return False, None
        deadline = time.monotonic() + self.lease
        while True:
            store = self._latest(
                app, Store.create_id(app.index), lambda s: (s.next_slot, s.data.get(key))
            )
            if store is not None and store[0] >= read_index:
                return True, store[1]
            if time.monotonic() > deadline:
                return False, None
            time.sleep(self.replica.poll_interval)

    def _latest(self, app: Replica, aggregate_id: UUID, view: Any) -> Any:
        """``view`` of the aggregate as ``app``'s database has it now (None if none)."""
        key = (app.index, aggregate_id)
        with self._lock:
            cached = self._cached.get(key)
        if cached is None:
            try:
                cached = app.repository.get(aggregate_id)
            except AggregateNotFoundError:
                return None
            newer: list[Any] = []
        else:
            newer = list(app.repository.event_store.get(aggregate_id, gt=cached.version))
        with self._lock:
            current = self._cached.get(key)
            if current is None or current.version < cached.version:
                current = cached
            for domain_event in newer:
                if domain_event.originator_version > current.version:
                    current = domain_event.mutate(current)
            self._cached[key] = current
            return view(current)

    def _other(self, index: int) -> Replica | None:
        """A read-side instance of replica ``index`` over its database, if it is reachable."""
        with self._lock:
            if index in self._others:
                return self._others[index]
        from examples.paxos.system import replica_class  # the system imports this module

        size = len(self.replica.replica_names)
        cls = replica_class(index, size)
        env = dict(self.replica.env)
        module = env.get(f"{cls.name.upper()}_PERSISTENCE_MODULE") or env.get("PERSISTENCE_MODULE")
        other = None if module in (None, "", "eventsourcing.popo") else cls(env=env)
        with self._lock:
            if index in self._others:  # another thread made one meanwhile
                if other is not None:
                    other.close()
                return self._others[index]
            self._others[index] = other
        return other

    def close(self) -> None:
        """Close the other replicas' instances."""
        with self._lock:
            others, self._others = list(self._others.values()), {}
        for other in others:
            if other is not None:
                other.close()


def _ledger_view(ledger: Ledger) -> tuple[bool, float, int, int | None]:
    return ledger.is_leader, ledger.lease_from, ledger.next_slot, ledger.leader

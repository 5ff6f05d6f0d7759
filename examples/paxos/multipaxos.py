"""A replica's policy in multi-Paxos mode: lead, or follow, and apply the chosen batches.

Every replica reads every replica's log, so a request recorded at a follower reaches the
leader through the follower's log (it is forwarded by being recorded). Every replica
queues the requests it reads until they are applied; the leader proposes its queue in
batches of up to ``PAXOS_BATCH`` commands, with up to ``PAXOS_PIPELINE`` slots in flight
(proposed and not yet applied): while they are in flight, requests gather in the queue,
and the next slot takes all of them. A replica that becomes leader proposes its queue too,
so requests waiting at a leader that stopped are not lost.

The queue is in memory: a replica that restarts has lost it, and a request whose client
waits longer than ``PAXOS_NUDGE_AFTER`` is reminded (``Request.Reminded``): the leader
queues it again. A reminder at a follower also makes it campaign for leadership: the
leader may have stopped, and a new one is elected within about ``PAXOS_NUDGE_AFTER`` and
two rounds of the logs. A request proposed twice is applied once (the store remembers the
recent request ids).

The queue changes with the policy's batch of notifications: a batch that is not recorded
(it runs again, or the process stops) leaves the queue as it was before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from examples.paxos.domainmodel import Command, Receipt, Store
from examples.paxos.ledger import Ledger

if TYPE_CHECKING:  # pragma: no cover
    from examples.paxos.application import Replica


class Pending:
    """Requests read and not yet applied here, and which of them this leader proposed."""

    def __init__(
        self, queue: dict[str, Command] | None = None, proposed: set[str] | None = None
    ) -> None:
        self.queue = queue or {}
        self.proposed = proposed or set()

    def copy(self) -> Pending:
        """A copy, to change within one batch."""
        return Pending(dict(self.queue), set(self.proposed))

    def next_batch(self, limit: int) -> list[Command]:
        """Up to ``limit`` queued commands not proposed yet, oldest first."""
        batch = []
        for request_id, command in self.queue.items():
            if request_id not in self.proposed:
                batch.append(command)
                if len(batch) == limit:
                    break
        return batch


class MultiPaxos:
    """The multi-Paxos policy of one replica (its handlers are called by the replica)."""

    def __init__(self, replica: Replica, pipeline: int, batch_size: int, lease: float) -> None:
        self.replica = replica
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.lease = lease
        self.own_prefix = replica.name + "/"  # request ids of this replica's clients
        self._committed = Pending()
        self._batch: tuple[ProcessingEvent[UUID], Pending] | None = None

    # -- the queue, per batch --------------------------------------------------------------

    def pending(self, processing_event: ProcessingEvent[UUID]) -> Pending:
        """The queue as this batch of notifications changes it."""
        batch = self._batch
        if batch is None or batch[0] is not processing_event:
            batch = self._batch = (processing_event, self._committed.copy())
        return batch[1]

    def recorded(self, processing_event: ProcessingEvent[UUID]) -> None:
        """The batch was recorded: its queue is now the queue."""
        batch = self._batch
        if batch is not None and batch[0] is processing_event:
            self._committed, self._batch = batch[1], None

    # -- handlers --------------------------------------------------------------------------

    def submitted(
        self, command: Command, sender: int, processing_event: ProcessingEvent[UUID]
    ) -> None:
        """A request read from a log: queue it; a replica that knows no leader campaigns."""
        pending = self.pending(processing_event)
        pending.queue.setdefault(command.request_id, command)

        def act(ledger: Ledger) -> None:
            if sender == self.replica.index and ledger.leader is None and not ledger.role_active:
                ledger.campaign(time.time(), self.lease)

        self.act(processing_event, act)

    def reminded(
        self, command: Command, sender: int, processing_event: ProcessingEvent[UUID]
    ) -> None:
        """A client waited long: queue the request again; a follower campaigns."""
        pending = self.pending(processing_event)
        pending.queue.setdefault(command.request_id, command)
        pending.proposed.discard(command.request_id)

        def act(ledger: Ledger) -> None:
            if sender == self.replica.index and not ledger.is_leader:
                ledger.campaign(time.time(), self.lease)

        self.act(processing_event, act)

    def act(
        self, processing_event: ProcessingEvent[UUID], action: Callable[[Ledger], None]
    ) -> None:
        """Do ``action`` on the ledger; apply what was chosen; as leader, propose."""
        replica = self.replica
        ledger = self.ledger()
        was_leader = ledger.is_leader
        action(ledger)
        pending = self.pending(processing_event)
        if ledger.is_leader and not was_leader:
            # A new term: what the election proposed again is in flight, the rest is not.
            pending.proposed = {
                command.request_id
                for entry in ledger.window
                if entry.accepted_ballot == ledger.ballot and entry.accepted
                for command in entry.accepted
            }
        store = replica.store()
        while True:
            self.apply_chosen(ledger, store, pending, processing_event)
            if not self.propose_pending(ledger, store, pending):
                break
        processing_event.collect_events(ledger)

    # -- the leader's proposals, and applying ----------------------------------------------

    def propose_pending(self, ledger: Ledger, store: Store, pending: Pending) -> bool:
        """As leader, propose queued requests while slots are free; say whether it did.

        A queued request that the store applied already (its ``Submitted`` was read after
        the slot it was chosen in) is dropped from the queue, not proposed again.
        """
        proposed = False
        while ledger.is_leader and ledger.in_flight < self.pipeline:
            batch = pending.next_batch(self.batch_size)
            stale = [command for command in batch if command.request_id in store.recent]
            for command in stale:
                del pending.queue[command.request_id]
            if stale:
                continue
            if not batch:
                break
            ledger.propose(batch)
            pending.proposed.update(command.request_id for command in batch)
            proposed = True
        return proposed

    def apply_chosen(
        self,
        ledger: Ledger,
        store: Store,
        pending: Pending,
        processing_event: ProcessingEvent[UUID],
    ) -> None:
        """Apply chosen batches in slot order; issue receipts to this replica's clients."""
        applied = False
        while (batch := ledger.chosen(store.next_slot)) is not None:
            slot = store.next_slot
            fresh = store.fresh(batch)
            results = store.results_of(fresh)
            store.apply_slot(slot, fresh, len(batch) - len(fresh))
            for command in batch:
                pending.queue.pop(command.request_id, None)
                pending.proposed.discard(command.request_id)
            for command, result in zip(fresh, results, strict=True):
                if command.request_id.startswith(self.own_prefix):
                    processing_event.collect_events(
                        Receipt(self.replica.index, command.request_id, slot, result)
                    )
            applied = True
        if applied:
            ledger.record_applied(store.next_slot)
            processing_event.collect_events(store)

    def ledger(self) -> Ledger:
        """This replica's ledger (new if it has none yet)."""
        replica = self.replica
        ledger: Ledger | None = replica._find(Ledger.create_id(replica.index))
        return ledger or Ledger(replica.index, replica.quorum)

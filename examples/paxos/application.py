"""A replica of the key-value store, and the store's client API (put, get, delete, cas).

A :class:`Replica` is a process application that follows every replica, itself included.
Its own log brings it its clients' requests; the other replicas' logs bring it their Paxos
messages. Its policy is the only writer of its Paxos state (one :class:`Slot` per slot of
the log) and of its store, so that state is changed by one thread of one process at a time
on every runner, and each message is processed exactly once.

A client calls :meth:`Replica.put` (or ``get``, ``delete``, ``cas``) on any instance of the
replica's class over the replica's database: the runner's instance, or one constructed by
another process with the same environment. The call records the request in the replica's
log and waits until the replica has applied it, whichever slot it took. Reads go through
the log too, so every history of calls is linearizable.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent, ProgrammingError
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Recording, Transcoding
from eventsourcing.system import ProcessApplication
from eventsourcing.utils import EnvType, get_topic
from examples.paxos.domainmodel import (
    Ballot,
    Command,
    Receipt,
    Request,
    Result,
    Slot,
    Store,
    request_id_of,
)
from examples.paxos.ledger import EntryAsDict, Ledger, WindowAsList
from examples.paxos.modes import MULTI, SETTING, paxos_mode
from examples.paxos.multipaxos import MultiPaxos
from examples.paxos.reads import LEASE, READS, LeaseReader


class KeyValueError(Exception):
    """An operation on the replicated key-value store failed."""


class CommandTimeoutError(KeyValueError, TimeoutError):
    """A command was not chosen and applied within the time allowed."""


class InvalidKeyError(KeyValueError, ValueError):
    """A key or value is not a non-empty string."""


class BallotAsList(Transcoding):
    """Stores a :class:`Ballot` as ``[round, replica]``."""

    type = Ballot
    name = "paxos_ballot"

    def encode(self, obj: Ballot) -> list[int]:
        """Round and replica."""
        return [obj.round, obj.replica]

    def decode(self, data: list[int]) -> Ballot:
        """The ballot."""
        return Ballot(*data)


class CommandAsDict(Transcoding):
    """Stores a :class:`Command` as a dict of its fields."""

    type = Command
    name = "paxos_command"

    def encode(self, obj: Command) -> dict[str, str | None]:
        """The fields."""
        return {
            "request_id": obj.request_id,
            "op": obj.op,
            "key": obj.key,
            "value": obj.value,
            "expected": obj.expected,
        }

    def decode(self, data: dict[str, Any]) -> Command:
        """The command."""
        return Command(**data)


class Replica(ProcessApplication[UUID]):
    """One replica of the replicated key-value store.

    Subclasses name the replicas of a cluster: ``replica_names`` lists them all, in the
    order that gives each its index (see :func:`examples.paxos.system.replica_class`).

    Settings (environment, prefixed by the replica's name or not): ``PAXOS_TIMEOUT``, the
    seconds a command may take (default 30); ``PAXOS_NUDGE_AFTER``, the seconds a client
    waits before asking its replica to take over the slots that hold the log up (default
    2, doubling each time); ``PAXOS_POLL_INTERVAL``, how often a client looks for its
    result when no prompt from this process wakes it (default 0.02); ``PAXOS_MODE``,
    ``basic`` (default) or ``multi`` (see :mod:`examples.paxos.modes`). With multi-Paxos,
    ``PAXOS_NUDGE_AFTER`` is also how long a client waits before its replica, if it does
    not lead, campaigns to lead (the leader may have stopped); ``PAXOS_BATCH``, the most
    commands in one slot (default 100); ``PAXOS_PIPELINE``, the most slots a leader has in
    flight (default 4); ``PAXOS_READS``, ``lease`` (default) to read from the leader's store
    under its lease, taking no slot, or ``log`` to read through the log as basic Paxos
    does; ``PAXOS_LEASE``, the lease's seconds (default 1), and ``PAXOS_CLOCK_ERROR``, the
    most the clocks of the processes differ by (default 0.1), which must be less (see
    :mod:`examples.paxos.reads`).
    """

    replica_names: ClassVar[tuple[str, ...]] = ()
    # What the policy acts on; the rest of the logs (the state machine's events, notes of
    # messages received) is passed over in the query, with nothing recorded for it.
    topics = tuple(
        get_topic(cls)
        for cls in (
            Request.Submitted,
            Request.Nudged,
            Slot.Prepared,
            Slot.Promised,
            Slot.Refused,
            Slot.AcceptRequested,
            Slot.Accepted,
            Slot.Chosen,
            # Multi-Paxos (PAXOS_MODE=multi).
            Request.Reminded,
            Ledger.Campaigned,
            Ledger.Promised,
            Ledger.Refused,
            Ledger.Proposed,
            Ledger.Accepted,
            Ledger.Chosen,
        )
    )
    # The store's snapshots are the compaction of the log: a replica loads its store from
    # the last one (with multi-Paxos, every 100 slots; the ledger holds only the slots in
    # flight, and is snapshotted as often).
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Store: 100, Ledger: 100}

    def __init__(self, env: EnvType | None = None) -> None:
        """Construct the replica (its index and quorum come from ``replica_names``)."""
        if self.name not in self.replica_names:
            msg = (
                f"{type(self).__name__} is not one of the replicas {self.replica_names}: "
                "make replica classes with examples.paxos.system.replica_class(index, size)"
            )
            raise ProgrammingError(msg)
        super().__init__(env)
        self.index = self.replica_names.index(self.name)
        self.quorum = len(self.replica_names) // 2 + 1
        self.timeout = self._seconds("PAXOS_TIMEOUT", 30.0)
        self.nudge_after = self._seconds("PAXOS_NUDGE_AFTER", 2.0)
        self.poll_interval = self._seconds("PAXOS_POLL_INTERVAL", 0.02)
        self._recorded = threading.Condition()
        self._recordings = 0  # counts saves in this process, to wake waiting clients
        self._next_free_slot: int | None = None  # the policy's guess; checked before use
        self.mode = paxos_mode(self.env.get(SETTING), f"{SETTING} for {self.name!r}")
        lease = self._seconds("PAXOS_LEASE", 1.0)
        clock_error = self._seconds("PAXOS_CLOCK_ERROR", 0.1)
        if clock_error >= lease:
            msg = (
                f"PAXOS_CLOCK_ERROR ({clock_error} s) is not less than PAXOS_LEASE ({lease} s) "
                f"for {self.name!r}: no lease would ever hold; lengthen the lease"
            )
            raise ValueError(msg)
        self._multi = MultiPaxos(
            self, self._count("PAXOS_PIPELINE", 4), self._count("PAXOS_BATCH", 100), lease
        )
        reads = (self.env.get("PAXOS_READS") or LEASE).strip().lower()
        if reads not in READS:
            msg = f"Invalid PAXOS_READS value {reads!r} for {self.name!r}: use one of {READS}"
            raise ValueError(msg)
        self._reader = (
            LeaseReader(self, lease, clock_error) if self.mode == MULTI and reads == LEASE else None
        )

    def _count(self, key: str, default: int) -> int:
        value = self.env.get(key)
        if not value:
            return default
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            msg = f"Invalid {key} value {value!r} for {self.name!r}: set a positive integer"
            raise ValueError(msg)
        return count

    def _seconds(self, key: str, default: float) -> float:
        value = self.env.get(key)
        if not value:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if seconds <= 0:
            msg = f"Invalid {key} value {value!r} for {self.name!r}: set a positive number"
            raise ValueError(msg)
        return seconds

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        """Also store ballots and commands."""
        super().register_transcodings(transcoder)
        transcoder.register(BallotAsList())
        transcoder.register(CommandAsDict())
        transcoder.register(EntryAsDict())
        transcoder.register(WindowAsList())

    # -- the key-value store -----------------------------------------------------------

    def put(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``."""
        self.execute(self.command("put", key, value=value))

    def get(self, key: str) -> str | None:
        """The value of ``key`` (None if it is not set): as of the slot the read takes, or,
        with multi-Paxos, from the leader's store under its lease (``PAXOS_READS``)."""
        command = self.command("get", key)
        if self._reader is not None:
            served, value = self._reader.read(key)
            if served:
                return value
        result = self.execute(command)
        assert result is None or isinstance(result, str)
        return result

    def delete(self, key: str) -> None:
        """Remove ``key`` (if set)."""
        self.execute(self.command("delete", key))

    def cas(self, key: str, expected: str | None, new: str) -> bool:
        """Set ``key`` to ``new`` if its value is ``expected`` (None: if it is not set).

        Returns whether it was set.
        """
        return bool(self.execute(self.command("cas", key, value=new, expected=expected)))

    def command(
        self, op: str, key: str, *, value: str | None = None, expected: str | None = None
    ) -> Command:
        """A new command, with a new request id."""
        for name, text in (("key", key), ("value", value), ("expected value", expected)):
            if text is not None and (not isinstance(text, str) or (name == "key" and not text)):
                msg = f"The {name} must be a non-empty string, not {text!r}"
                raise InvalidKeyError(msg)
        request_id = f"{self.name}/{uuid.uuid4().hex}"
        return Command(request_id, op, key, value, expected)

    def execute(self, command: Command, timeout: float | None = None) -> Result:
        """Submit ``command`` and return its result once this replica has applied it.

        Raises :class:`CommandTimeoutError` if that takes longer than ``timeout`` seconds
        (default ``PAXOS_TIMEOUT``); the command may still be applied later.
        """
        self.submit(command)
        return self.wait_for(command.request_id, timeout).result

    def submit(self, command: Command) -> None:
        """Record the request in this replica's log, which its policy proposes from.

        Submitting the same request again does nothing more.
        """
        with contextlib.suppress(IntegrityError):  # submitted before: its Request exists
            self.save(Request(self.index, command))

    def wait_for(self, request_id: str, timeout: float | None = None) -> Receipt:
        """Wait until this replica has applied the request; nudge it now and then."""
        timeout = self.timeout if timeout is None else timeout
        started = time.monotonic()
        nudge_after = self.nudge_after
        next_nudge = started + nudge_after
        while True:
            seen = self._recordings
            receipt = self.receipt(request_id)
            if receipt is not None:
                return receipt
            now = time.monotonic()
            if now - started >= timeout:
                msg = (
                    f"Request {request_id} was not applied by {self.name} within {timeout} s: "
                    "is a majority of the replicas running? It may still be applied later"
                )
                raise CommandTimeoutError(msg)
            if now >= next_nudge:
                self.nudge(request_id)
                nudge_after *= 2
                next_nudge = now + nudge_after
            with self._recorded:
                if seen == self._recordings:
                    self._recorded.wait(self.poll_interval)

    def receipt(self, request_id: str) -> Receipt | None:
        """The receipt of the request, if this replica has applied it."""
        receipt: Receipt | None = self._find(Receipt.create_id(self.index, request_id))
        return receipt

    def nudge(self, request_id: str) -> None:
        """Ask this replica to take over the slots that hold the log up.

        It proposes again, with a higher ballot, in every slot it has heard of that is
        not chosen and where it is not proposing already (a proposer there may have
        stopped running, or nobody may have proposed there at all).
        """
        try:
            request: Request = self.repository.get(request_id_of(self.index, request_id))
            if self.mode == MULTI:
                request.remind()
            else:
                request.nudge()
            self.save(request)
        except IntegrityError:
            pass  # nudged by someone else meanwhile: once is enough

    def close(self) -> None:
        """Close the databases of this replica, and of others it read from."""
        reader = getattr(self, "_reader", None)  # None if construction failed before it
        if reader is not None:
            reader.close()
        super().close()

    def _notify(self, recordings: list[Recording[UUID]]) -> None:
        """Wake the clients waiting in this process, then prompt the followers."""
        with self._recorded:
            self._recordings += 1
            self._recorded.notify_all()
        super()._notify(recordings)

    # -- queries -------------------------------------------------------------------------

    def store(self) -> Store:
        """This replica's store (empty if nothing is applied yet)."""
        store: Store | None = self._find(Store.create_id(self.index))
        return store or Store(self.index)

    def ledger(self) -> Ledger:
        """Multi-Paxos: this replica's ledger (its role, ballot, and the slots in flight)."""
        return self._multi.ledger()

    def slot(self, number: int) -> Slot | None:
        """This replica's state for slot ``number``, if it has any."""
        slot: Slot | None = self._find(Slot.create_id(self.index, number))
        return slot

    def _find(self, aggregate_id: UUID) -> Any:
        """The aggregate, or None if there is none with that id."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def applied_count(self) -> int:
        """How far this replica has applied the log: slots (basic), requests (multi)."""
        store = self.store()
        return store.commands_applied if self.mode == MULTI else store.next_slot

    def applied_commands(self) -> list[Command]:
        """The commands applied so far, by slot (with multi-Paxos, in order within each)."""
        if self.mode == MULTI:
            return self._multi_applied_commands()
        commands = []
        for number in range(self.store().next_slot):
            slot = self.slot(number)
            assert slot is not None and slot.chosen is not None
            commands.append(slot.chosen)
        return commands

    def _multi_applied_commands(self) -> list[Command]:
        """The commands applied, from the store's history (its snapshots hold no log)."""
        events = self.repository.event_store.get(Store.create_id(self.index))
        commands: list[Command] = []
        slot_applied = Store.SlotApplied  # type: ignore[attr-defined]  # made by @event
        for store_event in events:
            if isinstance(store_event, slot_applied):
                commands.extend(store_event.commands)
        return commands

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        """Record; a batch of the policy that is recorded also commits its queue."""
        recordings = super()._record(processing_event)
        self._multi.recorded(processing_event)
        return recordings

    # -- the policy ----------------------------------------------------------------------

    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Other events need nothing done."""

    @policy.register
    def _submitted(self, event: Request.Submitted, processing_event: ProcessingEvent[UUID]) -> None:
        if self.mode == MULTI:
            self._multi.submitted(event.command, self._sender(processing_event), processing_event)
        elif self._sender(processing_event) == self.index:
            self._propose_in_new_slot(event.command, processing_event)

    @policy.register
    def _nudged(self, event: Request.Nudged, processing_event: ProcessingEvent[UUID]) -> None:
        if self._sender(processing_event) != self.index or self.mode == MULTI:
            return
        # Take over every slot not yet chosen here in which this replica is not proposing:
        # its proposer may have stopped, or nobody may have proposed in it at all.
        for number in range(self.store().next_slot, self._free_slot_guess()):
            self._update(number, processing_event, _take_over)

    @policy.register
    def _prepared(self, event: Slot.Prepared, processing_event: ProcessingEvent[UUID]) -> None:
        if self._sender(processing_event) != self.index:
            self._update(event.number, processing_event, lambda s: s.receive_prepare(event.ballot))

    @policy.register
    def _promised(self, event: Slot.Promised, processing_event: ProcessingEvent[UUID]) -> None:
        sender = self._sender(processing_event)
        if event.ballot.replica == self.index and sender != self.index:
            self._update(
                event.number,
                processing_event,
                lambda s: s.receive_promise(
                    sender, event.ballot, event.accepted_ballot, event.accepted_command
                ),
            )

    @policy.register
    def _refused(self, event: Slot.Refused, processing_event: ProcessingEvent[UUID]) -> None:
        if event.ballot.replica == self.index and self._sender(processing_event) != self.index:
            self._update(
                event.number,
                processing_event,
                lambda s: s.receive_refusal(event.ballot, event.promised),
            )

    @policy.register
    def _accept_requested(
        self, event: Slot.AcceptRequested, processing_event: ProcessingEvent[UUID]
    ) -> None:
        if self._sender(processing_event) != self.index:
            self._update(
                event.number,
                processing_event,
                lambda s: s.receive_accept_request(event.ballot, event.command),
            )

    @policy.register
    def _accepted(self, event: Slot.Accepted, processing_event: ProcessingEvent[UUID]) -> None:
        sender = self._sender(processing_event)
        if sender != self.index:
            self._update(
                event.number,
                processing_event,
                lambda s: s.receive_acceptance(
                    event.ballot, event.command, [sender, event.ballot.replica]
                ),
            )

    @policy.register
    def _chosen(self, event: Slot.Chosen, processing_event: ProcessingEvent[UUID]) -> None:
        if self._sender(processing_event) != self.index:
            self._update(
                event.number, processing_event, lambda s: s.learn(event.ballot, event.command)
            )

    # -- the policy, multi-Paxos (examples.paxos.multipaxos) -------------------------------

    @policy.register
    def _reminded(self, event: Request.Reminded, processing_event: ProcessingEvent[UUID]) -> None:
        if self.mode == MULTI:
            self._multi.reminded(event.command, self._sender(processing_event), processing_event)

    @policy.register
    def _campaigned(
        self, event: Ledger.Campaigned, processing_event: ProcessingEvent[UUID]
    ) -> None:
        if self._sender(processing_event) != self.index:
            self._multi.act(
                processing_event,
                lambda ledger: ledger.receive_campaign(
                    event.ballot, event.from_slot, time.time(), self._multi.lease
                ),
            )

    @policy.register
    def _multi_promised(
        self, event: Ledger.Promised, processing_event: ProcessingEvent[UUID]
    ) -> None:
        sender = self._sender(processing_event)
        if event.ballot.replica == self.index and sender != self.index:
            self._multi.act(
                processing_event,
                lambda ledger: ledger.receive_promise(
                    sender, event.ballot, event.entries, event.applied_below
                ),
            )

    @policy.register
    def _multi_refused(
        self, event: Ledger.Refused, processing_event: ProcessingEvent[UUID]
    ) -> None:
        if event.ballot.replica == self.index and self._sender(processing_event) != self.index:
            self._multi.act(
                processing_event,
                lambda ledger: ledger.receive_refusal(event.ballot, event.promised),
            )

    @policy.register
    def _proposed(self, event: Ledger.Proposed, processing_event: ProcessingEvent[UUID]) -> None:
        if self._sender(processing_event) != self.index:
            self._multi.act(
                processing_event,
                lambda ledger: ledger.receive_proposal(event.number, event.ballot, event.batch),
            )

    @policy.register
    def _multi_accepted(
        self, event: Ledger.Accepted, processing_event: ProcessingEvent[UUID]
    ) -> None:
        sender = self._sender(processing_event)
        if sender != self.index:
            self._multi.act(
                processing_event,
                lambda ledger: ledger.receive_acceptance(
                    event.number, event.ballot, event.batch, [sender, event.ballot.replica]
                ),
            )

    @policy.register
    def _multi_chosen(self, event: Ledger.Chosen, processing_event: ProcessingEvent[UUID]) -> None:
        if self._sender(processing_event) != self.index:
            self._multi.act(
                processing_event,
                lambda ledger: ledger.learn(event.number, event.ballot, event.batch),
            )

    # -- the policy's helpers ----------------------------------------------------------

    def _sender(self, processing_event: ProcessingEvent[UUID]) -> int:
        assert processing_event.tracking is not None
        return self.replica_names.index(processing_event.tracking.application_name)

    def _update(
        self, number: int, processing_event: ProcessingEvent[UUID], action: Callable[[Slot], None]
    ) -> None:
        """Do ``action`` on slot ``number`` (opened if new); act on a newly chosen command."""
        slot = self._policy_slot(number)
        was_chosen = slot.chosen is not None
        action(slot)
        processing_event.collect_events(slot)
        if not was_chosen and slot.chosen is not None:
            self._after_choosing(slot, processing_event)

    def _policy_slot(self, number: int) -> Slot:
        self._next_free_slot = max(self._free_slot_guess(), number + 1)
        return self.slot(number) or Slot(self.index, number, self.quorum)

    def _after_choosing(self, slot: Slot, processing_event: ProcessingEvent[UUID]) -> None:
        """Propose our command again if it lost the slot; apply what can be applied."""
        lost = slot.lost_command
        if lost is not None:
            self._propose_in_new_slot(lost, processing_event)
        self._apply_chosen(processing_event)

    def _propose_in_new_slot(
        self, command: Command, processing_event: ProcessingEvent[UUID]
    ) -> None:
        number = self._free_slot_guess()
        while self.slot(number) is not None:
            number += 1
        self._update(number, processing_event, lambda s: s.propose(command))

    def _free_slot_guess(self) -> int:
        """One after the highest slot this replica has heard of.

        After a restart, the first slot from the first one not applied for which this
        replica has no state (the slots in progress come before it).
        """
        if self._next_free_slot is None:
            number = self.store().next_slot
            while self.slot(number) is not None:
                number += 1
            self._next_free_slot = number
        return self._next_free_slot

    def _apply_chosen(self, processing_event: ProcessingEvent[UUID]) -> None:
        """Apply chosen commands in slot order, from the first slot not applied yet."""
        store = self.store()
        while (slot := self.slot(store.next_slot)) is not None and slot.chosen is not None:
            command = slot.chosen
            if command.op != "noop" and self.receipt(command.request_id) is not None:
                store.skip_duplicate(slot.number, command)
                continue
            result = store.result_of(command)
            store.apply_command(slot.number, command)
            if command.op != "noop":
                processing_event.collect_events(
                    Receipt(self.index, command.request_id, slot.number, result)
                )
        processing_event.collect_events(store)


def _take_over(slot: Slot) -> None:
    """Propose again in a slot not chosen, unless proposing there already."""
    if slot.chosen is None and not slot.is_proposing:
        slot.propose()

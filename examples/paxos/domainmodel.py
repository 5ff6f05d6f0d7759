"""Paxos for a replicated log: one replica's part in choosing the command of each slot.

Each replica keeps one :class:`Slot` aggregate per slot of the log, holding its three roles
in that slot's instance of Paxos (Lamport, "Paxos Made Simple"):

- *proposer*: takes a ballot higher than any it has seen and asks for promises (phase 1),
  then asks the acceptors to accept the command that the promises oblige it to propose: the
  one accepted with the highest ballot, if any, else its own (phase 2);
- *acceptor*: promises never to accept a ballot lower than the highest it was asked to
  promise, reporting what it has accepted so far, and accepts any ballot not lower than it
  promised; it refuses the rest, naming the higher ballot it promised (a nack);
- *learner*: counts acceptances per ballot; a command is chosen once a majority of the
  replicas accepted it in one ballot.

Every event of a slot is a message of the protocol, or a note of a message received, and
the other replicas read it from this replica's log. So a message is sent by being recorded:
nobody hears of a promise or an acceptance before the acceptor's state is durable.

A proposer that learns of a higher ballot stops proposing in that slot; the highest ballot
goes on to be chosen (see :class:`Slot`). Commands carry a unique request id, so that one
retried in a later slot is recognised if it comes round twice.

:class:`Request`, :class:`Store` and :class:`Receipt` are the replicated state machine
around the log: a client's request, the key-value store that chosen commands are applied
to in slot order, and the result of each applied request.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

NAMESPACE = UUID("6c1b3f0e-5a7d-5b6e-9c1a-7f0d8e2b4a90")
"""The namespace of every aggregate id of the example (ids are uuid5 of names in it)."""

OPERATIONS = ("put", "get", "delete", "cas", "noop")

Result = str | bool | None
"""What a command returns: a value for ``get``, whether it applied for ``cas``, else None."""


@dataclass(frozen=True, order=True)
class Ballot:
    """A proposal number: ordered by round, then by the proposing replica's index.

    Each replica proposes only with its own index, so no two replicas share a ballot.
    """

    round: int
    replica: int

    def __str__(self) -> str:
        """Round and replica, as in ``2.1``."""
        return f"{self.round}.{self.replica}"


@dataclass(frozen=True)
class Command:
    """An operation on the key-value store, as a client asked for it.

    ``request_id`` is unique per request: a command proposed again after losing its slot
    keeps it, so it is recognised (and applied once) if it is chosen twice.
    """

    request_id: str
    op: str
    key: str = ""
    value: str | None = None
    expected: str | None = None

    def __post_init__(self) -> None:
        """Reject operations the store does not have."""
        if self.op not in OPERATIONS:
            msg = f"Unknown operation {self.op!r}: use one of {', '.join(OPERATIONS)}"
            raise ValueError(msg)

    @classmethod
    def noop(cls, request_id: str) -> Command:
        """A command that changes nothing: it fills a slot that nobody else would fill."""
        return cls(request_id=request_id, op="noop")

    def __str__(self) -> str:
        """The operation as a person would write it, e.g. ``cas x 1->2``."""
        if self.op == "put":
            return f"put {self.key}={self.value}"
        if self.op == "cas":
            return f"cas {self.key} {self.expected}->{self.value}"
        if self.op == "noop":
            return "noop"
        return f"{self.op} {self.key}"


# The proposer's phases in a slot.
IDLE = "idle"  # has not proposed here
PREPARING = "preparing"  # asked for promises (phase 1)
ACCEPTING = "accepting"  # asked for acceptance (phase 2)
OUTBID = "outbid"  # saw a higher ballot: stopped proposing here
ACTIVE = (PREPARING, ACCEPTING)

Promise = tuple[Ballot | None, Command | None]  # what an acceptor had accepted, if anything


class Slot(Aggregate):
    """One replica's proposer, acceptor and learner for one slot of the log.

    Command methods named ``receive_*`` are called with the messages of other replicas;
    each records what this replica does in reply (or nothing, for a message that needs no
    reply). A proposer that sees a higher ballot (promising it, or refused because of it)
    stops; so in each slot the highest ballot is never refused and is chosen, unless its
    proposer stops running, in which case another replica takes the slot over with a higher
    ballot (:meth:`propose` again).
    """

    class Message(Aggregate.Event):
        """An event of a slot that other replicas act on: it names the slot."""

        number: int

    @staticmethod
    def create_id(replica: int, number: int) -> UUID:
        """Replica ``replica``'s slot ``number``."""
        return uuid5(NAMESPACE, f"replica-{replica}/slot-{number}")

    @event("Opened")
    def __init__(self, replica: int, number: int, quorum: int) -> None:
        self.replica = replica
        self.number = number
        self.quorum = quorum
        self.highest_round = 0
        # Acceptor.
        self.promised: Ballot | None = None
        self.accepted_ballot: Ballot | None = None
        self.accepted_command: Command | None = None
        # Proposer: its ballot, the command it wants chosen here, the promises it has.
        self.phase = IDLE
        self.ballot: Ballot | None = None
        self.command: Command | None = None
        self.promises: dict[int, Promise] = {}
        # Learner: who accepted each ballot, and what was chosen.
        self.votes: dict[Ballot, set[int]] = {}
        self.chosen: Command | None = None
        self.chosen_ballot: Ballot | None = None

    # -- what the events do -------------------------------------------------------------

    def _see(self, ballot: Ballot) -> None:
        """Note a ballot; a higher one than ours stops our proposing here."""
        self.highest_round = max(self.highest_round, ballot.round)
        if self.phase in ACTIVE and self.ballot is not None and ballot > self.ballot:
            self.phase = OUTBID

    def _accept(self, ballot: Ballot, command: Command) -> None:
        self._see(ballot)
        self.promised = ballot
        self.accepted_ballot = ballot
        self.accepted_command = command
        # The proposer accepted its own ballot before asking anyone else to.
        self.votes.setdefault(ballot, set()).update((self.replica, ballot.replica))

    class Prepared(Message):
        """Phase 1a: this replica asked for promises for ``ballot`` (and promised it)."""

        ballot: Ballot
        command: Command | None

        def apply(self, slot: Slot) -> None:
            """Start the ballot, with this replica's own promise."""
            slot.highest_round = max(slot.highest_round, self.ballot.round)
            slot.phase = PREPARING
            slot.ballot = self.ballot
            if self.command is not None:
                slot.command = self.command
            slot.promised = self.ballot
            slot.promises = {slot.replica: (slot.accepted_ballot, slot.accepted_command)}

    class Promised(Message):
        """Phase 1b: this replica promised ``ballot``, reporting what it had accepted."""

        ballot: Ballot
        accepted_ballot: Ballot | None
        accepted_command: Command | None

        def apply(self, slot: Slot) -> None:
            """Promise."""
            slot._see(self.ballot)
            slot.promised = self.ballot

    class Refused(Message):
        """A nack: this replica refused ``ballot``, having promised the higher ``promised``."""

        ballot: Ballot
        promised: Ballot

        def apply(self, slot: Slot) -> None:
            """Nothing changes here: the refusal is for the proposer of ``ballot``."""

    class PromiseReceived(Message):
        """The proposer noted a promise for its ballot (not yet from a majority)."""

        ballot: Ballot
        acceptor: int
        accepted_ballot: Ballot | None
        accepted_command: Command | None

        def apply(self, slot: Slot) -> None:
            """Count the promise."""
            slot.promises[self.acceptor] = (self.accepted_ballot, self.accepted_command)

    class Outbid(Message):
        """The proposer was refused because of the higher ballot ``by``, and stopped."""

        ballot: Ballot
        by: Ballot

        def apply(self, slot: Slot) -> None:
            """Stop proposing here."""
            slot.highest_round = max(slot.highest_round, self.by.round)
            slot.phase = OUTBID

    class AcceptRequested(Message):
        """Phase 2a: a majority promised ``ballot``; this replica accepted ``command`` in
        it and asks the others to."""

        ballot: Ballot
        command: Command

        def apply(self, slot: Slot) -> None:
            """Accept our own proposal."""
            slot.phase = ACCEPTING
            slot._accept(self.ballot, self.command)

    class Accepted(Message):
        """Phase 2b: this replica accepted ``command`` in ``ballot``."""

        ballot: Ballot
        command: Command

        def apply(self, slot: Slot) -> None:
            """Accept."""
            slot._accept(self.ballot, self.command)

    class VotesCounted(Message):
        """The learner noted that ``voters`` accepted ``ballot`` (not yet a majority)."""

        ballot: Ballot
        voters: list[int]

        def apply(self, slot: Slot) -> None:
            """Count the votes."""
            slot.votes.setdefault(self.ballot, set()).update(self.voters)

    class Chosen(Message):
        """The learner learned that ``command`` was chosen (in ``ballot``)."""

        ballot: Ballot
        command: Command

        def apply(self, slot: Slot) -> None:
            """Learn the command."""
            slot.chosen = self.command
            slot.chosen_ballot = self.ballot

    # -- proposer ------------------------------------------------------------------------

    @property
    def is_proposing(self) -> bool:
        """Whether this replica's proposer is still at work here."""
        return self.phase in ACTIVE and self.chosen is None

    @property
    def lost_command(self) -> Command | None:
        """This replica's command, if another command was chosen here instead."""
        chosen, command = self.chosen, self.command
        if chosen is None or command is None or chosen.request_id == command.request_id:
            return None
        return command

    def propose(self, command: Command | None = None) -> None:
        """Start a ballot higher than any seen here, to get a command chosen.

        ``command`` is this replica's; without one, a slot taken over keeps the command
        proposed here before, or else gets a no-op.
        """
        ballot = Ballot(self.highest_round + 1, self.replica)
        self.trigger_event(self.Prepared, number=self.number, ballot=ballot, command=command)
        if len(self.promises) >= self.quorum:
            self._request_acceptance()

    def receive_promise(
        self,
        acceptor: int,
        ballot: Ballot,
        accepted_ballot: Ballot | None,
        accepted_command: Command | None,
    ) -> None:
        """Count a promise for our ballot; with a majority, go on to phase 2."""
        if self.phase != PREPARING or ballot != self.ballot or acceptor in self.promises:
            return
        if len(self.promises) + 1 < self.quorum:
            self.trigger_event(
                self.PromiseReceived,
                number=self.number,
                ballot=ballot,
                acceptor=acceptor,
                accepted_ballot=accepted_ballot,
                accepted_command=accepted_command,
            )
            return
        self.promises = {**self.promises, acceptor: (accepted_ballot, accepted_command)}
        self._request_acceptance()

    def _request_acceptance(self) -> None:
        """Propose the command accepted with the highest ballot, else our own, else a no-op."""
        assert self.ballot is not None
        reported = [(b, c) for b, c in self.promises.values() if b is not None and c is not None]
        if reported:
            command = max(reported, key=lambda accepted: accepted[0])[1]
        elif self.command is not None:
            command = self.command
        else:
            command = Command.noop(f"noop/{self.replica}/{self.number}/{self.ballot}")
        self.trigger_event(
            self.AcceptRequested, number=self.number, ballot=self.ballot, command=command
        )
        self._choose_if_majority(self.ballot, command)

    def receive_refusal(self, ballot: Ballot, promised: Ballot) -> None:
        """A nack of our ballot: stop proposing here."""
        if self.is_proposing and ballot == self.ballot:
            self.trigger_event(self.Outbid, number=self.number, ballot=ballot, by=promised)

    # -- acceptor ------------------------------------------------------------------------

    def receive_prepare(self, ballot: Ballot) -> None:
        """Promise a ballot higher than any promised, else refuse it."""
        if self.promised is None or ballot > self.promised:
            self.trigger_event(
                self.Promised,
                number=self.number,
                ballot=ballot,
                accepted_ballot=self.accepted_ballot,
                accepted_command=self.accepted_command,
            )
        elif ballot < self.promised:
            self._refuse(ballot, self.promised)

    def receive_accept_request(self, ballot: Ballot, command: Command) -> None:
        """Accept a ballot not lower than the one promised, else refuse it.

        Either way the proposer's own acceptance is counted.
        """
        if self.promised is None or ballot >= self.promised:
            self.trigger_event(self.Accepted, number=self.number, ballot=ballot, command=command)
            self._choose_if_majority(ballot, command)
        else:
            self._refuse(ballot, self.promised)
            self.receive_acceptance(ballot, command, [ballot.replica])

    def _refuse(self, ballot: Ballot, promised: Ballot) -> None:
        self.trigger_event(self.Refused, number=self.number, ballot=ballot, promised=promised)

    # -- learner -------------------------------------------------------------------------

    def receive_acceptance(self, ballot: Ballot, command: Command, voters: list[int]) -> None:
        """Count replicas that accepted ``ballot``; with a majority, the command is chosen."""
        if self.chosen is not None:
            return
        counted = self.votes.get(ballot, set())
        new = sorted(set(voters) - counted)
        if not new:
            return
        if len(counted) + len(new) >= self.quorum:
            self.learn(ballot, command)
        else:
            self.trigger_event(self.VotesCounted, number=self.number, ballot=ballot, voters=new)

    def _choose_if_majority(self, ballot: Ballot, command: Command) -> None:
        if self.chosen is None and len(self.votes.get(ballot, ())) >= self.quorum:
            self.learn(ballot, command)

    def learn(self, ballot: Ballot, command: Command) -> None:
        """Record the chosen command (once): from a majority's votes, or from a replica that
        learned it."""
        if self.chosen is None:
            self.trigger_event(self.Chosen, number=self.number, ballot=ballot, command=command)


class Request(Aggregate):
    """A client's command, submitted to one replica (which proposes it)."""

    @staticmethod
    def create_id(replica: int, command: Command) -> UUID:
        """One request per replica and request id."""
        return request_id_of(replica, command.request_id)

    class Submitted(Aggregate.Created):
        """A client submitted ``command`` to replica ``replica``."""

        replica: int
        command: Command

    class Nudged(Aggregate.Event):
        """The client has waited long for the result."""

        def apply(self, request: Request) -> None:
            """Count the nudge."""
            request.nudges += 1

    def __init__(self, replica: int, command: Command) -> None:
        self.replica = replica
        self.command = command
        self.nudges = 0

    class Reminded(Aggregate.Event):
        """Multi-Paxos: the client has waited long; ``command`` is sent again to the leader."""

        command: Command

        def apply(self, request: Request) -> None:
            """Count the reminder with the nudges."""
            request.nudges += 1

    def nudge(self) -> None:
        """The client has waited long: take over the slots that hold the log up."""
        self.trigger_event(self.Nudged)

    def remind(self) -> None:
        """Multi-Paxos: the client has waited long, so send the command to the leader again
        (and, at a follower, elect a new leader: the one it knew may have stopped)."""
        self.trigger_event(self.Reminded, command=self.command)


def request_id_of(replica: int, request_id: str) -> UUID:
    """The id of the :class:`Request` of ``request_id`` at replica ``replica``."""
    return uuid5(NAMESPACE, f"replica-{replica}/request/{request_id}")


class Receipt(Aggregate):
    """The result of a request, once a replica has applied its command."""

    @staticmethod
    def create_id(replica: int, request_id: str) -> UUID:
        """One receipt per replica and request id."""
        return uuid5(NAMESPACE, f"replica-{replica}/receipt/{request_id}")

    @event("Issued")
    def __init__(self, replica: int, request_id: str, slot: int, result: Result) -> None:
        self.replica = replica
        self.request_id = request_id
        self.slot = slot
        self.result = result


class Store(Aggregate):
    """One replica's key-value store: the chosen commands, applied in slot order.

    ``next_slot`` is the first slot not applied yet; no slot is ever skipped.
    """

    @staticmethod
    def create_id(replica: int) -> UUID:
        """One store per replica."""
        return uuid5(NAMESPACE, f"replica-{replica}/store")

    DEDUP_WINDOW = 10_000
    """Multi-Paxos: how many of the last request ids applied are remembered, to apply a
    request chosen twice (proposed again by a new leader, or after a reminder) once. A
    request is proposed again only while its client waits for it, within a few slots."""

    @event("Opened")
    def __init__(self, replica: int) -> None:
        self.replica = replica
        self.next_slot = 0
        self.data: dict[str, str] = {}
        self.recent: dict[str, int] = {}  # multi-Paxos: request id -> slot, the last ones
        self.commands_applied = 0  # multi-Paxos: requests applied (no duplicates, no no-ops)

    def fresh(self, commands: list[Command]) -> list[Command]:
        """Multi-Paxos: the commands of a batch not applied before (nor twice in it)."""
        seen = self.recent
        fresh: dict[str, Command] = {}
        for command in commands:
            if command.op != "noop" and command.request_id not in seen:
                fresh.setdefault(command.request_id, command)
        return list(fresh.values())

    def results_of(self, commands: list[Command]) -> list[Result]:
        """Multi-Paxos: what each command of a batch returns, applied in order from now."""
        values: dict[str, str | None] = {}
        results = []
        for command in commands:
            current = values[command.key] if command.key in values else self.data.get(command.key)
            values[command.key], result = _step(current, command)
            results.append(result)
        return results

    @event("SlotApplied")
    def apply_slot(self, slot: int, commands: list[Command], duplicates: int) -> None:
        """Multi-Paxos: apply the fresh commands of the batch chosen in ``slot`` (the next
        one); ``duplicates`` others were passed over."""
        self._check_next(slot)
        for command in commands:
            value, _ = _step(self.data.get(command.key), command)
            if value is None:
                self.data.pop(command.key, None)
            else:
                self.data[command.key] = value
            self.recent[command.request_id] = slot
        while len(self.recent) > self.DEDUP_WINDOW:
            del self.recent[next(iter(self.recent))]
        self.commands_applied += len(commands)
        self.next_slot = slot + 1

    def result_of(self, command: Command) -> Result:
        """What ``command`` returns if it is applied now."""
        current = self.data.get(command.key)
        if command.op == "get":
            return current
        if command.op == "cas":
            return current == command.expected
        return None

    @event("CommandApplied")
    def apply_command(self, slot: int, command: Command) -> None:
        """Apply the command chosen in ``slot`` (the next one)."""
        self._check_next(slot)
        if command.op == "put" or (command.op == "cas" and self.result_of(command)):
            assert command.value is not None
            self.data[command.key] = command.value
        elif command.op == "delete":
            self.data.pop(command.key, None)
        self.next_slot = slot + 1

    @event("DuplicateSkipped")
    def skip_duplicate(self, slot: int, command: Command) -> None:
        """Pass over a command chosen again (its request was applied in an earlier slot)."""
        self._check_next(slot)
        self.next_slot = slot + 1

    def _check_next(self, slot: int) -> None:
        if slot != self.next_slot:
            msg = f"Slot {slot} applied out of order: the next slot is {self.next_slot}"
            raise ValueError(msg)


def _step(current: str | None, command: Command) -> tuple[str | None, Result]:
    """A key's value after ``command``, and what the command returns."""
    if command.op == "put":
        return command.value, None
    if command.op == "delete":
        return None, None
    if command.op == "cas":
        applies = current == command.expected
        return (command.value if applies else current), applies
    return current, current if command.op == "get" else None

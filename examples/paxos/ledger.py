"""Multi-Paxos for a replicated log: one replica's part, for every slot at once.

In basic Paxos (:mod:`examples.paxos.domainmodel`) every slot runs both phases. Here a
replica becomes *leader* by running phase 1 once, for all slots from the first one it has
not applied ("Paxos Made Simple", section 3): a ballot promised by a majority binds their
acceptors for every later slot, so the leader proposes each slot of its term with phase 2
only, and many commands in one slot (a batch). Its ballot is its term; a candidate with a
higher ballot deposes it.

One :class:`Ledger` aggregate per replica holds its three roles:

- *acceptor*: one promise for all slots (``promised``); it accepts a proposal with a ballot
  not lower than that, and when it promises a candidate it reports what it accepted in
  every slot it has not applied, and the first slot it has not applied;
- *learner*: counts acceptances per slot in the highest ballot seen there; a batch is
  chosen once a majority accepted it in one ballot;
- *proposer*: follower, candidate or leader; a candidate counts promises, and once a
  majority promised, it proposes again, with its ballot, the batch accepted with the
  highest ballot in each slot reported (an empty batch, a no-op, where none was), and from
  then on its own batches in the slots after them.

Only the slots in flight are kept (``window``): a slot applied to the store is dropped from
it, so the ledger, like its snapshots, stays the size of the slots in flight, and the
store's snapshots hold the rest. A candidate therefore never proposes below the first slot
not applied by any replica that promised it (``applied_below`` in their promises): such a
slot is chosen, and the replica that applied it recorded ``Chosen`` in its log, which the
candidate reads like every log.

Every event is a message or a note, as in basic Paxos: sent by being recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Transcoding
from examples.paxos.domainmodel import NAMESPACE, Ballot, Command

# The proposer's roles.
FOLLOWER = "follower"
CANDIDATE = "candidate"  # asked for promises for all slots (phase 1)
LEADER = "leader"  # a majority promised: proposes with phase 2 only
ACTIVE = (CANDIDATE, LEADER)

Batch = list[Command]
"""The commands of one slot, applied in their order (empty: a no-op)."""


@dataclass
class Entry:
    """One slot in flight at one replica: what it accepted, the votes counted, the choice."""

    number: int
    accepted_ballot: Ballot | None = None
    accepted: Batch | None = None
    vote_ballot: Ballot | None = None
    voters: list[int] = field(default_factory=list)
    chosen: Batch | None = None
    proposed_at: float | None = None  # the leader's: when it proposed here (its clock)

    def accept(self, ballot: Ballot, batch: Batch, voters: tuple[int, ...]) -> None:
        """Accept ``batch`` in ``ballot``, with the votes that come with it."""
        self.accepted_ballot = ballot
        self.accepted = batch
        self.vote(ballot, voters)

    def vote(self, ballot: Ballot, voters: tuple[int, ...] | list[int]) -> None:
        """Count votes for ``ballot``; a higher ballot starts the count again."""
        if self.vote_ballot is None or ballot > self.vote_ballot:
            self.vote_ballot, self.voters = ballot, []
        if ballot == self.vote_ballot:
            self.voters = sorted({*self.voters, *voters})

    def new_voters(self, ballot: Ballot, voters: list[int]) -> list[int]:
        """Of ``voters`` for ``ballot``, those not counted yet (none for a lower ballot)."""
        if self.vote_ballot is not None and ballot < self.vote_ballot:
            return []
        counted = self.voters if ballot == self.vote_ballot else []
        return sorted(set(voters) - set(counted))

    def report(self) -> Entry | None:
        """What a promise reports of this slot: what was accepted, or else chosen."""
        if self.accepted is not None and self.accepted_ballot is not None:
            return Entry(self.number, self.accepted_ballot, self.accepted)
        if self.chosen is not None and self.vote_ballot is not None:
            return Entry(self.number, self.vote_ballot, self.chosen)
        return None


class Window:
    """The entries of the slots in flight at one replica, by slot number."""

    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries = {entry.number: entry for entry in entries or []}

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self.entries.values(), key=lambda entry: entry.number))

    def find(self, number: int) -> Entry | None:
        """The entry of slot ``number``, if there is one."""
        return self.entries.get(number)

    def entry(self, number: int) -> Entry:
        """The entry of slot ``number``, new if there was none."""
        found = self.entries.get(number)
        if found is None:
            found = self.entries[number] = Entry(number)
        return found

    def drop_below(self, number: int) -> None:
        """Forget the slots before ``number`` (applied)."""
        for gone in [n for n in self.entries if n < number]:
            del self.entries[gone]

    def reports_from(self, number: int) -> list[Entry]:
        """What a promise reports of the slots from ``number`` on."""
        reports = (entry.report() for entry in self if entry.number >= number)
        return [report for report in reports if report is not None]

    def merge(self, reports: list[Entry]) -> None:
        """Keep, in each slot, the report with the highest ballot (a candidate's count)."""
        for report in reports:
            mine = self.entries.get(report.number)
            assert report.accepted_ballot is not None
            if (
                mine is None
                or mine.accepted_ballot is None
                or (report.accepted_ballot > mine.accepted_ballot)
            ):
                self.entries[report.number] = report


class Ledger(Aggregate):
    """One replica's acceptor, learner and proposer for every slot of the log.

    Command methods named ``receive_*`` are called with other replicas' messages; each
    records this replica's reply, if any.
    """

    class Message(Aggregate.Event):
        """An event of a ledger that other replicas act on."""

    @staticmethod
    def create_id(replica: int) -> UUID:
        """Replica ``replica``'s ledger."""
        return uuid5(NAMESPACE, f"replica-{replica}/ledger")

    @event("Opened")
    def __init__(self, replica: int, quorum: int) -> None:
        self.replica = replica
        self.quorum = quorum
        self.highest_round = 0
        self.promised: Ballot | None = None  # acceptor: for every slot
        self.leader: int | None = None  # the replica of the highest ballot seen, a hint
        # Proposer.
        self.role = FOLLOWER
        self.ballot: Ballot | None = None
        self.from_slot = 0
        self.promised_by: list[int] = []
        self.reports = Window()  # a candidate's count of what the promises reported
        self.reported_applied = 0
        self.next_slot = 0  # the leader's next slot to propose in
        # Learner, and the slots in flight.
        self.applied_below = 0
        self.window = Window()
        # The lease: the acceptor's grant (to whom, since when by its clock), and the
        # leader's (when it proposed the latest slot of its term chosen, by its clock).
        self.granted_to: int | None = None
        self.granted_at = 0.0
        self.lease_from = 0.0

    # -- what the events do -------------------------------------------------------------

    def _see(self, ballot: Ballot) -> None:
        """Note a ballot; a higher one than ours ends our candidacy or our term."""
        self.highest_round = max(self.highest_round, ballot.round)
        if self.role in ACTIVE and self.ballot is not None and ballot > self.ballot:
            self.role = FOLLOWER
            self.leader = ballot.replica
            self.lease_from = 0.0

    def _promise(self, ballot: Ballot) -> None:
        self._see(ballot)
        if self.promised is None or ballot > self.promised:
            self.promised = ballot
            self.leader = ballot.replica

    def _accept(self, number: int, ballot: Ballot, batch: Batch, at: float) -> None:
        self._promise(ballot)
        # Accepting grants the proposer a lease: no promise to another before it ends.
        self.granted_to, self.granted_at = ballot.replica, max(self.granted_at, at)
        if number >= self.applied_below:
            # The proposer accepted its own proposal before asking anyone else to.
            self.window.entry(number).accept(ballot, batch, (self.replica, ballot.replica))

    class Campaigned(Message):
        """Phase 1a for all slots from ``from_slot``: this replica asks for promises for
        ``ballot`` (and promised it)."""

        ballot: Ballot
        from_slot: int

        def apply(self, ledger: Ledger) -> None:
            """Start the candidacy, with this replica's own promise and report."""
            ledger._promise(self.ballot)
            ledger.role = CANDIDATE
            ledger.ballot = self.ballot
            ledger.from_slot = self.from_slot
            ledger.promised_by = [ledger.replica]
            ledger.reports = Window(ledger.window.reports_from(self.from_slot))
            ledger.reported_applied = ledger.applied_below

    class Promised(Message):
        """Phase 1b: this replica promised ``ballot`` for every slot, reporting what it
        accepted from ``from_slot`` on and the first slot it has not applied."""

        ballot: Ballot
        from_slot: int
        entries: list[Entry]
        applied_below: int

        def apply(self, ledger: Ledger) -> None:
            """Promise."""
            ledger._promise(self.ballot)

    class PromiseNoted(Message):
        """The candidate counted ``acceptor``'s promise and report."""

        ballot: Ballot
        acceptor: int
        entries: list[Entry]
        applied_below: int

        def apply(self, ledger: Ledger) -> None:
            """Count the promise and merge the report."""
            ledger.promised_by = sorted({*ledger.promised_by, self.acceptor})
            ledger.reports.merge(self.entries)
            ledger.reported_applied = max(ledger.reported_applied, self.applied_below)

    class Elected(Message):
        """A majority promised ``ballot``: this replica leads, from ``next_slot``."""

        ballot: Ballot
        next_slot: int

        def apply(self, ledger: Ledger) -> None:
            """Lead."""
            ledger.role = LEADER
            ledger.leader = ledger.replica
            ledger.next_slot = self.next_slot
            ledger.lease_from = 0.0

    class Refused(Message):
        """A nack: this replica refused ``ballot``, having promised the higher ``promised``."""

        ballot: Ballot
        promised: Ballot

        def apply(self, ledger: Ledger) -> None:
            """Nothing changes here: the refusal is for the proposer of ``ballot``."""

    class Deposed(Message):
        """Refused because of the higher ballot ``by``, this candidate or leader stopped."""

        ballot: Ballot
        by: Ballot

        def apply(self, ledger: Ledger) -> None:
            """Follow."""
            ledger.highest_round = max(ledger.highest_round, self.by.round)
            ledger.role = FOLLOWER
            ledger.leader = self.by.replica
            ledger.lease_from = 0.0

    class Proposed(Message):
        """Phase 2a: the leader accepted ``batch`` in slot ``number`` in its ``ballot``, and
        asks the others to."""

        number: int
        ballot: Ballot
        batch: Batch

        def apply(self, ledger: Ledger) -> None:
            """Accept our own proposal; the next proposal takes the next slot."""
            at = self.timestamp.timestamp()
            ledger._accept(self.number, self.ballot, self.batch, at)
            ledger.next_slot = max(ledger.next_slot, self.number + 1)
            entry = ledger.window.find(self.number)
            if entry is not None:
                entry.proposed_at = at

    class Accepted(Message):
        """Phase 2b: this replica accepted ``batch`` in slot ``number`` in ``ballot``."""

        number: int
        ballot: Ballot
        batch: Batch

        def apply(self, ledger: Ledger) -> None:
            """Accept."""
            ledger._accept(self.number, self.ballot, self.batch, self.timestamp.timestamp())

    class VotesCounted(Message):
        """The learner counted ``voters`` for ``ballot`` in slot ``number`` (no majority)."""

        number: int
        ballot: Ballot
        voters: list[int]

        def apply(self, ledger: Ledger) -> None:
            """Count the votes."""
            if self.number >= ledger.applied_below:
                ledger.window.entry(self.number).vote(self.ballot, self.voters)

    class Chosen(Message):
        """The learner learned that ``batch`` was chosen in slot ``number``."""

        number: int
        ballot: Ballot
        batch: Batch

        def apply(self, ledger: Ledger) -> None:
            """Learn the batch."""
            if self.number >= ledger.applied_below:
                entry = ledger.window.entry(self.number)
                entry.chosen = self.batch
                if entry.vote_ballot is None:
                    entry.vote_ballot = self.ballot
                # A majority accepted the leader's proposal: its lease runs from then.
                if ledger.is_leader and self.ballot == ledger.ballot and entry.proposed_at:
                    ledger.lease_from = max(ledger.lease_from, entry.proposed_at)

    class Applied(Message):
        """The store applied every slot before ``below``: they leave the window."""

        below: int

        def apply(self, ledger: Ledger) -> None:
            """Forget the applied slots."""
            ledger.applied_below = self.below
            ledger.window.drop_below(self.below)

    # -- proposer ------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads (as far as it knows)."""
        return self.role == LEADER

    @property
    def role_active(self) -> bool:
        """Whether this replica is campaigning or leading."""
        return self.role in ACTIVE

    @property
    def in_flight(self) -> int:
        """How many of the leader's slots are proposed and not applied here yet."""
        return max(0, self.next_slot - self.applied_below)

    def granting(self, to_other_than: int, now: float, lease: float) -> bool:
        """Whether this acceptor's lease to a replica other than ``to_other_than`` holds
        ``now`` (by this replica's clock): until it ends, it promises nobody else."""
        holder = self.granted_to
        return holder is not None and holder != to_other_than and now < self.granted_at + lease

    def lease_holds(self, now: float, lease: float, clock_error: float) -> bool:
        """Whether this leader's lease holds ``now``: no other replica can lead before it
        ends, if clocks differ by less than ``clock_error`` seconds."""
        return self.is_leader and now < self.lease_from + lease - clock_error

    def campaign(self, now: float = 0.0, lease: float = 0.0) -> None:
        """Ask for promises for all slots not applied here, with a ballot above any seen.

        Not while this replica's own lease to another replica holds (see :meth:`granting`).
        """
        if self.granting(self.replica, now, lease):
            return
        ballot = Ballot(self.highest_round + 1, self.replica)
        self.trigger_event(self.Campaigned, ballot=ballot, from_slot=self.applied_below)
        if len(self.promised_by) >= self.quorum:
            self._elect()

    def receive_promise(
        self, acceptor: int, ballot: Ballot, entries: list[Entry], applied_below: int
    ) -> None:
        """Count a promise for our ballot; with a majority, lead."""
        if self.role != CANDIDATE or ballot != self.ballot or acceptor in self.promised_by:
            return
        self.trigger_event(
            self.PromiseNoted,
            ballot=ballot,
            acceptor=acceptor,
            entries=entries,
            applied_below=applied_below,
        )
        if len(self.promised_by) >= self.quorum:
            self._elect()

    def _elect(self) -> None:
        """Lead; propose again what was reported, filling the gaps with no-ops."""
        assert self.ballot is not None
        start = max(self.from_slot, self.reported_applied)
        reported = {entry.number: entry for entry in self.reports if entry.number >= start}
        end = max(reported, default=start - 1) + 1
        self.trigger_event(self.Elected, ballot=self.ballot, next_slot=start)
        for number in range(start, end):
            entry = reported.get(number)
            self.propose((entry.accepted or []) if entry is not None else [])

    def propose(self, batch: Batch) -> int:
        """As leader, propose ``batch`` in the next slot; return the slot's number."""
        assert self.role == LEADER and self.ballot is not None
        number = self.next_slot
        self.trigger_event(self.Proposed, number=number, ballot=self.ballot, batch=batch)
        self._choose_if_majority(number)
        return number

    def receive_refusal(self, ballot: Ballot, promised: Ballot) -> None:
        """A nack of our ballot: stop campaigning, or leading."""
        if self.role in ACTIVE and ballot == self.ballot:
            self.trigger_event(self.Deposed, ballot=ballot, by=promised)

    # -- acceptor ------------------------------------------------------------------------

    def receive_campaign(
        self, ballot: Ballot, from_slot: int, now: float = 0.0, lease: float = 0.0
    ) -> None:
        """Promise a ballot higher than any promised, reporting; else refuse it.

        While a lease this acceptor granted to another replica holds, say nothing: the
        candidate campaigns again later.
        """
        if self.granting(ballot.replica, now, lease):
            return
        if self.promised is None or ballot > self.promised:
            self.trigger_event(
                self.Promised,
                ballot=ballot,
                from_slot=from_slot,
                entries=self.window.reports_from(from_slot),
                applied_below=self.applied_below,
            )
        elif ballot < self.promised:
            self._refuse(ballot)

    def receive_proposal(self, number: int, ballot: Ballot, batch: Batch) -> None:
        """Accept a proposal with a ballot not lower than the one promised, else refuse it."""
        if self.promised is None or ballot >= self.promised:
            self.trigger_event(self.Accepted, number=number, ballot=ballot, batch=batch)
            self._choose_if_majority(number)
        else:
            self._refuse(ballot)

    def _refuse(self, ballot: Ballot) -> None:
        assert self.promised is not None
        self.trigger_event(self.Refused, ballot=ballot, promised=self.promised)

    # -- learner -------------------------------------------------------------------------

    def receive_acceptance(
        self, number: int, ballot: Ballot, batch: Batch, voters: list[int]
    ) -> None:
        """Count replicas that accepted ``ballot`` in slot ``number``; a majority chooses."""
        if number < self.applied_below:
            return
        entry = self.window.entry(number)
        if entry.chosen is not None:
            return
        new = entry.new_voters(ballot, voters)
        if not new:
            return
        counted = len(entry.voters) if ballot == entry.vote_ballot else 0
        if counted + len(new) >= self.quorum:
            self.learn(number, ballot, batch)
        else:
            self.trigger_event(self.VotesCounted, number=number, ballot=ballot, voters=new)

    def _choose_if_majority(self, number: int) -> None:
        entry = self.window.find(number)
        if entry is None or entry.chosen is not None or entry.accepted is None:
            return
        if entry.vote_ballot == entry.accepted_ballot and len(entry.voters) >= self.quorum:
            assert entry.vote_ballot is not None
            self.learn(number, entry.vote_ballot, entry.accepted)

    def learn(self, number: int, ballot: Ballot, batch: Batch) -> None:
        """Record the chosen batch of slot ``number`` (once)."""
        if number < self.applied_below:
            return
        entry = self.window.find(number)
        if entry is None or entry.chosen is None:
            self.trigger_event(self.Chosen, number=number, ballot=ballot, batch=batch)

    def chosen(self, number: int) -> Batch | None:
        """The batch chosen in slot ``number``, if this replica knows it (and kept it)."""
        entry = self.window.find(number)
        return None if entry is None else entry.chosen

    def record_applied(self, below: int) -> None:
        """Note that the store applied every slot before ``below``."""
        if below > self.applied_below:
            self.trigger_event(self.Applied, below=below)


class EntryAsDict(Transcoding):
    """Stores an :class:`Entry` as a dict of its fields."""

    type = Entry
    name = "paxos_entry"

    def encode(self, obj: Entry) -> dict[str, Any]:
        """The fields."""
        return dict(obj.__dict__)

    def decode(self, data: dict[str, Any]) -> Entry:
        """The entry."""
        return Entry(**data)


class WindowAsList(Transcoding):
    """Stores a :class:`Window` as the list of its entries (JSON keys are strings)."""

    type = Window
    name = "paxos_window"

    def encode(self, obj: Window) -> list[Entry]:
        """The entries, by slot."""
        return list(obj)

    def decode(self, data: list[Entry]) -> Window:
        """The window."""
        return Window(data)

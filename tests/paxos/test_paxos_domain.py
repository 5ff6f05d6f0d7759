"""The rules of Paxos in one slot, the store, and the replica's checks of its input.

The last tests drive three real replicas without a runner, delivering one message at a time
in random orders (with takeovers at random moments), and check that no slot ever has two
commands chosen and that every command is applied once.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from eventsourcing.application import ProgrammingError
from examples.paxos.application import InvalidKeyError, Replica
from examples.paxos.domainmodel import (
    OUTBID,
    Ballot,
    Command,
    Slot,
    Store,
)
from examples.paxos.system import replica_class

PUT_A = Command("a", "put", "k", "A")
PUT_B = Command("b", "put", "k", "B")


def events_of(slot: Slot) -> list[str]:
    """The names of the slot's new events (collected)."""
    return [type(e).__name__ for e in slot.collect_events()]


# ---------------------------------------------------------------------------------------------
# Acceptor


def test_acceptor_promises_higher_ballots_and_refuses_lower_ones_naming_its_promise() -> None:
    slot = Slot(replica=1, number=0, quorum=2)
    slot.receive_prepare(Ballot(2, 0))
    slot.receive_prepare(Ballot(1, 2))
    events = slot.collect_events()
    assert [type(e).__name__ for e in events] == ["Opened", "Promised", "Refused"]
    refused = events[2]
    assert isinstance(refused, Slot.Refused)
    assert (refused.ballot, refused.promised) == (Ballot(1, 2), Ballot(2, 0))


def test_acceptor_reports_what_it_accepted_when_it_promises() -> None:
    slot = Slot(replica=1, number=0, quorum=2)
    slot.receive_accept_request(Ballot(1, 0), PUT_A)
    slot.receive_prepare(Ballot(2, 2))
    promise = slot.collect_events()[-1]
    assert isinstance(promise, Slot.Promised)
    assert (promise.accepted_ballot, promise.accepted_command) == (Ballot(1, 0), PUT_A)


def test_acceptor_accepts_unless_it_promised_higher() -> None:
    slot = Slot(replica=1, number=0, quorum=2)
    slot.receive_prepare(Ballot(3, 2))
    slot.receive_accept_request(Ballot(2, 0), PUT_A)
    # Refused, though the proposer's own acceptance is counted.
    assert events_of(slot)[-2:] == ["Refused", "VotesCounted"]
    assert slot.accepted_command is None
    slot.receive_accept_request(Ballot(3, 2), PUT_B)
    assert events_of(slot) == ["Accepted", "Chosen"]  # with the proposer: a majority of 3
    assert slot.chosen == PUT_B and slot.chosen_ballot == Ballot(3, 2)


# ---------------------------------------------------------------------------------------------
# Proposer


def test_proposer_proposes_its_command_when_no_acceptor_accepted_any() -> None:
    slot = Slot(replica=0, number=4, quorum=2)
    slot.propose(PUT_A)
    slot.receive_promise(1, Ballot(1, 0), None, None)
    events = slot.collect_events()
    assert [type(e).__name__ for e in events] == ["Opened", "Prepared", "AcceptRequested"]
    assert isinstance(events[2], Slot.AcceptRequested) and events[2].command == PUT_A


def test_proposer_proposes_the_command_accepted_with_the_highest_ballot() -> None:
    slot = Slot(replica=0, number=4, quorum=3)  # a cluster of five
    slot.receive_prepare(Ballot(1, 4))
    slot.receive_accept_request(Ballot(1, 4), PUT_B)  # accepted B in 1.4
    slot.propose(PUT_A)
    assert slot.ballot == Ballot(2, 0)
    slot.receive_promise(1, Ballot(2, 0), Ballot(1, 3), Command("c", "delete", "k"))
    slot.receive_promise(2, Ballot(2, 0), None, None)
    request = slot.collect_events()[-1]
    assert isinstance(request, Slot.AcceptRequested)
    assert request.command == PUT_B  # 1.4, ours, beats 1.3; A loses the slot
    slot.receive_acceptance(Ballot(2, 0), PUT_B, [1, 2])
    assert slot.chosen == PUT_B and slot.lost_command == PUT_A


def test_proposer_ignores_promises_for_other_ballots_and_repeated_ones() -> None:
    slot = Slot(replica=0, number=0, quorum=3)
    slot.propose(PUT_A)
    slot.receive_promise(1, Ballot(7, 0), None, None)  # not our ballot
    slot.receive_promise(1, Ballot(1, 0), None, None)
    slot.receive_promise(1, Ballot(1, 0), None, None)  # again
    assert events_of(slot) == ["Opened", "Prepared", "PromiseReceived"]


def test_proposer_stops_when_outbid_and_takes_over_above_every_ballot_seen() -> None:
    slot = Slot(replica=0, number=0, quorum=2)
    slot.propose(PUT_A)
    slot.receive_refusal(Ballot(1, 0), promised=Ballot(5, 2))
    assert slot.phase == OUTBID and not slot.is_proposing
    slot.receive_promise(1, Ballot(1, 0), None, None)
    assert events_of(slot)[-1] == "Outbid"  # the late promise changes nothing
    slot.propose()
    assert slot.ballot == Ballot(6, 0) and slot.command == PUT_A

    other = Slot(replica=0, number=0, quorum=2)
    other.propose(PUT_A)
    other.receive_prepare(Ballot(2, 1))  # promising a higher ballot stops our proposer
    assert other.phase == OUTBID


def test_a_cluster_of_one_chooses_at_once() -> None:
    slot = Slot(replica=0, number=0, quorum=1)
    slot.propose(PUT_A)
    assert slot.chosen == PUT_A


# ---------------------------------------------------------------------------------------------
# Learner


def test_learner_needs_a_majority_in_one_ballot() -> None:
    slot = Slot(replica=0, number=0, quorum=3)
    slot.receive_acceptance(Ballot(1, 1), PUT_A, [1])
    slot.receive_acceptance(Ballot(2, 2), PUT_B, [2])
    slot.receive_acceptance(Ballot(1, 1), PUT_A, [3])
    assert slot.chosen is None
    slot.receive_acceptance(Ballot(1, 1), PUT_A, [1, 3])  # counted already
    assert slot.chosen is None
    slot.receive_acceptance(Ballot(1, 1), PUT_A, [4])
    assert slot.chosen == PUT_A
    slot.learn(Ballot(2, 2), PUT_B)  # once chosen, always chosen
    assert slot.chosen == PUT_A


# ---------------------------------------------------------------------------------------------
# Store and input checks


def test_store_applies_commands_in_slot_order() -> None:
    store = Store(0)
    assert store.result_of(Command("g", "get", "k")) is None
    store.apply_command(0, PUT_A)
    assert store.result_of(Command("c", "cas", "k", "X", expected="A")) is True
    store.apply_command(1, Command("c", "cas", "k", "X", expected="A"))
    store.skip_duplicate(2, PUT_A)
    assert store.data == {"k": "X"} and store.next_slot == 3
    with pytest.raises(ValueError, match="Slot 5 applied out of order: the next slot is 3"):
        store.apply_command(5, PUT_B)


def test_unknown_operations_and_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="Unknown operation 'incr'"):
        Command("x", "incr", "k")
    replica = replica_class(0, 1)()
    with pytest.raises(InvalidKeyError, match="key must be a non-empty string"):
        replica.put("", "1")
    with pytest.raises(InvalidKeyError, match="value must be a non-empty string"):
        replica.put("k", 1)  # type: ignore[arg-type]


def test_replica_classes_come_from_the_system_and_settings_are_checked() -> None:
    with pytest.raises(ProgrammingError, match="replica_class"):
        Replica()
    with pytest.raises(ValueError, match="PAXOS_TIMEOUT value 'soon' for 'Replica0'"):
        replica_class(0, 1)(env={"PAXOS_TIMEOUT": "soon"})


# ---------------------------------------------------------------------------------------------
# Random schedules of real replicas


@pytest.mark.parametrize("seed", range(12))
def test_random_schedules_choose_one_command_per_slot(seed: int) -> None:
    rng = random.Random(seed)
    replicas: list[Replica] = [replica_class(i, 3)() for i in range(3)]
    for follower in replicas:
        for leader in replicas:
            follower.follow(leader.name, leader.notification_log)
    commands = [r.command("put", "k", value=f"{r.index}.{n}") for r in replicas for n in range(3)]
    for command in commands:
        replicas[int(command.value.split(".")[0])].submit(command)  # type: ignore[union-attr]
    nudges = 8
    delivered = {(f.name, ld.name): 0 for f in replicas for ld in replicas}  # last id given
    while True:
        pending = [
            (f, ld)
            for f in replicas
            for ld in replicas
            if ld.recorder.max_notification_id() > delivered[f.name, ld.name]
        ]
        if not pending:
            break
        if nudges and rng.random() < 0.03:
            # A client gives up waiting: its replica takes over the slots not yet chosen.
            nudges -= 1
            command = rng.choice(commands)
            replicas[int(command.value.split(".")[0])].nudge(command.request_id)  # type: ignore[union-attr]
        follower, leader = rng.choice(pending)
        position = delivered[follower.name, leader.name]
        # One notification (passed over if the replica does not act on its topic).
        follower.pull_and_process(leader.name, start=position, stop=position + 1)
        delivered[follower.name, leader.name] = position + 1

    logs = [r.applied_commands() for r in replicas]
    assert logs[0] == logs[1] == logs[2]
    applied = [c.request_id for c in logs[0] if c.op != "noop"]
    assert sorted(applied) == sorted(c.request_id for c in commands)
    for number in range(len(logs[0]) + 5):
        chosen = {str(s.chosen) for r in replicas if (s := r.slot(number)) and s.chosen}
        assert len(chosen) <= 1, f"slot {number}: {chosen}"


def test_a_restarted_replica_takes_over_the_slots_in_progress_when_nudged(
    tmp_path: Path,
) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}
    for name in ("Replica0", "Replica1"):
        env[f"{name.upper()}_SQLITE_DBNAME"] = str(tmp_path / f"{name}.sqlite")
    replica1 = replica_class(1, 3)(env=env)
    replica1.follow(replica1.name, replica1.notification_log)
    replica1.submit(replica1.command("put", "k", value="1"))
    replica1.pull_and_process(replica1.name)  # proposes in slot 0, then stops for good

    def start_replica0() -> Replica:
        replica0 = replica_class(0, 3)(env=env)
        for leader in (replica0, replica1):
            replica0.follow(leader.name, leader.notification_log)
        return replica0

    replica0 = start_replica0()
    replica0.pull_and_process(replica1.name)  # promises in slot 0
    command = replica0.command("put", "k", value="0")
    replica0.submit(command)
    replica0.pull_and_process(replica0.name)  # proposes in slot 1
    replica0.close()

    restarted = start_replica0()  # its memory of the slots it heard of is gone
    restarted.nudge(command.request_id)
    restarted.pull_and_process(restarted.name)
    taken_over, own = restarted.slot(0), restarted.slot(1)
    assert taken_over is not None and taken_over.ballot == Ballot(2, 0)
    assert own is not None and own.ballot == Ballot(1, 0)  # still waiting for promises
    restarted.close()
    replica1.close()

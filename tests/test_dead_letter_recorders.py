"""The follower state the tracking recorders keep: dead letters parked with their tracking
record, retries resolved by compare-and-set, settings, and position resets (issue 17)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from eventsourcing.deadletters import (
    OPEN_STATUSES,
    PARKED,
    RESOLVED,
    RETRYING,
    STATUSES,
    DeadLetter,
    FollowerStateRecorder,
    ParkingTracking,
    RetryTracking,
)
from eventsourcing.persistence import (
    InfrastructureFactory,
    IntegrityError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
)
from eventsourcing.utils import Environment
from runners.testing.postgres import PostgresDatabase


class _Event:
    def __init__(self, version: int = 1) -> None:
        self.originator_id = uuid4()
        self.originator_version = version


def _failure(leader: str, number: int, event: _Event) -> DeadLetter:
    try:
        raise ValueError(f"cannot process {number}")
    except ValueError as error:
        return DeadLetter.of_failure(leader, number, event, "mod:Evt", error, attempts=3)


@pytest.fixture(params=["popo", "sqlite", "postgres"])
def recorder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessRecorder]:
    env = {"PERSISTENCE_MODULE": f"eventsourcing.{request.param}"}
    if request.param == "sqlite":
        env["SQLITE_DBNAME"] = str(tmp_path / "follower.sqlite")
    if request.param == "postgres":
        database: PostgresDatabase = request.getfixturevalue("postgres_database")
        env.update(database.env)
    factory = InfrastructureFactory.construct(Environment("Follower", env))
    process_recorder = factory.process_recorder()
    yield process_recorder
    factory.close()


def _state(recorder: ProcessRecorder) -> FollowerStateRecorder:
    assert isinstance(recorder, FollowerStateRecorder)
    return recorder


def test_letters_are_parked_with_the_tracking_record(recorder: ProcessRecorder) -> None:
    poison = _Event()
    first = _failure("Leader", 5, poison)
    behind = DeadLetter.behind("Leader", 7, poison, "mod:Evt", first=5)
    recorder.insert_events(
        [], tracking=ParkingTracking("Leader", 7, (5, 6, 7), (first, behind))
    )
    state = _state(recorder)
    assert recorder.max_tracking_id("Leader") == 7
    letters = state.select_dead_letters()
    assert [(d.notification_id, d.status) for d in letters] == [(5, PARKED), (7, PARKED)]
    assert letters[0].error_type == "ValueError"
    assert letters[0].error_message == "cannot process 5"
    assert "Traceback" in letters[0].traceback and letters[0].attempts == 3
    assert letters[1].reason == "parked behind notification 5 of the same originator"
    assert letters[0].originator_id == str(poison.originator_id)
    assert state.count_dead_letters() == {("Leader", PARKED): 2}


def test_refused_tracking_parks_nothing(recorder: ProcessRecorder) -> None:
    recorder.insert_events([], tracking=Tracking("Leader", 9))
    letter = _failure("Leader", 8, _Event())
    with pytest.raises(IntegrityError):
        recorder.insert_events([], tracking=ParkingTracking("Leader", 9, (8, 9), (letter,)))
    assert _state(recorder).select_dead_letters(statuses=STATUSES) == []
    assert recorder.max_tracking_id("Leader") == 9


def test_a_retry_resolves_its_letter_once(recorder: ProcessRecorder) -> None:
    letter = _failure("Leader", 3, _Event())
    recorder.insert_events([], tracking=ParkingTracking("Leader", 4, (3, 4), (letter,)))
    state = _state(recorder)
    # Not requested yet: a retry is refused.
    event = StoredEvent(uuid4(), 1, "mod:New", b"{}")
    with pytest.raises(IntegrityError, match="no longer waiting for a retry"):
        recorder.insert_events([event], tracking=RetryTracking("Leader", 3))
    moved = state.set_dead_letter_status([("Leader", 3)], RETRYING, from_statuses=(PARKED,))
    assert moved == 1
    recorder.insert_events([event], tracking=RetryTracking("Leader", 3))
    assert [d.status for d in state.select_dead_letters(statuses=STATUSES)] == [RESOLVED]
    assert recorder.max_tracking_id("Leader") == 4  # the position did not move back
    # A second process's retry of the same letter records nothing.
    again = StoredEvent(uuid4(), 1, "mod:New", b"{}")
    with pytest.raises(IntegrityError):
        recorder.insert_events([again], tracking=RetryTracking("Leader", 3))
    assert recorder.select_events(again.originator_id) == []
    assert len(recorder.select_events(event.originator_id)) == 1


def test_letters_are_discarded_with_a_reason_and_updated(recorder: ProcessRecorder) -> None:
    letter = _failure("Leader", 2, _Event())
    recorder.insert_events([], tracking=ParkingTracking("Leader", 2, (2,), (letter,)))
    state = _state(recorder)
    moved = state.set_dead_letter_status(
        [("Leader", 2)], "discarded", from_statuses=OPEN_STATUSES, reason="bad data, fixed"
    )
    assert moved == 1
    assert state.select_dead_letters() == []
    (discarded,) = state.select_dead_letters(statuses=("discarded",))
    assert discarded.reason == "bad data, fixed"
    try:
        raise KeyError("again")
    except KeyError as error:
        state.update_dead_letter(letter.failed_again(error))
    (updated,) = state.select_dead_letters(leader_name="Leader")
    assert updated.attempts == 4 and updated.error_type == "KeyError"
    assert updated.first_failed_at == letter.first_failed_at


def test_settings_and_resets(recorder: ProcessRecorder) -> None:
    state = _state(recorder)
    assert not state.is_paused
    state.set_follower_setting("paused", "yes")
    assert state.is_paused and state.get_follower_setting("paused") == "yes"
    state.set_follower_setting("paused", None)
    assert not state.is_paused
    letters = (_failure("Leader", 4, _Event()), _failure("Leader", 8, _Event()))
    recorder.insert_events([], tracking=ParkingTracking("Leader", 9, (4, 8), letters))
    state.reset_tracking("Leader", 5)
    assert recorder.max_tracking_id("Leader") == 5
    assert [d.notification_id for d in state.select_dead_letters()] == [4]
    recorder.insert_events([], tracking=Tracking("Leader", 6))  # forwards from 5 again
    state.reset_tracking("Leader", None)
    assert recorder.max_tracking_id("Leader") is None
    assert state.select_dead_letters() == []


def test_erase_forgets_events_positions_and_letters_but_keeps_settings(
    recorder: ProcessRecorder,
) -> None:
    state = _state(recorder)
    event = _Event()
    letter = _failure("Leader", 2, event)
    stored = StoredEvent(uuid4(), 1, "mod:Evt", b"x")
    recorder.insert_events([stored], tracking=ParkingTracking("Leader", 2, (1, 2), (letter,)))
    state.set_follower_setting("paused", "yes")
    recorder.erase()  # type: ignore[attr-defined]
    assert recorder.max_tracking_id("Leader") is None
    assert recorder.select_events(stored.originator_id) == []
    assert recorder.select_notifications(start=None, limit=10) == []
    assert state.select_dead_letters(statuses=STATUSES) == []
    assert state.get_follower_setting("paused") == "yes"
    # Processing from the start is accepted again.
    recorder.insert_events([stored], tracking=Tracking("Leader", 1))
    assert recorder.max_tracking_id("Leader") == 1

"""The runner contract: the same system, the same results, on every runner and back end.

Every test here runs on each of the four in-process runners. The system is a dog school, a
process application that counts each dog's tricks, and a follower that totals the counters
(see ``system_model``). Exactly-once processing is checked under failure: policies that
fail at random notifications, runners stopped in the middle of a backlog and replaced, runners
stopped and started again, and a follower added to a system that has already run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from system_model import (
    BACKENDS,
    FAILURES,
    PERSISTENT_BACKENDS,
    SYNCHRONOUS,
    SYSTEM,
    SYSTEM_WITH_AUDITOR,
    WAIT,
    Auditor,
    Backend,
    Counters,
    Dog,
    DogSchool,
    PolicyFailureError,
    Totals,
    assert_settled_state,
    make_backend,
    run_workload,
    wait_until_settled,
)

from eventsourcing.persistence import IntegrityError
from eventsourcing.system import (
    EventProcessingError,
    MultiThreadedRunner,
    Runner,
    RunnerAlreadyStartedError,
    SingleThreadedRunner,
    System,
    UnknownApplicationError,
)
from eventsourcing.utils import get_topic
from runners.table import IN_PROCESS, RUNNERS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def no_failures() -> Iterator[None]:
    """Start and end every test with no deliberate policy failures."""
    FAILURES.remaining.clear()
    FAILURES.failed = 0
    yield
    FAILURES.remaining.clear()


@pytest.fixture(params=[RUNNERS[name] for name in IN_PROCESS], ids=lambda cls: cls.__name__)
def runner_cls(request: pytest.FixtureRequest) -> type[Runner[Any]]:
    """Each of the four in-process runners."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each persistence back end."""
    yield from make_backend(request.param, request, tmp_path)


@pytest.fixture(params=PERSISTENT_BACKENDS)
def persistent_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each back end whose databases outlive a runner."""
    yield from make_backend(request.param, request, tmp_path)


def stop_quietly(runner: Runner[Any]) -> BaseException | None:
    """Stop the runner; return (rather than raise) the error its threads re-raise."""
    try:
        runner.stop()
    except Exception as error:
        return error
    return None


# ---------------------------------------------------------------------------
# Same system, same results


@pytest.mark.parametrize("batch_size", ["1", "4", "100"])
def test_same_final_state(runner_cls: type[Runner[Any]], backend: Backend, batch_size: str) -> None:
    env = {**backend.env, "PROCESS_BATCH_SIZE": batch_size}
    with runner_cls(SYSTEM, env=env) as runner:
        school = runner.get(DogSchool)
        expected = run_workload(school)
        wait_until_settled(runner, school)
        assert_settled_state(runner, expected)


@pytest.mark.parametrize("runner_cls", SYNCHRONOUS, ids=lambda cls: cls.__name__)
def test_synchronous_runners_settle_inside_save(
    runner_cls: type[Runner[Any]], backend: Backend
) -> None:
    with runner_cls(SYSTEM, env=backend.env) as runner:
        school = runner.get(DogSchool)
        dog_id = school.register("Fido")
        school.add_trick(dog_id, "roll over")
        # No waiting: both followers have processed everything when save() returns.
        assert runner.get(Counters).count(dog_id) == 1
        assert runner.get(Totals).totals() == (1, 1)


def test_backlog_recorded_before_start_is_processed_on_start(
    runner_cls: type[Runner[Any]], backend: Backend
) -> None:
    runner = runner_cls(SYSTEM, env=backend.env)
    try:
        school = runner.get(DogSchool)
        expected = run_workload(school, dogs=3, rounds=2)
        assert runner.get(Counters).recorder.max_tracking_id("DogSchool") is None
        runner.start()
        wait_until_settled(runner, school)
        assert_settled_state(runner, expected)
    finally:
        runner.stop()


# ---------------------------------------------------------------------------
# Exactly once, under failure


def test_random_policy_failures_with_restarts(
    runner_cls: type[Runner[Any]], persistent_backend: Backend
) -> None:
    env = {**persistent_backend.env, "PROCESS_BATCH_SIZE": "5"}
    # Record the whole backlog first, with the dog school alone.
    with DogSchool(env=env) as school:
        expected = run_workload(school, dogs=8, rounds=5)
    failing = random.Random(4).sample(policy_checked_ids(env), 6)
    FAILURES.remaining.update(dict.fromkeys(failing, 1))

    runner, restarts = _start_until_a_runner_survives(runner_cls, env)
    try:
        wait_until_settled(runner, runner.get(DogSchool))
        assert_settled_state(runner, expected)
    finally:
        runner.stop()
    # Each failure failed its batch and took a new runner; then the batch was processed once.
    assert FAILURES.failed == len(failing)
    assert restarts == len(failing)


def _start_until_a_runner_survives(
    runner_cls: type[Runner[Any]], env: dict[str, str]
) -> tuple[Runner[Any], int]:
    """Start runners over the same databases until one processes the backlog.

    Returns the runner, started, and how many runners failed before it.
    """
    for restarts in range(50):
        runner = runner_cls(SYSTEM, env=env)
        try:
            runner.start()  # a synchronous runner catches up (or fails) right here
        except PolicyFailureError:
            continue  # the failed start left the runner stopped
        if not isinstance(runner, MultiThreadedRunner):
            return runner, restarts
        try:
            failed = _wait_for_counters_or_error(runner)
        except BaseException:
            stop_quietly(runner)
            raise
        if not failed:
            return runner, restarts
        error = stop_quietly(runner)
        assert isinstance(error, EventProcessingError)
        assert isinstance(error.__cause__, PolicyFailureError)
    pytest.fail("the backlog was not processed after 50 runners")


def policy_checked_ids(env: dict[str, str]) -> list[int]:
    """The ids of the school's notifications at which the Counters policy can fail."""
    with DogSchool(env=env) as school:
        return [
            n.id
            for n in school.recorder.select_notifications(start=None, limit=1000)
            if not n.topic.endswith("Renamed")
        ]


def _wait_for_counters_or_error(runner: MultiThreadedRunner[Any]) -> bool:
    """Wait until the counters have processed the school's log; say whether a thread failed."""
    counters = runner.get(Counters)
    target = runner.get(DogSchool).recorder.max_notification_id()
    deadline = time.monotonic() + WAIT
    while not runner.has_errored.is_set():
        if counters.recorder.has_tracking_id("DogSchool", target):
            return False
        assert time.monotonic() < deadline, "counters did not catch up, and nothing failed"
        runner.has_errored.wait(0.05)
    return True


@pytest.mark.parametrize("runner_cls", SYNCHRONOUS, ids=lambda cls: cls.__name__)
def test_policy_failures_inside_save_are_recovered_by_later_saves(
    runner_cls: type[Runner[Any]], persistent_backend: Backend
) -> None:
    # Threaded runners report failures from stop(), tested above.
    FAILURES.remaining.update({3: 1, 7: 2})
    with runner_cls(SYSTEM, env=persistent_backend.env) as runner:
        school = runner.get(DogSchool)
        dogs = [Dog(f"dog{i}") for i in range(4)]
        errors: list[PolicyFailureError] = []
        for dog in dogs:
            _save_noting_failures(school, dog, errors)
        for trick in ("sit", "stay"):
            for dog in dogs:
                dog.add_trick(trick)
                _save_noting_failures(school, dog, errors)
        # Notification 3 failed once and 7 twice; each save after a failure resumed.
        assert [e.args[0][-1] for e in errors] == ["3", "7", "7"]
        notes = "\n".join(errors[0].__notes__)
        assert "'DogSchool'" in notes
        assert "notification 3 " in notes
        assert "Dog.Registered event" in notes
        counters = runner.get(Counters)
        assert counters.recorder.max_tracking_id("DogSchool") == 12
        assert counters.recorder.max_notification_id() == 12
        assert {counters.count(dog.id) for dog in dogs} == {2}
        assert runner.get(Totals).totals() == (4, 8)


def _save_noting_failures(school: DogSchool, dog: Dog, errors: list[PolicyFailureError]) -> None:
    try:
        school.save(dog)  # the event is recorded even when following it fails
    except PolicyFailureError as error:
        errors.append(error)


def test_stopped_mid_backlog_then_a_new_runner_finishes(
    runner_cls: type[Runner[Any]], persistent_backend: Backend
) -> None:
    env = {**persistent_backend.env, "PROCESS_BATCH_SIZE": "3"}
    with DogSchool(env=env) as school:
        expected = run_workload(school, dogs=10, rounds=6)
    # A notification that fails once interrupts the first runner mid-backlog.
    middle = policy_checked_ids(env)[expected.school_events // 2]
    FAILURES.remaining[middle] = 1
    first = runner_cls(SYSTEM, env=env)
    try:
        first.start()
        if isinstance(first, MultiThreadedRunner):
            assert first.has_errored.wait(WAIT)
    except PolicyFailureError:
        pass
    finally:
        stop_quietly(first)
    second = runner_cls(SYSTEM, env=env)
    # The first runner got part of the way, and recorded it.
    position = second.get(Counters).recorder.max_tracking_id("DogSchool")
    assert position is not None
    assert middle - 3 <= position < middle
    with second:
        wait_until_settled(second, second.get(DogSchool))
        assert_settled_state(second, expected)


def test_stopped_runner_can_be_started_again(
    runner_cls: type[Runner[Any]], persistent_backend: Backend
) -> None:
    runner = runner_cls(SYSTEM, env=persistent_backend.env)
    with runner:
        first = run_workload(runner.get(DogSchool), dogs=3, rounds=2)
        wait_until_settled(runner, runner.get(DogSchool))
    assert not runner.is_started
    # While the runner is stopped, the dog school carries on (in another instance).
    with DogSchool(env=persistent_backend.env) as school:
        second = run_workload(school, dogs=2, rounds=3)
    with runner:
        wait_until_settled(runner, runner.get(DogSchool))
        expected = first
        expected.dog_ids += second.dog_ids
        expected.tricks.update(second.tricks)
        expected.renames += second.renames
        assert_settled_state(runner, expected)


def test_follower_added_later_catches_up_from_the_start(
    runner_cls: type[Runner[Any]], persistent_backend: Backend
) -> None:
    with runner_cls(SYSTEM, env=persistent_backend.env) as runner:
        expected = run_workload(runner.get(DogSchool), dogs=4, rounds=3)
        wait_until_settled(runner, runner.get(DogSchool))
    with runner_cls(SYSTEM_WITH_AUDITOR, env=persistent_backend.env) as runner:
        school = runner.get(DogSchool)
        auditor = runner.get(Auditor)
        auditor.recorder.wait("DogSchool", expected.school_events, timeout=WAIT)
        assert auditor.seen == list(range(1, expected.school_events + 1))
        # The others had nothing left to do: nothing was processed twice.
        wait_until_settled(runner, school)
        assert_settled_state(runner, expected)


# ---------------------------------------------------------------------------
# Lifecycle and lookup


def test_lifecycle(runner_cls: type[Runner[Any]], backend: Backend) -> None:
    runner = runner_cls(SYSTEM, env=backend.env)
    assert not runner.is_started
    assert isinstance(runner.get(DogSchool), DogSchool)  # constructed before start
    runner.start()
    try:
        assert runner.is_started
        with pytest.raises(RunnerAlreadyStartedError, match="already started"):
            runner.start()
    finally:
        runner.stop()
    runner.stop()  # stopping twice is harmless
    with pytest.raises(UnknownApplicationError, match="stopped"):
        runner.get(DogSchool)


def test_get_unknown_application_names_the_class(
    runner_cls: type[Runner[Any]], backend: Backend
) -> None:
    with runner_cls(SYSTEM, env=backend.env) as runner:
        with pytest.raises(KeyError) as info:
            runner.get(Auditor)
        assert "Auditor" in str(info.value)
        assert "add it to a pipe" in str(info.value)


def test_env_reaches_every_application(runner_cls: type[Runner[Any]], backend: Backend) -> None:
    system = System(pipes=[[DogSchool, Counters], [Auditor]])
    with runner_cls(system, env={**backend.env, "MY_SETTING": "on"}) as runner:
        for cls in (DogSchool, Counters, Auditor):
            assert runner.get(cls).env.get("MY_SETTING") == "on"


# ---------------------------------------------------------------------------
# The 9.5.6-named runners process what a prompt carries, and read what it doesn't


@pytest.mark.parametrize(
    "named_runner_cls", [SingleThreadedRunner, MultiThreadedRunner], ids=lambda c: c.__name__
)
def test_events_no_prompt_carried_are_read_from_the_log(
    named_runner_cls: type[Runner[Any]], persistent_backend: Backend
) -> None:
    with named_runner_cls(SYSTEM, env=persistent_backend.env) as runner:
        school = runner.get(DogSchool)
        school.notify_topics = [get_topic(Dog.Registered)]
        fido = Dog("Fido")
        fido.add_trick("sit")  # not notified, and before a notified event
        school.save(fido, Dog("Rex"))
        spot = Dog("Spot")
        spot.add_trick("stay")  # not notified, and the last event of its save
        school.save(spot)
        school.notify_topics = []
        # Another writer, which prompts nobody; on PostgreSQL its failed save leaves an
        # id unused (a rolled-back transaction's).
        with DogSchool(env=persistent_backend.env) as other:
            lassie_id = other.register("Lassie")
            first, second = (other.repository.get(lassie_id) for _ in range(2))
            first.add_trick("sit")
            second.add_trick("beg")
            other.save(first)
            with pytest.raises(IntegrityError):
                other.save(second)
        laika_id = school.register("Laika")
        last_id = school.recorder.max_notification_id()
        assert last_id == 9 if persistent_backend.name == "postgres" else 8
        counters = runner.get(Counters)
        counters.recorder.wait("DogSchool", last_id or 0, timeout=WAIT)
        counts = [counters.count(d) for d in (fido.id, spot.id, lassie_id, laika_id)]
        assert counts == [1, 1, 1, 0]
        assert counters.recorder.max_notification_id() == 8  # 4 counters, 4 increments

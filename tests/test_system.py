"""Systems, notification log readers, leaders and followers, and batched processing.

The runner contract (every runner, every back end) is in ``test_system_runners``; this module
checks the parts: topology and its errors, reading logs, prompting, following, and the
guarantees of batches (one transaction each, all or nothing, a policy sees its own changes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from system_model import (
    RUNNERS,
    SYSTEM,
    WAIT,
    Auditor,
    Counters,
    Dog,
    DogSchool,
    Totals,
    TrickCounter,
    run_workload,
)

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    ProgrammingError,
)
from eventsourcing.cryptography import AESCipher
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Tracking,
)
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.system import (
    EventProcessingError,
    Follower,
    Leader,
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    NotificationConvertingError,
    NotificationLogReader,
    NotificationPullingError,
    ProcessApplication,
    RecordingEvent,
    RecordingEventReceiver,
    Runner,
    SingleThreadedRunner,
    System,
)
from eventsourcing.utils import get_topic

pytestmark = pytest.mark.timeout(60)

system_at_module_level = System(pipes=[[DogSchool, Counters]])


# ---------------------------------------------------------------------------
# System


def test_nodes_edges_and_roles() -> None:
    system = System(pipes=[[DogSchool, Counters, Totals], [DogSchool, Counters], [Application]])
    assert system.nodes == {
        "DogSchool": get_topic(DogSchool),
        "Counters": get_topic(Counters),
        "Totals": get_topic(Totals),
        "Application": get_topic(Application),
    }
    assert system.edges == [("DogSchool", "Counters"), ("Counters", "Totals")]  # no duplicate
    assert system.follows == {"Counters": ["DogSchool"], "Totals": ["Counters"]}
    assert system.leads == {"DogSchool": ["Counters"], "Counters": ["Totals"]}
    assert system.singles == ["Application"]
    assert system.leaders == ["DogSchool", "Counters"]
    assert system.leaders_only == ["DogSchool"]
    assert system.followers == ["Counters", "Totals"]
    assert system.processors == ["Counters"]
    assert system.get_app_cls("Totals") is Totals
    assert system.follower_cls("Totals") is Totals


def test_empty_pipe() -> None:
    system = System([[]])
    assert (system.nodes, system.edges, system.singles) == ({}, [], [])


def test_non_follower_in_a_followers_place_is_named() -> None:
    with pytest.raises(TypeError) as info:
        System(pipes=[[DogSchool, Leader]])
    assert info.value.args[0] == "Not a follower class: <class 'eventsourcing.system.Leader'>"


def test_non_process_application_in_the_middle_is_named() -> None:
    with pytest.raises(TypeError) as info:
        System(pipes=[[DogSchool, Follower, Totals]])
    assert info.value.args[0] == (
        "Not a process application class: <class 'eventsourcing.system.Follower'>"
    )


def test_cycle_through_a_plain_application_is_named() -> None:
    with pytest.raises(TypeError) as info:
        System(pipes=[[DogSchool, Counters, DogSchool]])
    assert info.value.args[0] == f"Not a follower class: {DogSchool}"


def test_follower_cls_of_a_non_follower_is_named() -> None:
    with pytest.raises(TypeError, match=r"Not a follower class: .*DogSchool"):
        SYSTEM.follower_cls("DogSchool")
    with pytest.raises(KeyError, match="No application named 'Nobody'"):
        SYSTEM.get_app_cls("Nobody")


def test_leader_cls_makes_plain_applications_leaders_once() -> None:
    system = System(pipes=[[DogSchool, Counters, Totals]])
    leader_cls = system.leader_cls("DogSchool")
    assert issubclass(leader_cls, Leader)
    assert issubclass(leader_cls, DogSchool)
    assert leader_cls.name == "DogSchool"
    assert system.leader_cls("DogSchool") is leader_cls
    assert system.leader_cls("Counters") is Counters  # already a leader


def test_topic_of_a_module_level_system() -> None:
    topic = system_at_module_level.topic
    assert topic.endswith("test_system:system_at_module_level")


def test_topic_of_a_local_system_is_a_programming_error() -> None:
    system = System([[DogSchool]])
    with pytest.raises(ProgrammingError, match="define it at module level"):
        _ = system.topic


# ---------------------------------------------------------------------------
# Reading notification logs


@pytest.fixture
def log_of_five() -> Iterator[Application[Any]]:
    app: Application[Any] = Application()
    for _ in range(5):
        app.save(Aggregate())
    yield app
    app.close()


def test_reader_select(log_of_five: Application[Any]) -> None:
    reader = NotificationLogReader(log_of_five.notification_log, section_size=2)
    ids = [[n.id for n in batch] for batch in reader.select(start=2)]
    assert ids == [[2, 3], [4, 5]]
    ids = [[n.id for n in b] for b in reader.select(start=2, stop=4, inclusive_of_start=False)]
    assert ids == [[3, 4]]


def test_reader_read(log_of_five: Application[Any]) -> None:
    reader = NotificationLogReader(log_of_five.notification_log, section_size=2)
    assert [n.id for n in reader.read(start=2)] == [2, 3, 4, 5]
    assert NotificationLogReader.DEFAULT_SECTION_SIZE == 10


# ---------------------------------------------------------------------------
# Leaders


class PromptCounter(RecordingEventReceiver[UUID]):
    def __init__(self) -> None:
        self.received: list[RecordingEvent[UUID]] = []

    def receive_recording_event(self, new_recording_event: RecordingEvent[UUID]) -> None:
        self.received.append(new_recording_event)


def test_leader_prompts_with_new_recordings() -> None:
    leader: Leader[UUID] = Leader()
    receiver = PromptCounter()
    leader.lead(receiver)
    leader.save(Aggregate())
    leader.save()  # nothing new: no prompt
    aggregate = Aggregate()
    aggregate.trigger_event(Aggregate.Event)
    leader.save(aggregate)
    assert [e.previous_max_notification_id for e in receiver.received] == [None, 1]
    assert [[r.notification.id for r in e.recordings] for e in receiver.received] == [[1], [2, 3]]
    assert receiver.received[0].application_name == "Leader"
    leader.notify_topics = ["no-such-topic"]
    leader.save(Aggregate())
    assert len(receiver.received) == 2


# ---------------------------------------------------------------------------
# Followers and batches


class Counted(Counters):
    """Counters that count the transactions its recorder is asked for."""

    name = "Counters"

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.transactions: list[int | None] = []
        insert_events = self.recorder.insert_events

        def counting(stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
            tracking = kwargs.get("tracking")
            self.transactions.append(tracking.notification_id if tracking else None)
            return insert_events(stored_events, **kwargs)

        self.recorder.insert_events = counting  # type: ignore[method-assign]


@pytest.fixture
def school() -> Iterator[DogSchool]:
    with DogSchool() as school:
        yield school


def following(school: DogSchool, cls: type[Counters] = Counted, **env: str) -> Counters:
    follower = cls(env=env)
    follower.follow(school.name, school.notification_log)
    return follower


def test_batches_are_one_transaction_each_with_one_tracking_record(school: DogSchool) -> None:
    expected = run_workload(school, dogs=3, rounds=3)  # 12 notifications, 3 of them renames
    follower = following(school, PROCESS_BATCH_SIZE="5")
    follower.pull_and_process("DogSchool")
    assert isinstance(follower, Counted)
    assert follower.transactions == [5, 10, 12]
    # Tracking reaches the last notification, whether the policy ignored it or not.
    assert follower.recorder.max_tracking_id("DogSchool") == expected.school_events == 12
    assert {d: follower.count(d) for d in expected.dog_ids} == expected.tricks


def test_policy_sees_its_own_changes_within_a_batch(school: DogSchool) -> None:
    dog_id = school.register("Fido")
    for trick in ("sit", "stay", "beg", "roll over"):
        school.add_trick(dog_id, trick)
    follower = following(school, PROCESS_BATCH_SIZE="100")
    follower.pull_and_process("DogSchool")  # one batch: no version conflict, no lost update
    assert follower.count(dog_id) == 4
    assert follower.recorder.max_notification_id() == 5


def test_failing_policy_rolls_back_the_whole_batch(school: DogSchool) -> None:
    class Failing(Counted):
        fail_at: int | None = 4

        def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
            assert processing_event.tracking is not None
            if processing_event.tracking.notification_id == self.fail_at:
                raise ValueError("no tricks today")
            super().policy(domain_event, processing_event)

    dog_id = school.register("Fido")
    for trick in ("sit", "stay", "beg", "roll over"):
        school.add_trick(dog_id, trick)
    follower = following(school, Failing, PROCESS_BATCH_SIZE="10")
    with pytest.raises(ValueError, match="no tricks today") as info:
        follower.pull_and_process("DogSchool")
    # Nothing of the batch was recorded: not the three notifications before the failure.
    assert follower.recorder.max_tracking_id("DogSchool") is None
    assert follower.recorder.max_notification_id() is None
    note = "\n".join(info.value.__notes__)
    assert "notification 4 of 'DogSchool'" in note
    assert f"{Dog.TrickAdded.__module__}.Dog.TrickAdded event of originator {dog_id}" in note
    assert "batch of 5 notifications (ids 1 to 5) was rolled back" in note
    # Fixed, the batch is processed again, once.
    Failing.fail_at = None
    follower.pull_and_process("DogSchool")
    assert follower.count(dog_id) == 4
    assert follower.recorder.max_notification_id() == 5


def test_processing_the_same_position_twice_is_refused(school: DogSchool) -> None:
    recordings = school.save(Dog("Fido"))
    follower = following(school)
    tracking = Tracking(school.name, recordings[0].notification.id)
    follower.process_event(recordings[0].domain_event, tracking)
    with pytest.raises(IntegrityError):
        follower.process_event(recordings[0].domain_event, tracking)
    assert follower.recorder.max_notification_id() == 1


def test_kept_aggregate_changed_by_another_writer_is_reloaded(tmp_path: Path) -> None:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "DOGSCHOOL_SQLITE_DBNAME": str(tmp_path / "school.db"),
        "COUNTERS_SQLITE_DBNAME": str(tmp_path / "counters.db"),
    }
    with DogSchool(env=env) as school, Counters(env=env) as other_writer:
        dog_id = school.register("Fido")
        school.add_trick(dog_id, "sit")
        follower = following(school, Counters, **env)
        follower.pull_and_process("DogSchool")  # keeps the counter in memory
        # Another instance (another process, say) increments the counter in the store.
        counter: TrickCounter = other_writer.repository.get(TrickCounter.create_id(dog_id))
        counter.increment()
        other_writer.save(counter)
        school.add_trick(dog_id, "stay")
        follower.pull_and_process("DogSchool")  # conflicts, then runs again from the store
        assert follower.count(dog_id) == 3
        assert follower.recorder.max_tracking_id("DogSchool") == 3
        follower.close()


def test_saving_outside_a_batch_refreshes_kept_aggregates(school: DogSchool) -> None:
    dog_id = school.register("Fido")
    follower = following(school)
    follower.pull_and_process("DogSchool")
    counter: TrickCounter = follower.repository.get(TrickCounter.create_id(dog_id))
    counter.increment()
    follower.save(counter)  # a command of the follower itself
    school.add_trick(dog_id, "sit")
    follower.pull_and_process("DogSchool")
    assert follower.count(dog_id) == 2


def test_aggregates_changed_by_bare_events_are_not_kept_stale(school: DogSchool) -> None:
    calls: list[int] = []

    class BareEvents(Counters):
        """Collects the counter's events, not the counter (as immutable aggregates must)."""

        def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
            assert processing_event.tracking is not None
            calls.append(processing_event.tracking.notification_id)
            if isinstance(domain_event, Dog.Registered):
                counter = TrickCounter(domain_event.originator_id)
            elif isinstance(domain_event, Dog.TrickAdded):
                counter = self.repository.get(TrickCounter.create_id(domain_event.originator_id))
                counter.increment()
            else:
                return
            processing_event.collect_events(*counter.collect_events())

    dog_id = school.register("Fido")
    follower = following(school, BareEvents)
    for n, trick in enumerate(("sit", "stay", "beg"), start=2):
        school.add_trick(dog_id, trick)
        follower.pull_and_process("DogSchool")
        assert calls[-1] == n
    assert follower.count(dog_id) == 3
    assert calls == [1, 2, 3, 4]  # no batch had to run twice


@pytest.mark.parametrize("cache_size", ["0", "1"])
def test_policy_cache_size(school: DogSchool, cache_size: str) -> None:
    expected = run_workload(school, dogs=3, rounds=3)
    follower = following(school, POLICY_CACHE_MAXSIZE=cache_size, PROCESS_BATCH_SIZE="2")
    follower.pull_and_process("DogSchool")
    assert {d: follower.count(d) for d in expected.dog_ids} == expected.tricks


def test_invalid_settings_are_explained() -> None:
    with pytest.raises(ValueError, match="PROCESS_BATCH_SIZE value '0' for 'Counters'"):
        Counters(env={"PROCESS_BATCH_SIZE": "0"})
    with pytest.raises(ValueError, match="POLICY_CACHE_MAXSIZE value 'many'"):
        Counters(env={"COUNTERS_POLICY_CACHE_MAXSIZE": "many"})


def test_pulling_from_an_unfollowed_leader_is_explained() -> None:
    with pytest.raises(ProgrammingError, match="'Counters' does not follow 'DogSchool'"):
        Counters().pull_and_process("DogSchool")


def test_overridden_process_event_is_called_for_each_event(school: DogSchool) -> None:
    calls: list[int] = []

    class EachEvent(Counters):
        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            calls.append(tracking.notification_id)
            super().process_event(domain_event, tracking)

    run_workload(school, dogs=2, rounds=1)
    follower = following(school, EachEvent)
    follower.pull_and_process("DogSchool")
    assert calls == [1, 2, 3, 4]


def test_topics_restrict_processing(school: DogSchool) -> None:
    class RegistrationsOnly(Auditor):
        follow_topics = (get_topic(Dog.Registered),)  # the legacy name of `topics`

    assert RegistrationsOnly.topics == (get_topic(Dog.Registered),)
    expected = run_workload(school, dogs=3, rounds=2)
    auditor = RegistrationsOnly()
    auditor.follow(school.name, school.notification_log)
    auditor.pull_and_process("DogSchool")
    assert auditor.seen == [1, 2, 3]
    assert len(expected.dog_ids) == 3
    notification = Notification(UUID(int=1), 1, "other-topic", b"", 1)
    assert auditor.filter_received_notifications([notification]) == []


def test_follower_decrypts_with_the_leaders_cipher_key() -> None:
    key = AESCipher.create_key(16)
    env = {"DOGSCHOOL_CIPHER_KEY": key}
    with DogSchool(env=env) as school:
        school.register("Fido")
        assert b"Fido" not in school.recorder.select_notifications(None, 1)[0].state
        follower = following(school, Auditor, **env)
        follower.pull_and_process("DogSchool")
        assert isinstance(follower, Auditor)
        assert follower.seen == [1]
        assert follower.recorder.max_tracking_id("DogSchool") == 1


def test_process_recorder_is_used() -> None:
    assert isinstance(Counters().recorder, ProcessRecorder)
    assert not isinstance(DogSchool().recorder, ProcessRecorder)
    assert isinstance(DogSchool().recorder, POPOApplicationRecorder)


# ---------------------------------------------------------------------------
# Runner specifics: prompts and errors


def test_single_threaded_runner_queues_prompts_while_processing() -> None:
    with NewSingleThreadedRunner(SYSTEM) as runner:
        school = runner.get(DogSchool)
        with runner._processing_lock:
            school.register("Fido")
            school.register("Rex")
            assert len(runner._recording_events_received) == 2
        school.register("Spot")  # processes the queued prompts too
        assert runner.get(Counters).recorder.max_tracking_id("DogSchool") == 3


def test_new_single_threaded_runner_ignores_stale_prompts_and_fills_gaps() -> None:
    with NewSingleThreadedRunner(SYSTEM) as runner:
        school = runner.get(DogSchool)
        counters = runner.get(Counters)
        recordings = school.save(Dog("Fido"))
        # A prompt delivered twice is processed once.
        runner.receive_recording_event(RecordingEvent("DogSchool", recordings, None))
        assert counters.recorder.max_notification_id() == 1
        # Events recorded while no prompt reached the runner are read from the log.
        school.followers.remove(runner)
        school.register("Rex")
        school.lead(runner)
        school.register("Spot")
        assert counters.recorder.max_tracking_id("DogSchool") == 3
        assert counters.recorder.max_notification_id() == 3


def test_new_runners_process_prompts_that_arrive_out_of_order() -> None:
    """Concurrent saves can notify in another order than they committed: ids decide."""
    for runner_cls in (NewSingleThreadedRunner, NewMultiThreadedRunner):
        with runner_cls(SYSTEM) as runner:
            school = runner.get(DogSchool)
            school.followers.clear()  # hold the prompts back
            one, two, three = (school.save(Dog(f"dog{i}"))[0] for i in range(3))
            # 2 notified first, then 1, then 3 (whose previous id is 1's).
            for prompt in (
                RecordingEvent("DogSchool", [two], 0),
                RecordingEvent("DogSchool", [one], 2),
                RecordingEvent("DogSchool", [three], 1),
            ):
                runner.receive_recording_event(prompt)
            counters = runner.get(Counters)
            counters.recorder.wait("DogSchool", 3, timeout=WAIT)
            assert counters.recorder.max_notification_id() == 3


def test_leaders_previous_notification_id_never_moves_back() -> None:
    leader: Leader[UUID] = Leader()
    receiver = PromptCounter()
    leader.lead(receiver)
    first = leader.save(Aggregate())
    second = leader.save(Aggregate())
    leader._notify(first)  # a late notification of an earlier save
    assert leader.previous_max_notification_id == second[0].notification.id == 2
    assert receiver.received[-1].previous_max_notification_id == 2


class BrokenPulling(Counters):
    def pull_notifications(self, *args: Any, **kwargs: Any) -> Iterator[Sequence[Notification]]:
        raise RuntimeError("pulling is broken")


class BrokenConverting(Counters):
    def convert_notifications(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise RuntimeError("converting is broken")


class BrokenProcessing(Counters):
    def process_event(self, domain_event: DomainEventProtocol[UUID], tracking: Tracking) -> None:
        raise RuntimeError("processing is broken")


@pytest.mark.parametrize(
    ("runner_cls", "follower_cls", "error_cls"),
    [
        (MultiThreadedRunner, BrokenPulling, EventProcessingError),
        (MultiThreadedRunner, BrokenProcessing, EventProcessingError),
        (NewMultiThreadedRunner, BrokenPulling, NotificationPullingError),
        (NewMultiThreadedRunner, BrokenConverting, NotificationConvertingError),
        (NewMultiThreadedRunner, BrokenProcessing, EventProcessingError),
    ],
)
def test_threaded_runners_report_errors_from_stop(
    runner_cls: type[MultiThreadedRunner[UUID]],
    follower_cls: type[Counters],
    error_cls: type[Exception],
) -> None:
    runner = runner_cls(System([[DogSchool, follower_cls]]))
    runner.get(DogSchool).register("Fido")
    with pytest.raises(error_cls) as info, runner:
        assert runner.has_errored.wait(WAIT)
    message = str(info.value.__cause__)
    assert info.value.args[0] == message
    assert message.endswith("is broken")
    assert not runner.is_started


def test_watch_for_errors() -> None:
    with MultiThreadedRunner(SYSTEM) as runner:
        assert runner.watch_for_errors(timeout=0.05) is False
    runner = MultiThreadedRunner(System([[DogSchool, BrokenProcessing]]))
    with pytest.raises(EventProcessingError, match="processing is broken"), runner:
        runner.get(DogSchool).register("Fido")
        runner.watch_for_errors(timeout=WAIT)


def test_policy_error_propagates_out_of_save_with_a_single_threaded_runner() -> None:
    for runner_cls in (SingleThreadedRunner, NewSingleThreadedRunner):
        with (
            runner_cls(System([[DogSchool, BrokenProcessing]])) as runner,
            pytest.raises(RuntimeError, match="processing is broken"),
        ):
            runner.get(DogSchool).register("Fido")


def test_broken_construction_closes_what_was_constructed() -> None:
    class BrokenInitialisation(Counters):
        def __init__(self, env: Any = None) -> None:
            raise RuntimeError("construction is broken")

    for runner_cls in (SingleThreadedRunner, MultiThreadedRunner):
        with pytest.raises(RuntimeError, match="construction is broken"):
            runner_cls(System([[DogSchool, BrokenInitialisation]]))


class Rally(Aggregate):
    """A rally of hits between two applications, in each of them under the same id."""

    @staticmethod
    def create_id(rally_id: UUID) -> UUID:
        return rally_id

    def __init__(self, rally_id: UUID) -> None:
        self.hits = 1

    @event("Hit")
    def hit(self) -> None:
        self.hits += 1


class Ping(ProcessApplication[UUID]):
    """Returns each hit of the other side, up to ten."""

    def serve(self) -> UUID:
        rally = Rally(uuid4())
        self.save(rally)
        return rally.id

    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        if not isinstance(domain_event, Rally.Event) or domain_event.originator_version >= 10:
            return
        try:
            rally: Rally = self.repository.get(domain_event.originator_id)
        except AggregateNotFoundError:
            rally = Rally(domain_event.originator_id)
        else:
            rally.hit()
        processing_event.collect_events(rally)


class Pong(Ping):
    """The other side."""


@pytest.mark.parametrize("runner_cls", RUNNERS, ids=lambda cls: cls.__name__)
def test_cycle_of_process_applications_settles(runner_cls: type[Runner[Any]]) -> None:
    with runner_cls(System([[Ping, Pong, Ping]])) as runner:
        ping, pong = runner.get(Ping), runner.get(Pong)
        rally_id = ping.serve()
        pong.recorder.wait("Ping", 10, timeout=WAIT)
        ping.recorder.wait("Pong", 9, timeout=WAIT)
        assert ping.repository.get(rally_id).hits == 10
        assert pong.repository.get(rally_id).hits == 9
        assert ping.recorder.max_notification_id() == 10
        assert pong.recorder.max_notification_id() == 9


# ---------------------------------------------------------------------------
# The 9.5.6-named runners: delivered notifications processed as if read from the log


class Witness(Counters):
    """Counters that keep every event its policy is given."""

    name = "Counters"

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.seen: list[DomainEventProtocol[UUID]] = []

    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        self.seen.append(domain_event)
        super().policy(domain_event, processing_event)


class PullingWitness(Witness):
    """Witness that overrides pull_notifications(), as 9.5.6 code may."""

    name = "Counters"
    pulls = 0

    def pull_notifications(self, *args: Any, **kwargs: Any) -> Iterator[Sequence[Notification]]:
        type(self).pulls += 1
        return super().pull_notifications(*args, **kwargs)


def count_reads(app: Application[Any]) -> list[int | None]:
    """Record the start of every read of ``app``'s notification log."""
    reads: list[int | None] = []
    select = app.recorder.select_notifications

    def counting(start: int | None, *args: Any, **kwargs: Any) -> Any:
        reads.append(start)
        return select(start, *args, **kwargs)

    app.recorder.select_notifications = counting  # type: ignore[method-assign]
    return reads


SYNC_RUNNERS = [SingleThreadedRunner, MultiThreadedRunner]


def settle(runner: Runner[Any], last_id: int) -> Witness:
    witness = runner.get(Witness)
    witness.recorder.wait("DogSchool", last_id, timeout=WAIT)
    return witness


@pytest.mark.parametrize("runner_cls", SYNC_RUNNERS, ids=lambda cls: cls.__name__)
def test_delivered_notifications_are_decoded_not_read_back(runner_cls: type[Runner[Any]]) -> None:
    with runner_cls(System([[DogSchool, Witness]])) as runner:
        school = runner.get(DogSchool)
        recordings = school.save(Dog("Fido"))
        settle(runner, 1)  # the first prompt of a new leader knows no previous id: read
        reads = count_reads(school)
        dog_id = recordings[0].domain_event.originator_id
        school.add_trick(dog_id, "sit")
        school.add_trick(dog_id, "beg")
        witness = settle(runner, 3)
        assert reads == []
        # What the policy is given is what a read of the log gives, not the leader's object.
        stored = school.notification_log.select(start=1, limit=10)
        assert witness.seen == [witness.mappers["DogSchool"].to_domain_event(n) for n in stored]
        assert witness.seen[0] is not recordings[0].domain_event
        assert witness.count(dog_id) == 2


@pytest.mark.parametrize("runner_cls", SYNC_RUNNERS, ids=lambda cls: cls.__name__)
def test_a_follower_that_overrides_pulling_reads_every_event(
    runner_cls: type[Runner[Any]],
) -> None:
    PullingWitness.pulls = 0
    with runner_cls(System([[DogSchool, PullingWitness]])) as runner:
        school = runner.get(DogSchool)
        started = PullingWitness.pulls
        for name in ("Fido", "Rex", "Spot"):
            school.register(name)
            settle(runner, school.recorder.max_notification_id() or 0)
        assert PullingWitness.pulls - started == 3


class PullAndProcessWitness(Witness):
    """Witness that overrides pull_and_process(), which 9.5.6's runners call on a prompt."""

    name = "Counters"
    calls: ClassVar[list[str]] = []

    def pull_and_process(
        self, leader_name: str, start: int | None = None, stop: int | None = None
    ) -> None:
        type(self).calls.append(leader_name)
        super().pull_and_process(leader_name, start, stop)


@pytest.mark.parametrize("runner_cls", SYNC_RUNNERS, ids=lambda cls: cls.__name__)
def test_a_follower_that_overrides_pull_and_process_has_it_called_on_each_prompt(
    runner_cls: type[Runner[Any]],
) -> None:
    PullAndProcessWitness.calls = []
    with runner_cls(System([[DogSchool, PullAndProcessWitness]])) as runner:
        school = runner.get(DogSchool)
        dog_ids = [school.register("Fido")]
        settle(runner, 1)
        started = len(PullAndProcessWitness.calls)
        school.add_trick(dog_ids[0], "sit")
        settle(runner, 2)
        for name in ("Rex", "Spot"):
            dog_ids.append(school.register(name))
            settle(runner, school.recorder.max_notification_id() or 0)
            school.add_trick(dog_ids[-1], "sit")
            settle(runner, school.recorder.max_notification_id() or 0)
        assert PullAndProcessWitness.calls[started:] == ["DogSchool"] * 5
        witness = runner.get(PullAndProcessWitness)
        assert [witness.count(dog_id) for dog_id in dog_ids] == [1, 1, 1]
        assert len(witness.seen) == 6  # each event once


def test_threaded_follower_commits_the_saves_in_flight_together() -> None:
    """Woken while a save is in flight, the follower waits for it: one commit for both."""
    with MultiThreadedRunner(System([[DogSchool, Counted]])) as runner:
        school, counted = runner.get(DogSchool), runner.get(Counted)
        assert isinstance(counted, Counted)
        insert_events = school.recorder.insert_events
        in_flight, release = threading.Event(), threading.Event()

        def held_back(stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
            if threading.current_thread().name == "held":
                in_flight.set()
                assert release.wait(WAIT)
            return insert_events(stored_events, **kwargs)

        school.recorder.insert_events = held_back  # type: ignore[method-assign]
        held = threading.Thread(target=school.register, args=("Rex",), name="held")
        held.start()
        try:
            assert in_flight.wait(WAIT)
            school.register("Fido")  # id 1, recorded while Rex's save is in flight
            time.sleep(0.2)  # the follower is woken meanwhile, and waits
            assert counted.transactions == []
        finally:
            release.set()  # Rex's save: id 2
            held.join(WAIT)
        counted.recorder.wait("DogSchool", 2, timeout=WAIT)
        assert counted.transactions == [2]


def test_waiting_for_saves_in_flight_is_bounded() -> None:
    leader: Leader[UUID] = Leader()
    leader.save(Aggregate())
    started = time.monotonic()
    leader.wait_for_saves_in_flight(timeout=WAIT)  # none in flight: no wait
    assert time.monotonic() - started < 1
    leader._saves_started += 1  # a save that never ends
    leader.wait_for_saves_in_flight(timeout=0.1)
    assert time.monotonic() - started >= 0.1


def _end_a_save(leader: Leader[UUID], *, start_another: bool) -> None:
    with leader._save_ended:
        leader._saves_ended += 1
        leader._saves_started += start_another
        leader._save_ended.notify_all()


@pytest.mark.parametrize("linger", [0.0, WAIT])
def test_a_lingering_wait_takes_in_the_saves_that_follow_back_to_back(linger: float) -> None:
    """Saves coming without a pause are waited for (for up to ``linger``), one after another."""
    leader: Leader[UUID] = Leader()
    leader.wait_for_saves_in_flight(timeout=WAIT)  # starts the counting
    leader._saves_started += 1  # save 1 in flight

    def back_to_back_saves() -> None:
        time.sleep(0.05)
        _end_a_save(leader, start_another=True)  # save 1 ends as save 2 starts
        time.sleep(0.05)
        _end_a_save(leader, start_another=False)  # save 2 ends; then a pause

    saver = threading.Thread(target=back_to_back_saves)
    saver.start()
    leader.wait_for_saves_in_flight(timeout=WAIT, linger=linger)
    ended_at_return = leader._saves_ended
    saver.join(WAIT)
    assert ended_at_return == (2 if linger else 1)


def test_a_lagging_follower_holds_a_bounded_number_of_delivered_events() -> None:
    """Past QUEUE_MAX_SIZE events, the feed lets them go and reads the log instead."""

    class Runner(MultiThreadedRunner[UUID]):
        QUEUE_MAX_SIZE = 5

    policy_entered, release = threading.Event(), threading.Event()

    class Slow(Counters):
        name = "Counters"

        def policy(
            self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
        ) -> None:
            policy_entered.set()
            assert release.wait(WAIT)
            super().policy(domain_event, processing_event)

    with Runner(System([[DogSchool, Slow]])) as runner:
        school = runner.get(DogSchool)
        try:
            school.register("Fido")
            assert policy_entered.wait(WAIT)  # the follower is busy with id 1
            feed = runner._feeds["Counters"][0]
            for i in range(4):
                school.save(Dog(f"a{i}"), Dog(f"b{i}"))  # 8 events: 3 too many
            assert feed._inbox_events <= 5 + 2
            assert feed._must_read_log
        finally:
            release.set()
        counters = runner.get(Slow)
        counters.recorder.wait("DogSchool", 9, timeout=WAIT)
        assert counters.recorder.max_notification_id() == 9

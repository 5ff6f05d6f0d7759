"""The in-memory (POPO) recorders and factory, against the shared contract test cases."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID, uuid4

import pytest

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    InfrastructureFactoryError,
    IntegrityError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.persistence import (
    ProgrammingError as PersistenceProgrammingError,
)
from eventsourcing.popo import (
    Factory,
    POPOAggregateRecorder,
    POPOApplicationRecorder,
    POPOFactory,
    POPOProcessRecorder,
    POPOSubscription,
    POPOTrackingRecorder,
)
from eventsourcing.tests import persistence as contract
from eventsourcing.utils import Environment, get_topic


class TestPOPOAggregateRecorder(contract.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return POPOAggregateRecorder()


class TestPOPOAggregateRecorderWithStrIds(contract.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return POPOAggregateRecorder()

    def new_originator_id(self) -> UUID | str:
        return f"account-{uuid4()}"


class TestPOPOApplicationRecorder(contract.ApplicationRecorderTestCase[POPOApplicationRecorder]):
    def create_recorder(self) -> POPOApplicationRecorder:
        return POPOApplicationRecorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestPOPOTrackingRecorder(contract.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return POPOTrackingRecorder()


class TestPOPOProcessRecorder(contract.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return POPOProcessRecorder()


class TestPOPONonInterleavingNotificationIDs(contract.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return POPOApplicationRecorder()


class CustomPOPOTrackingRecorder(POPOTrackingRecorder):
    pass


class TestPOPOFactory(contract.InfrastructureFactoryTestCase[POPOFactory]):
    def setUp(self) -> None:
        self.env = Environment("TestCase", {"PERSISTENCE_MODULE": "eventsourcing.popo"})
        super().setUp()

    def expected_factory_class(self) -> type[POPOFactory]:
        return POPOFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return POPOAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return POPOApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return POPOTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return CustomPOPOTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return POPOProcessRecorder


# ---------------------------------------------------------------------------------------------
# POPO specifics


def test_factory_alias_and_topic() -> None:
    assert Factory is POPOFactory
    factory = InfrastructureFactory.construct(Environment())
    assert type(factory) is POPOFactory
    assert get_topic(type(factory)) == "eventsourcing.popo:POPOFactory"


def test_each_recorder_is_its_own_database() -> None:
    factory = POPOFactory(Environment())
    recorder1, recorder2 = factory.application_recorder(), factory.application_recorder()
    assert recorder1 is not recorder2
    recorder1.insert_events([StoredEvent(uuid4(), 1, "t", b"")])
    assert recorder2.max_notification_id() is None
    assert factory.aggregate_recorder("snapshots") is not factory.aggregate_recorder("snapshots")


def test_uuid_and_its_string_form_name_the_same_aggregate() -> None:
    recorder = POPOApplicationRecorder()
    originator_id = uuid4()
    recorder.insert_events([StoredEvent(originator_id, 1, "t", b"a")])
    with pytest.raises(IntegrityError) as exc_info:
        recorder.insert_events([StoredEvent(str(originator_id), 1, "t", b"b")])
    assert str(originator_id) in str(exc_info.value)
    recorder.insert_events([StoredEvent(str(originator_id), 2, "t", b"c")])
    assert [e.state for e in recorder.select_events(str(originator_id))] == [b"a", b"c"]
    assert [e.state for e in recorder.select_events(originator_id)] == [b"a", b"c"]
    # A string that is not in a UUID's canonical form is an id of its own.
    recorder.insert_events([StoredEvent(originator_id.hex, 1, "t", b"d")])
    assert [e.state for e in recorder.select_events(originator_id.hex)] == [b"d"]


def test_events_inserted_out_of_version_order_are_selected_in_version_order() -> None:
    recorder = POPOAggregateRecorder()
    originator_id = uuid4()
    recorder.insert_events([StoredEvent(originator_id, 5, "t", b"")])
    recorder.insert_events([StoredEvent(originator_id, 2, "t", b"")])
    recorder.insert_events([StoredEvent(originator_id, 3, "t", b"")])
    with pytest.raises(IntegrityError):
        recorder.insert_events([StoredEvent(originator_id, 3, "t", b"")])
    versions = [e.originator_version for e in recorder.select_events(originator_id)]
    assert versions == [2, 3, 5]
    latest = recorder.select_events(originator_id, lte=4, desc=True, limit=1)
    assert [e.originator_version for e in latest] == [3]


def test_empty_batch_returns_no_ids_and_limit_zero_selects_nothing() -> None:
    recorder = POPOApplicationRecorder()
    assert recorder.insert_events([]) == []
    recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"")])
    assert recorder.select_notifications(None, 0) == []
    assert recorder.select_notifications(None, 0, topics=["t"]) == []
    assert recorder.select_notifications(None, 10, stop=0) == []


def test_tracking_conflict_names_the_application_and_positions() -> None:
    recorder = POPOTrackingRecorder()
    recorder.insert_tracking(Tracking("upstream", 5))
    with pytest.raises(IntegrityError) as exc_info:
        recorder.insert_tracking(Tracking("upstream", 4))
    message = str(exc_info.value)
    assert "'upstream'" in message and "5" in message and "4" in message


def test_process_recorder_with_tracking_only_returns_no_ids() -> None:
    recorder = POPOProcessRecorder()
    assert recorder.insert_events([], tracking=Tracking("upstream", 1)) == []
    ids = recorder.insert_events(
        [StoredEvent(uuid4(), 1, "t", b"")], tracking=Tracking("upstream", 2)
    )
    assert ids == [1]
    assert recorder.max_tracking_id("upstream") == 2


def test_tracking_recorder_class_must_be_a_popo_tracking_recorder() -> None:
    factory = POPOFactory(Environment())
    with pytest.raises(InfrastructureFactoryError) as exc_info:
        factory.tracking_recorder(POPOAggregateRecorder)  # type: ignore[arg-type]
    assert "(from the argument) is not a subclass of POPOTrackingRecorder" in str(exc_info.value)
    factory.env["TRACKING_RECORDER_TOPIC"] = get_topic(POPOApplicationRecorder)
    with pytest.raises(InfrastructureFactoryError) as exc_info:
        factory.tracking_recorder()
    assert "environment variable 'TRACKING_RECORDER_TOPIC'" in str(exc_info.value)


def test_factory_ignores_application_and_process_recorder_topics() -> None:
    factory = POPOFactory(
        Environment(
            env={
                "APPLICATION_RECORDER_TOPIC": "no.such:Class",
                "PROCESS_RECORDER_TOPIC": "no.such:Class",
            }
        )
    )
    assert type(factory.application_recorder()) is POPOApplicationRecorder
    assert type(factory.process_recorder()) is POPOProcessRecorder


def test_subscription_is_woken_by_inserts_from_another_thread() -> None:
    recorder = POPOApplicationRecorder()
    originator_id = uuid4()
    received: list[int] = []
    with recorder.subscribe() as subscription:
        assert isinstance(subscription, POPOSubscription)

        def insert_later() -> None:
            for version in range(1, 4):
                recorder.insert_events([StoredEvent(originator_id, version, "t", b"")])

        thread = threading.Thread(target=insert_later)
        thread.start()
        for notification in subscription:
            received.append(notification.id)
            if len(received) == 3:
                break
        thread.join()
    assert received == [1, 2, 3]
    assert not recorder._listeners  # stopping unregisters the subscription


def test_subscription_pages_through_many_notifications() -> None:
    recorder = POPOApplicationRecorder()
    originator_id = uuid4()
    total = 1234  # more than two pages of the pull thread's selects
    recorder.insert_events([StoredEvent(originator_id, v, "t", b"") for v in range(1, total + 1)])
    with recorder.subscribe(gt=10) as subscription:
        ids = [n.id for _, n in zip(range(total - 10), subscription, strict=False)]
    assert ids == list(range(11, total + 1))


def test_subscription_reraises_error_from_pull_thread() -> None:
    class BrokenRecorder(POPOApplicationRecorder):
        def select_notifications(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("database went away")

    with BrokenRecorder().subscribe() as subscription, pytest.raises(RuntimeError) as exc_info:
        next(subscription)
    assert str(exc_info.value) == "database went away"


def test_concurrent_inserts_keep_ids_contiguous_and_unique() -> None:
    recorder = POPOApplicationRecorder()
    all_ids: list[int] = []
    lock = threading.Lock()

    def insert() -> None:
        originator_id = uuid4()
        for version in range(20):
            ids = recorder.insert_events([StoredEvent(originator_id, version, "t", b"")])
            with lock:
                all_ids.extend(ids or [])

    threads = [threading.Thread(target=insert) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(all_ids) == list(range(1, 161))
    assert recorder.max_notification_id() == 160


def test_subscription_keeps_up_with_a_concurrent_writer() -> None:
    recorder = POPOApplicationRecorder()
    batches, batch_size = 20, 100
    total = batches * batch_size

    def write() -> None:
        for _ in range(batches):
            recorder.insert_events(
                [StoredEvent(str(uuid4()), 1, "t", b"") for _ in range(batch_size)]
            )

    writer = threading.Thread(target=write)
    with recorder.subscribe(gt=recorder.max_notification_id()) as subscription:
        writer.start()
        ids = [n.id for _, n in zip(range(total), subscription, strict=False)]
    writer.join()
    assert ids == list(range(1, total + 1))


def test_batch_positions_are_checked_however_the_batch_is_ordered() -> None:
    recorder = POPOAggregateRecorder()
    a, b = uuid4(), uuid4()
    with pytest.raises(IntegrityError, match="repeats a position"):
        recorder.insert_events(
            [StoredEvent(a, 1, "t", b""), StoredEvent(b, 1, "t", b""), StoredEvent(a, 1, "t", b"")]
        )
    with pytest.raises(IntegrityError, match="repeats a position"):  # equal, not identical ids
        recorder.insert_events(
            [StoredEvent(a, 1, "t", b""), StoredEvent(UUID(str(a)), 1, "t", b"")]
        )
    assert recorder.select_events(a) == []
    # Unique positions in any order are fine.
    recorder.insert_events(
        [StoredEvent(a, 2, "t", b""), StoredEvent(b, 1, "t", b""), StoredEvent(a, 1, "t", b"")]
    )
    assert [e.originator_version for e in recorder.select_events(a)] == [1, 2]


def test_subscription_exited_without_entering_leaves_no_pull_thread() -> None:
    subscription = POPOApplicationRecorder().subscribe()
    with pytest.raises(PersistenceProgrammingError, match="Not already entered"):
        subscription.__exit__(None, None, None)
    assert not subscription._pull_thread.is_alive()

"""Contract test cases for recorders, infrastructure factories and transcoders.

Each backend's tests subclass these and override one hook, for example::

    from eventsourcing.tests import persistence as contract

    class TestMyApplicationRecorder(contract.ApplicationRecorderTestCase):
        def create_recorder(self) -> ApplicationRecorder:
            return MyApplicationRecorder(...)

Import the module rather than the classes: a test runner collects every ``TestCase`` in a
test module's namespace, and the abstract cases here cannot run on their own.
"""

from __future__ import annotations

import tempfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from threading import Event, Thread
from timeit import timeit
from typing import Any, Generic, cast
from unittest import TestCase
from uuid import UUID, uuid4

from typing_extensions import TypeVar

from eventsourcing.cipher import AESCipher
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatetimeAsISO,
    DecimalAsStr,
    InfrastructureFactory,
    IntegrityError,
    JSONTranscoder,
    Mapper,
    Notification,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Tracking,
    TrackingRecorder,
    Transcoder,
    Transcoding,
    UUIDAsHex,
    WaitInterruptedError,
)
from eventsourcing.utils import Environment, get_topic

__all__ = [
    "AggregateRecorderTestCase",
    "ApplicationRecorderTestCase",
    "CustomType1",
    "CustomType1AsDict",
    "CustomType2",
    "CustomType2AsDict",
    "InfrastructureFactoryTestCase",
    "MyClass",
    "MyInt",
    "MyList",
    "MyStr",
    "Mydict",
    "NonInterleavingNotificationIDsBaseCase",
    "ProcessRecorderTestCase",
    "RecorderTestCase",
    "TrackingRecorderTestCase",
    "TranscoderTestCase",
    "tmpfile_uris",
]


class RecorderTestCase(TestCase, ABC):
    """Helpers shared by the recorder contract cases."""

    INITIAL_VERSION = 1

    def new_originator_id(self) -> UUID | str:
        """Return a fresh originator id (override for recorders of string ids)."""
        return uuid4()

    def new_stored_event(
        self, originator_id: UUID | str, version: int, topic: str = "topic", state: bytes = b""
    ) -> StoredEvent:
        """Return a stored event; the state defaults to one derived from topic and version."""
        return StoredEvent(originator_id, version, topic, state or f"{topic}-{version}".encode())

    def assert_events_eq(
        self, events1: Sequence[StoredEvent], events2: Sequence[StoredEvent]
    ) -> None:
        """Assert both sequences hold equal events (compared field by field)."""
        self.assertEqual(len(events1), len(events2))
        for event1, event2 in zip(events1, events2, strict=True):
            self.assert_event_eq(event1, event2)

    def assert_event_eq(self, event1: StoredEvent, event2: StoredEvent) -> None:
        """Assert the four stored-event fields are equal, whatever the classes."""
        self.assertEqual(event1.originator_id, event2.originator_id)
        self.assertEqual(event1.originator_version, event2.originator_version)
        self.assertEqual(event1.topic, event2.topic)
        self.assertEqual(event1.state, event2.state)


# ---------------------------------------------------------------------------------------------
# Aggregate recorders


class AggregateRecorderTestCase(RecorderTestCase, ABC):
    """Contract of :class:`AggregateRecorder`: atomic inserts, version-ordered selects."""

    @abstractmethod
    def create_recorder(self) -> AggregateRecorder:
        """Return a new, empty recorder under test."""

    def test_insert_and_select(self) -> None:
        """Events are stored per originator and read back ordered by version."""
        recorder = self.create_recorder()
        self.assertIsNone(recorder.insert_events([]))
        id1, id2 = self.new_originator_id(), self.new_originator_id()
        self.assertEqual(list(recorder.select_events(id1)), [])

        v = self.INITIAL_VERSION
        event1 = self.new_stored_event(id1, v, "topic1")
        self.assertIsNone(recorder.insert_events([event1]))
        selected = recorder.select_events(id1)
        self.assert_events_eq(selected, [event1])
        self.assertIsInstance(selected[0].state, bytes)

        event2 = self.new_stored_event(id1, v + 1, "topic2")
        event3 = self.new_stored_event(id1, v + 2, "topic3")
        self.assertIsNone(recorder.insert_events([event2, event3]))
        self.assert_events_eq(recorder.select_events(id1), [event1, event2, event3])

        # Another originator has its own sequence, starting anywhere.
        self.assertEqual(list(recorder.select_events(id2)), [])
        event4 = self.new_stored_event(id2, 0, "topic4")
        recorder.insert_events([event4])
        self.assert_events_eq(recorder.select_events(id2), [event4])
        self.assert_events_eq(recorder.select_events(id1), [event1, event2, event3])

    def test_insert_conflict_is_atomic(self) -> None:
        """A taken position raises IntegrityError and nothing of the batch is written."""
        recorder = self.create_recorder()
        originator_id = self.new_originator_id()
        v = self.INITIAL_VERSION
        event1 = self.new_stored_event(originator_id, v)
        event2 = self.new_stored_event(originator_id, v + 1)
        recorder.insert_events([event1])

        with self.assertRaises(IntegrityError):
            recorder.insert_events([event1])
        with self.assertRaises(IntegrityError):
            recorder.insert_events([event2, event1])
        with self.assertRaises(IntegrityError):
            recorder.insert_events([event2, event2])
        self.assert_events_eq(recorder.select_events(originator_id), [event1])

        recorder.insert_events([event2])
        self.assert_events_eq(recorder.select_events(originator_id), [event1, event2])

    def test_select_events_with_gt_lte_desc_limit(self) -> None:
        """gt and lte bound the versions; desc reverses before limit applies."""
        recorder = self.create_recorder()
        originator_id = self.new_originator_id()
        v = self.INITIAL_VERSION
        events = [self.new_stored_event(originator_id, v + i) for i in range(5)]
        recorder.insert_events(events)

        def select(**kwargs: Any) -> list[int]:
            return [e.originator_version for e in recorder.select_events(originator_id, **kwargs)]

        self.assertEqual(select(), [v, v + 1, v + 2, v + 3, v + 4])
        self.assertEqual(select(gt=v + 1), [v + 2, v + 3, v + 4])
        self.assertEqual(select(lte=v + 1), [v, v + 1])
        self.assertEqual(select(gt=v, lte=v + 2), [v + 1, v + 2])
        self.assertEqual(select(limit=2), [v, v + 1])
        self.assertEqual(select(desc=True), [v + 4, v + 3, v + 2, v + 1, v])
        self.assertEqual(select(desc=True, limit=1), [v + 4])  # the latest event
        self.assertEqual(select(lte=v + 2, desc=True, limit=1), [v + 2])  # latest snapshot
        self.assertEqual(select(gt=v, desc=True, limit=2), [v + 4, v + 3])
        self.assertEqual(select(gt=v + 4), [])
        self.assert_event_eq(
            recorder.select_events(originator_id, desc=True, limit=1)[0], events[-1]
        )

    def test_performance(self) -> None:
        """Print the time per single-event insert (not asserted)."""
        recorder = self.create_recorder()

        def insert() -> None:
            recorder.insert_events([self.new_stored_event(self.new_originator_id(), 1)])

        timeit(insert, number=10)
        number = 100
        duration = timeit(insert, number=number)
        print(self, f"\n{1e6 * duration / number:.1f} μs per insert")


# ---------------------------------------------------------------------------------------------
# Application recorders

_TApplicationRecorder = TypeVar(
    "_TApplicationRecorder", bound=ApplicationRecorder, default=ApplicationRecorder
)


class ApplicationRecorderTestCase(RecorderTestCase, ABC, Generic[_TApplicationRecorder]):
    """Contract of :class:`ApplicationRecorder`: notification ids and their selection.

    Set ``EXPECT_CONTIGUOUS_NOTIFICATION_IDS = False`` for stores whose ids may have gaps.
    ``optional_test_insert_subscribe`` is for recorders that support subscriptions: call it
    from a ``test_*`` method of the subclass.
    """

    EXPECT_CONTIGUOUS_NOTIFICATION_IDS = True
    concurrent_writers = 10
    concurrent_writes = 100
    events_per_concurrent_write = 100

    @abstractmethod
    def create_recorder(self) -> _TApplicationRecorder:
        """Return a new, empty recorder under test."""

    def close_db_connection(self, *args: Any) -> None:
        """Hook for backends whose tests close connections behind the recorder's back."""

    def _insert_three(self, recorder: ApplicationRecorder) -> list[StoredEvent]:
        id1, id2 = self.new_originator_id(), self.new_originator_id()
        v = self.INITIAL_VERSION
        events = [
            self.new_stored_event(id1, v, "topic1"),
            self.new_stored_event(id1, v + 1, "topic2"),
            self.new_stored_event(id2, v, "topic3"),
        ]
        ids1 = recorder.insert_events(events[:2])
        ids2 = recorder.insert_events(events[2:])
        if self.EXPECT_CONTIGUOUS_NOTIFICATION_IDS:
            self.assertEqual(ids1, [1, 2])
            self.assertEqual(ids2, [3])
        return events

    def test_insert_select(self) -> None:
        """Inserts return new ids; notifications carry the stored fields and their ids."""
        recorder = self.create_recorder()
        self.assertEqual(list(recorder.select_notifications(start=None, limit=3)), [])
        self.assertEqual(list(recorder.select_notifications(None, 3, topics=["topic1"])), [])
        self.assertIsNone(recorder.max_notification_id())

        events = self._insert_three(recorder)
        with self.assertRaises(IntegrityError):
            recorder.insert_events([events[2]])
        self.assert_events_eq(recorder.select_events(events[0].originator_id), events[:2])
        self.assert_events_eq(recorder.select_events(events[2].originator_id), events[2:])

        notifications = recorder.select_notifications(start=None, limit=10)
        self.assert_events_eq(notifications, events)
        for notification in notifications:
            self.assertIsInstance(notification, Notification)
        ids = [n.id for n in notifications]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(recorder.max_notification_id(), ids[-1])
        if self.EXPECT_CONTIGUOUS_NOTIFICATION_IDS:
            self.assertEqual(ids, [1, 2, 3])

    def test_select_notifications(self) -> None:
        """start, inclusive_of_start, stop, topics and limit select as documented."""
        recorder = self.create_recorder()
        max_id = recorder.max_notification_id() or 0
        self._insert_three(recorder)
        n1, n2, n3 = (n.id for n in recorder.select_notifications(max_id + 1, 3))

        def select(*args: Any, **kwargs: Any) -> list[int]:
            return [n.id for n in recorder.select_notifications(*args, **kwargs)]

        self.assertEqual(select(n1, 10), [n1, n2, n3])
        self.assertEqual(select(n1, 10, inclusive_of_start=False), [n2, n3])
        self.assertEqual(select(n2, 10, inclusive_of_start=False), [n3])
        self.assertEqual(select(n3, 1, inclusive_of_start=False), [])
        self.assertEqual(select(n1, 10, stop=n2), [n1, n2])
        self.assertEqual(select(n2, 10, stop=n2), [n2])
        self.assertEqual(select(n1, 10, stop=n2, inclusive_of_start=False), [n2])
        self.assertEqual(select(n1, 1), [n1])
        self.assertEqual(select(n2, 1), [n2])
        self.assertEqual(select(n1, 1, inclusive_of_start=False), [n2])
        self.assertEqual(select(n2, 2), [n2, n3])
        self.assertEqual(select(n1, 10, topics=["topic1"]), [n1])
        self.assertEqual(select(n1, 3, topics=["topic2"]), [n2])
        self.assertEqual(select(n1, 3, topics=["topic3"]), [n3])
        self.assertEqual(select(n1, 3, topics=["topic1", "topic3"]), [n1, n3])
        self.assertEqual(select(n1, 1, topics=["topic2", "topic3"]), [n2])  # limit after filter
        self.assertEqual(select(n1, 10, topics=["topic1", "topic2", "topic3"]), [n1, n2, n3])
        self.assertEqual(select(n1, 10, topics=["other"]), [])
        if max_id == 0:
            self.assertEqual(select(None, 10), [n1, n2, n3])
            self.assertEqual(select(None, 10, stop=n2), [n1, n2])
            self.assertEqual(select(None, 10, inclusive_of_start=False), [n1, n2, n3])
            self.assertEqual(select(0, 10), [n1, n2, n3])
            self.assertEqual(select(-5, 10), [n1, n2, n3])
            self.assertEqual(select(0, 10, inclusive_of_start=False), [n1, n2, n3])

    def test_performance(self) -> None:
        """Print the time per single-event insert (not asserted)."""
        recorder = self.create_recorder()

        def insert() -> None:
            recorder.insert_events([self.new_stored_event(self.new_originator_id(), 1)])

        timeit(insert, number=10)
        number = 100
        duration = timeit(insert, number=number)
        print(self, f"\n{1e6 * duration / number:.1f} μs per insert")

    def test_concurrent_no_conflicts(self, initial_position: int = 0) -> None:
        """Many threads insert (each its own originator) while others read: no errors."""
        recorder = self.create_recorder()
        errors: list[BaseException] = []
        stop_reading = Event()

        def insert_events() -> None:
            originator_id = self.new_originator_id()
            recorder.insert_events(
                [
                    self.new_stored_event(originator_id, i, state=b"state")
                    for i in range(self.events_per_concurrent_write)
                ]
            )

        def read_continuously() -> None:
            while not stop_reading.is_set():
                try:
                    recorder.select_notifications(
                        start=initial_position, limit=10, inclusive_of_start=False
                    )
                except BaseException as e:  # pragma: no cover (reported below)
                    errors.append(e)
                    return

        readers = [Thread(target=read_continuously) for _ in range(2)]
        for reader in readers:
            reader.start()
        try:
            with ThreadPoolExecutor(max_workers=self.concurrent_writers) as executor:
                futures = [executor.submit(insert_events) for _ in range(self.concurrent_writes)]
                for future in futures:
                    future.result()
        finally:
            stop_reading.set()
            for reader in readers:
                reader.join()
        if errors:  # pragma: no cover
            raise errors[0]
        notifications = recorder.select_notifications(
            start=initial_position, limit=10, inclusive_of_start=False
        )
        self.assertEqual(len(notifications), 10)

    def test_concurrent_throughput(self) -> None:
        """Print the insert rate of four threads (not asserted beyond "no errors")."""
        recorder = self.create_recorder()

        def insert_events() -> None:
            originator_id = self.new_originator_id()
            recorder.insert_events(
                [self.new_stored_event(originator_id, i, state=b"state") for i in range(50)]
            )

        with ThreadPoolExecutor(max_workers=4) as executor:
            duration = timeit(
                lambda: [f.result() for f in [executor.submit(insert_events) for _ in range(10)]],
                number=1,
            )
        print(self, f"\n{500 / duration:.0f} inserts per second")

    def optional_test_insert_subscribe(self, initial_position: int = 0) -> None:
        """Subscriptions yield what was and what will be recorded, and stop cleanly."""
        recorder = self.create_recorder()
        max_id_before = recorder.max_notification_id()
        events = self._insert_three_for_subscription(recorder, initial_position)

        with recorder.subscribe(gt=max_id_before) as subscription:
            received = self._take(subscription, 2)
            self.assert_events_eq(received, events[:2])
            ids = recorder.insert_events([events[2]])
            if self.EXPECT_CONTIGUOUS_NOTIFICATION_IDS:
                self.assertEqual(ids, [3 + initial_position])
            received += self._take(subscription, 1)
            self.assert_events_eq(received, events)
            if self.EXPECT_CONTIGUOUS_NOTIFICATION_IDS:
                self.assertEqual([n.id for n in received], [1, 2, 3])

        with recorder.subscribe(gt=received[1].id) as subscription:
            self.assert_events_eq(self._take(subscription, 1), events[2:])

        with recorder.subscribe(gt=max_id_before, topics=["topic3"]) as subscription:
            self.assert_events_eq(self._take(subscription, 1), events[2:])

        self._check_subscription_stops(recorder, initial_position)
        self._check_subscription_context_errors(recorder)

    def _insert_three_for_subscription(
        self, recorder: ApplicationRecorder, initial_position: int
    ) -> list[StoredEvent]:
        id1, id2 = self.new_originator_id(), self.new_originator_id()
        v = self.INITIAL_VERSION
        events = [
            self.new_stored_event(id1, v, "topic1"),
            self.new_stored_event(id1, v + 1, "topic2"),
            self.new_stored_event(id2, v, "topic3"),
        ]
        ids = recorder.insert_events(events[:2])
        if self.EXPECT_CONTIGUOUS_NOTIFICATION_IDS:
            self.assertEqual(ids, [1 + initial_position, 2 + initial_position])
        return events

    @staticmethod
    def _take(subscription: Iterator[Notification], n: int) -> list[Notification]:
        taken: list[Notification] = []
        for notification in subscription:
            taken.append(notification)
            if len(taken) == n:
                break
        return taken

    def _check_subscription_stops(self, recorder: ApplicationRecorder, gt: int) -> None:
        # stop() inside the loop ends the iteration after the current item.
        with recorder.subscribe(gt=gt) as subscription:
            count = 0
            for _ in subscription:
                count += 1
                subscription.stop()
            self.assertEqual(count, 1)
        # stop() before iterating, and even before entering, means nothing is yielded.
        with recorder.subscribe(gt=None) as subscription:
            subscription.stop()
            self.assertEqual(list(subscription), [])
        subscription = recorder.subscribe(gt=None)
        subscription.stop()
        with subscription:
            self.assertEqual(list(subscription), [])

    def _check_subscription_context_errors(self, recorder: ApplicationRecorder) -> None:
        subscription = recorder.subscribe(gt=None)
        try:
            with self.assertRaises(ProgrammingError) as cm:
                subscription.__exit__(None, None, None)
            self.assertIn("Not already entered subscription context manager", str(cm.exception))
            with subscription, self.assertRaises(ProgrammingError) as cm:
                subscription.__enter__()
            self.assertIn("Already entered subscription context manager", str(cm.exception))
        finally:
            subscription.stop()


# ---------------------------------------------------------------------------------------------
# Tracking and process recorders


class TrackingRecorderTestCase(TestCase, ABC):
    """Contract of :class:`TrackingRecorder`: positions only move forwards."""

    @abstractmethod
    def create_recorder(self) -> TrackingRecorder:
        """Return a new, empty recorder under test."""

    def test_insert_tracking(self) -> None:
        """Repeating or going back raises IntegrityError; max and has_tracking_id agree."""
        recorder = self.create_recorder()
        trackings = [
            Tracking("upstream1", 21),
            Tracking("upstream1", 22),
            Tracking("upstream2", 21),
        ]
        for tracking in trackings:
            recorder.insert_tracking(tracking=tracking)
        for tracking in trackings:
            with self.assertRaises(IntegrityError):
                recorder.insert_tracking(tracking=tracking)

        self.assertEqual(recorder.max_tracking_id("upstream1"), 22)
        self.assertEqual(recorder.max_tracking_id("upstream2"), 21)
        self.assertIsNone(recorder.max_tracking_id("upstream3"))
        for notification_id, expected in [(None, True), (20, True), (22, True), (23, False)]:
            self.assertIs(recorder.has_tracking_id("upstream1", notification_id), expected)
        self.assertTrue(recorder.has_tracking_id("upstream3", None))
        self.assertFalse(recorder.has_tracking_id("upstream3", 1))

        # A gap can't be filled in after a later position was recorded.
        recorder.insert_tracking(Tracking("upstream1", 24))
        with self.assertRaises(IntegrityError):
            recorder.insert_tracking(Tracking("upstream1", 23))
        self.assertTrue(recorder.has_tracking_id("upstream1", 23))
        self.assertEqual(recorder.max_tracking_id("upstream1"), 24)

    def test_wait(self) -> None:
        """wait() returns once reached, times out, and can be interrupted."""
        recorder = self.create_recorder()
        recorder.wait("upstream1", None)
        with self.assertRaises(TimeoutError) as cm:
            recorder.wait("upstream1", 21, timeout=0.1)
        self.assertTrue(
            str(cm.exception).startswith(
                "Timed out waiting for notification 21 from application 'upstream1'"
            ),
            str(cm.exception),
        )
        recorder.insert_tracking(Tracking(notification_id=21, application_name="upstream1"))
        recorder.wait("upstream1", None)
        recorder.wait("upstream1", 10)
        recorder.wait("upstream1", 21)
        with self.assertRaises(TimeoutError):
            recorder.wait("upstream1", 22, timeout=0.1)
        interrupt = Event()
        interrupt.set()
        with self.assertRaises(WaitInterruptedError):
            recorder.wait("upstream1", 22, interrupt=interrupt)

    def test_wait_sees_tracking_recorded_by_another_thread(self) -> None:
        """wait() returns when another thread records the position."""
        recorder = self.create_recorder()
        thread = Thread(target=lambda: recorder.insert_tracking(Tracking("upstream1", 5)))
        thread.start()
        try:
            recorder.wait("upstream1", 5, timeout=5)
        finally:
            thread.join()


class ProcessRecorderTestCase(RecorderTestCase, ABC):
    """Contract of :class:`ProcessRecorder`: events and tracking are written together."""

    @abstractmethod
    def create_recorder(self) -> ProcessRecorder:
        """Return a new, empty recorder under test."""

    def test_insert_select(self) -> None:
        """Events with tracking are atomic: a conflict in either writes nothing."""
        recorder = self.create_recorder()
        self.assertIsNone(recorder.max_tracking_id("upstream_app"))
        id1, id2 = self.new_originator_id(), self.new_originator_id()
        event1, event2 = self.new_stored_event(id1, 1), self.new_stored_event(id1, 2)
        event3, event4 = self.new_stored_event(id2, 1), self.new_stored_event(id2, 2)
        tracking1, tracking2 = Tracking("upstream_app", 1), Tracking("upstream_app", 2)

        ids = recorder.insert_events([event1, event2], tracking=tracking1)
        self.assertIsNotNone(ids)
        self.assertEqual(len(list(ids or [])), 2)

        # A conflicting event: the new tracking is not recorded either.
        with self.assertRaises(IntegrityError):
            recorder.insert_events([event2], tracking=tracking2)
        self.assertEqual(recorder.max_tracking_id("upstream_app"), 1)

        # A conflicting tracking record: the new event is not recorded either.
        with self.assertRaises(IntegrityError):
            recorder.insert_events([event3], tracking=tracking1)
        self.assertEqual(recorder.max_tracking_id("upstream_app"), 1)
        self.assertEqual(list(recorder.select_events(id2)), [])

        recorder.insert_events([event3], tracking=tracking2)
        self.assertEqual(recorder.max_tracking_id("upstream_app"), 2)
        recorder.insert_events([event4])  # no tracking
        self.assertEqual(recorder.max_tracking_id("upstream_app"), 2)
        self.assert_events_eq(recorder.select_events(id2), [event3, event4])

    def test_has_tracking_id(self) -> None:
        """Tracking recorded with no events counts; has_tracking_id follows the maximum."""
        recorder = self.create_recorder()
        self.assertTrue(recorder.has_tracking_id("upstream_app", None))
        self.assertFalse(recorder.has_tracking_id("upstream_app", 1))
        recorder.insert_events([], tracking=Tracking("upstream_app", 1))
        self.assertTrue(recorder.has_tracking_id("upstream_app", 1))
        self.assertFalse(recorder.has_tracking_id("upstream_app", 2))
        recorder.insert_events([], tracking=Tracking("upstream_app", 3))
        for notification_id, expected in [(1, True), (2, True), (3, True), (4, False)]:
            self.assertIs(recorder.has_tracking_id("upstream_app", notification_id), expected)

    def test_raises_when_lower_inserted_later(self) -> None:
        """A lower position after a higher one raises IntegrityError."""
        recorder = self.create_recorder()
        recorder.insert_events([], tracking=Tracking("upstream_app", 2))
        self.assertEqual(recorder.max_tracking_id("upstream_app"), 2)
        with self.assertRaises(IntegrityError):
            recorder.insert_events([], tracking=Tracking("upstream_app", 1))
        self.assertEqual(recorder.max_tracking_id("upstream_app"), 2)

    def test_performance(self) -> None:
        """Print the time per insert of one event with tracking (not asserted)."""
        recorder = self.create_recorder()
        positions = iter(range(1, 1000))

        def insert() -> None:
            recorder.insert_events(
                [self.new_stored_event(self.new_originator_id(), 0)],
                tracking=Tracking("upstream_app", next(positions)),
            )

        number = 100
        duration = timeit(insert, number=number)
        print(self, f"\n{1e6 * duration / number:.1f} μs per insert")


class NonInterleavingNotificationIDsBaseCase(RecorderTestCase, ABC):
    """Two concurrent batch inserts get two unbroken runs of notification ids."""

    insert_num = 1000

    @abstractmethod
    def create_recorder(self) -> ApplicationRecorder:
        """Return a new recorder under test."""

    def create_stack(self, originator_id: UUID | str) -> Sequence[StoredEvent]:
        """Return the batch one thread inserts."""
        return [
            StoredEvent(originator_id, i, "non-interleaving-test-event", b"{}")
            for i in range(self.insert_num)
        ]

    def test(self) -> None:
        """Ids of one batch are all below, or all above, the ids of the other."""
        recorder = self.create_recorder()
        max_id = recorder.max_notification_id()
        id1, id2 = self.new_originator_id(), self.new_originator_id()
        stacks = [self.create_stack(id1), self.create_stack(id2)]
        go = Event()
        errors: list[BaseException] = []

        def insert(stack: Sequence[StoredEvent]) -> None:
            go.wait()
            try:
                recorder.insert_events(stack)
            except BaseException as e:  # pragma: no cover (reported below)
                errors.append(e)

        threads = [Thread(target=insert, args=(s,), daemon=True) for s in stacks]
        for thread in threads:
            thread.start()
        go.set()
        for thread in threads:
            thread.join()
        if errors:  # pragma: no cover
            raise errors[0]

        notifications = recorder.select_notifications(
            start=max_id, limit=2 * self.insert_num, inclusive_of_start=False
        )
        ids1 = [n.id for n in notifications if n.originator_id == id1]
        ids2 = [n.id for n in notifications if n.originator_id == id2]
        self.assertEqual(len(ids1), self.insert_num)
        self.assertEqual(len(ids2), self.insert_num)
        self.assertTrue(
            max(ids1) < min(ids2) or max(ids2) < min(ids1),
            "notification ids of the two batches interleave",
        )


# ---------------------------------------------------------------------------------------------
# Infrastructure factories

_TInfrastructureFactory = TypeVar("_TInfrastructureFactory", bound=InfrastructureFactory[Any])


class InfrastructureFactoryTestCase(ABC, TestCase, Generic[_TInfrastructureFactory]):
    """Contract of an infrastructure factory, constructed from ``self.env``.

    Subclasses set ``self.env`` (an :class:`Environment` naming their persistence module)
    before calling ``super().setUp()``, and say which classes the factory should build.
    """

    env: Environment

    @abstractmethod
    def expected_factory_class(self) -> type[_TInfrastructureFactory]:
        """Return the factory class ``self.env`` selects."""

    @abstractmethod
    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        """Return the class of ``factory.aggregate_recorder()``."""

    @abstractmethod
    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        """Return the class of ``factory.application_recorder()``."""

    @abstractmethod
    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        """Return the class of ``factory.tracking_recorder()``."""

    @abstractmethod
    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        """Return a subclass the factory accepts as ``tracking_recorder_class``."""

    @abstractmethod
    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        """Return the class of ``factory.process_recorder()``."""

    def setUp(self) -> None:
        """Construct the factory from ``self.env`` and a transcoder for the mapper tests."""
        self.factory = cast(_TInfrastructureFactory, InfrastructureFactory.construct(self.env))
        self.assertIsInstance(self.factory, self.expected_factory_class())
        self.transcoder = JSONTranscoder()
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            self.transcoder.register(transcoding)

    def tearDown(self) -> None:
        """Close the factory."""
        self.factory.close()

    def test_mapper(self) -> None:
        """With nothing configured, the mapper has no cipher and no compressor."""
        mapper: Mapper[UUID] = self.factory.mapper(transcoder=self.transcoder)
        self.assertIsInstance(mapper, Mapper)
        self.assertIs(mapper.transcoder, self.transcoder)
        self.assertIsNone(mapper.cipher)
        self.assertIsNone(mapper.compressor)

    def test_mapper_with_compressor(self) -> None:
        """COMPRESSOR_TOPIC may name a class (instantiated) or a module (used as is)."""
        self.env[self.factory.COMPRESSOR_TOPIC] = get_topic(ZlibCompressor)
        mapper: Mapper[UUID] = self.factory.mapper(transcoder=self.transcoder)
        self.assertIsInstance(mapper.compressor, ZlibCompressor)
        self.assertIsNone(mapper.cipher)

        self.env[self.factory.COMPRESSOR_TOPIC] = "zlib"
        mapper = self.factory.mapper(transcoder=self.transcoder)
        self.assertIs(mapper.compressor, zlib)
        self.assertIsNone(mapper.cipher)

    def test_mapper_with_cipher(self) -> None:
        """CIPHER_TOPIC without a key fails; a key alone selects the default AES cipher."""
        self.env[self.factory.CIPHER_TOPIC] = get_topic(AESCipher)
        with self.assertRaises(OSError):
            self.factory.mapper(transcoder=self.transcoder)

        del self.env[self.factory.CIPHER_TOPIC]
        self.env[AESCipher.CIPHER_KEY] = AESCipher.create_key(16)
        mapper: Mapper[UUID] = self.factory.mapper(transcoder=self.transcoder)
        self.assertIsInstance(mapper.cipher, AESCipher)
        self.assertIsNone(mapper.compressor)

    def test_mapper_with_cipher_and_compressor(self) -> None:
        """Both can be configured together."""
        self.env[self.factory.COMPRESSOR_TOPIC] = get_topic(ZlibCompressor)
        self.env[self.factory.CIPHER_TOPIC] = get_topic(AESCipher)
        self.env[AESCipher.CIPHER_KEY] = AESCipher.create_key(16)
        mapper: Mapper[UUID] = self.factory.mapper(transcoder=self.transcoder)
        self.assertIsNotNone(mapper.cipher)
        self.assertIsNotNone(mapper.compressor)

    def test_mapper_with_wrong_cipher_key(self) -> None:
        """Each application name reads its own key, so another app's key fails to decrypt."""
        self.env.name = "App1"
        self.env[self.factory.CIPHER_TOPIC] = get_topic(AESCipher)
        self.env["APP1_" + AESCipher.CIPHER_KEY] = AESCipher.create_key(16)
        self.env["APP2_" + AESCipher.CIPHER_KEY] = AESCipher.create_key(16)
        mapper1: Mapper[UUID] = self.factory.mapper(transcoder=self.transcoder)
        # cast: the event metaclass makes DomainEvent a dataclass, which mypy can't see.
        domain_event = cast(Any, DomainEvent)(
            originator_id=uuid4(),
            originator_version=1,
            timestamp=DomainEvent.create_timestamp(),
        )
        stored_event = mapper1.to_stored_event(domain_event)
        self.assertEqual(mapper1.to_domain_event(stored_event), domain_event)

        self.env.name = "App2"
        mapper2: Mapper[UUID] = self.factory.mapper(transcoder=self.transcoder)
        with self.assertRaises(ValueError):
            mapper2.to_domain_event(stored_event)

    def test_create_aggregate_recorder(self) -> None:
        """aggregate_recorder() builds the expected class, with or without CREATE_TABLE."""
        recorder = self.factory.aggregate_recorder()
        self.assertEqual(type(recorder), self.expected_aggregate_recorder_class())
        self.assertIsInstance(recorder, AggregateRecorder)
        self.env["CREATE_TABLE"] = "f"
        recorder = self.factory.aggregate_recorder()
        self.assertEqual(type(recorder), self.expected_aggregate_recorder_class())

    def test_create_application_recorder(self) -> None:
        """application_recorder() builds the expected class, with or without CREATE_TABLE."""
        recorder = self.factory.application_recorder()
        self.assertEqual(type(recorder), self.expected_application_recorder_class())
        self.assertIsInstance(recorder, ApplicationRecorder)
        self.env["CREATE_TABLE"] = "f"
        recorder = self.factory.application_recorder()
        self.assertEqual(type(recorder), self.expected_application_recorder_class())

    def test_create_tracking_recorder(self) -> None:
        """tracking_recorder() honours its argument, then TRACKING_RECORDER_TOPIC."""
        recorder = self.factory.tracking_recorder()
        self.assertEqual(type(recorder), self.expected_tracking_recorder_class())
        self.assertIsInstance(recorder, TrackingRecorder)
        self.env["CREATE_TABLE"] = "f"
        recorder = self.factory.tracking_recorder()
        self.assertEqual(type(recorder), self.expected_tracking_recorder_class())

        subclass = self.tracking_recorder_subclass()
        self.assertEqual(type(self.factory.tracking_recorder(subclass)), subclass)
        self.factory.env[self.factory.TRACKING_RECORDER_TOPIC] = get_topic(subclass)
        self.assertEqual(type(self.factory.tracking_recorder()), subclass)

    def test_create_process_recorder(self) -> None:
        """process_recorder() builds the expected class, with or without CREATE_TABLE."""
        recorder = self.factory.process_recorder()
        self.assertEqual(type(recorder), self.expected_process_recorder_class())
        self.assertIsInstance(recorder, ProcessRecorder)
        self.env["CREATE_TABLE"] = "f"
        recorder = self.factory.process_recorder()
        self.assertEqual(type(recorder), self.expected_process_recorder_class())


def tmpfile_uris() -> Iterator[str]:
    """Yield ``file:`` URIs of new database files, without end.

    As with 9.x, a URI stays usable after the generator is gone (a ``setUp()`` may keep
    only the URI): the files are in one temporary directory for the whole process, which
    is removed when the process exits (9.5.6 difference: test files kept until exit).
    """
    directory = Path(_test_files_directory().name)
    while True:
        yield "file:" + str(directory / f"{uuid4().hex}_eventsourcing_test.db")


@cache
def _test_files_directory() -> tempfile.TemporaryDirectory[str]:
    # Kept for the life of the process; TemporaryDirectory removes it at exit.
    return tempfile.TemporaryDirectory(prefix="eventsourcing_test_")


# ---------------------------------------------------------------------------------------------
# Transcoders


class CustomType1:
    """A value object holding a UUID, for custom transcoding tests."""

    def __init__(self, value: UUID):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        raise NotImplementedError


class CustomType2:
    """A value object holding a :class:`CustomType1`, for nested transcoding tests."""

    def __init__(self, value: CustomType1):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        raise NotImplementedError


_KT = TypeVar("_KT")
_VT = TypeVar("_VT")
_T = TypeVar("_T")


class Mydict(dict[_KT, _VT]):
    """A dict subclass that equals only its own kind."""

    __hash__ = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({super().__repr__()})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and super().__eq__(other)


class MyList(list[_T]):
    """A list subclass that equals only its own kind."""

    __hash__ = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({super().__repr__()})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and super().__eq__(other)


class MyStr(str):
    """A str subclass that equals only its own kind."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({super().__repr__()})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and super().__eq__(other)

    def __hash__(self) -> int:
        return hash(str(self))


class MyInt(int):
    """An int subclass that equals only its own kind."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({super().__repr__()})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and super().__eq__(other)

    def __hash__(self) -> int:
        return int(self)


class MyClass:
    """A class with no transcoding."""


class CustomType1AsDict(Transcoding):
    """Transcodes :class:`CustomType1` as its UUID (itself transcoded)."""

    type = CustomType1
    name = "custom_type1_as_dict"

    def encode(self, obj: CustomType1) -> UUID:
        """Return the wrapped UUID."""
        return obj.value

    def decode(self, data: UUID) -> CustomType1:
        """Wrap the (already decoded) UUID."""
        assert isinstance(data, UUID)
        return CustomType1(value=data)


class CustomType2AsDict(Transcoding):
    """Transcodes :class:`CustomType2` as its :class:`CustomType1` (itself transcoded)."""

    type = CustomType2
    name = "custom_type2_as_dict"

    def encode(self, obj: CustomType2) -> CustomType1:
        """Return the wrapped CustomType1."""
        return obj.value

    def decode(self, data: CustomType1) -> CustomType2:
        """Wrap the (already decoded) CustomType1."""
        assert isinstance(data, CustomType1)
        return CustomType2(data)


class TranscoderTestCase(TestCase):
    """Contract of a :class:`Transcoder`; override :meth:`construct_transcoder`.

    The transcoder should have UUIDAsHex, CustomType1AsDict and CustomType2AsDict
    registered. JSON-based transcoders skip the tuple and subclass tests, since JSON has
    no tuples and the stdlib encoder writes subclasses of dict, list, str and int as their
    base types.
    """

    def setUp(self) -> None:
        """Construct the transcoder under test."""
        self.transcoder = self.construct_transcoder()

    def construct_transcoder(self) -> Transcoder:
        """Return the transcoder under test."""
        raise NotImplementedError(
            f"{type(self).__name__} must override construct_transcoder() to return the "
            "transcoder under test"
        )

    def assert_round_trip(self, obj: Any, expected: bytes | None = None) -> bytes:
        """Assert ``obj`` encodes (to ``expected``, if given) and decodes back equal."""
        data = self.transcoder.encode(obj)
        if expected is not None:
            self.assertEqual(data, expected)
        self.assertEqual(self.transcoder.decode(data), obj)
        return data

    def test_str(self) -> None:
        """Strings are quoted and escaped; non-ASCII is written as raw UTF-8."""
        self.assert_round_trip("a", b'"a"')
        self.assert_round_trip("abc", b'"abc"')
        self.assert_round_trip("a'b", b'"a\'b"')
        self.assert_round_trip('a"b', b'"a\\"b"')
        self.assert_round_trip("🐈 哈哈", b'"\xf0\x9f\x90\x88 \xe5\x93\x88\xe5\x93\x88"')
        # Data written with ensure_ascii=True (older writers) still decodes.
        self.assertEqual(self.transcoder.decode(b'"\\ud83d\\udc08 \\u54c8\\u54c8"'), "🐈 哈哈")

    def test_dict(self) -> None:
        """Dicts, nested and empty, are compact JSON objects."""
        self.assert_round_trip({}, b"{}")
        self.assert_round_trip({"a": 1}, b'{"a":1}')
        self.assert_round_trip({"a": 1, "b": 2}, b'{"a":1,"b":2}')
        self.assert_round_trip({"a": {}}, b'{"a":{}}')
        self.assert_round_trip({"a": {}, "b": {}}, b'{"a":{},"b":{}}')
        self.assert_round_trip({"a": {"b": {}}}, b'{"a":{"b":{}}}')
        self.assert_round_trip({"a": {"b": {"c": 1}}}, b'{"a":{"b":{"c":1}}}')

    def test_dict_with_len_2_and__data_(self) -> None:
        """A two-key dict with only ``_data_`` stays a dict."""
        self.assert_round_trip({"_data_": 1, "something_else": 2})

    def test_dict_with_len_2_and__type_(self) -> None:
        """A two-key dict with only ``_type_`` stays a dict."""
        self.assert_round_trip({"_type_": 1, "something_else": 2})

    def test_dict_subclass(self) -> None:
        """A registered dict subclass keeps its type."""
        data = self.assert_round_trip(Mydict({"a": 1}))
        self.assertEqual(data, b'{"_type_":"mydict","_data_":{"a":1}}')

    def test_list_subclass(self) -> None:
        """A registered list subclass keeps its type."""
        self.assert_round_trip(MyList((("a", 1),)))

    def test_str_subclass(self) -> None:
        """A registered str subclass keeps its type."""
        self.assert_round_trip(MyStr("a"))

    def test_int_subclass(self) -> None:
        """A registered int subclass keeps its type."""
        self.assert_round_trip(MyInt(3))

    def test_tuple(self) -> None:
        """Tuples keep their type, nested too."""
        self.assert_round_trip((), b'{"_type_":"tuple_as_list","_data_":[]}')
        for obj in [((),), ((1, 2),), (("a", "b"),), ((1, "a"),)]:
            self.assert_round_trip(obj)

    def test_list(self) -> None:
        """Lists, nested and empty, round-trip."""
        for obj in [[], [[]], [[1, 2]], [["a", "b"]], [[1, "a"]]]:
            self.assert_round_trip(obj)

    def test_mixed(self) -> None:
        """Tuples, lists and dicts inside one another keep their types."""
        for obj in [[(1, "a"), {"b": 2}], ([1, "a"], {"b": 2}), {"a": (1, 2), "b": [3, 4]}]:
            self.assert_round_trip(obj)

    def test_custom_type_in_dict(self) -> None:
        """A custom type inside a dict round-trips."""
        self.assert_round_trip({"a": CustomType2(CustomType1(UUID(_UUID_HEX)))})

    def test_nested_custom_type(self) -> None:
        """Custom types whose data is another custom type nest their wrappers."""
        obj = CustomType2(CustomType1(UUID(_UUID_HEX)))
        expected = (
            b'{"_type_":"custom_type2_as_dict","_data_":'
            b'{"_type_":"custom_type1_as_dict","_data_":'
            b'{"_type_":"uuid_hex","_data_":"' + _UUID_HEX.encode() + b'"}}}'
        )
        copy = self.transcoder.decode(self.assert_round_trip(obj, expected))
        self.assertIsInstance(copy, CustomType2)
        self.assertIsInstance(copy.value, CustomType1)
        self.assertIsInstance(copy.value.value, UUID)

    def test_custom_type_error(self) -> None:
        """Unregistered types and names raise TypeError saying what to register."""
        expected = (
            f"Object of type {MyClass} is not serializable. Please define and register a "
            "custom transcoding for this type."
        )
        for obj in [MyClass(), {"a": MyClass()}, [MyClass()]]:
            with self.assertRaises(TypeError) as cm:
                self.transcoder.encode(obj)
            self.assertEqual(cm.exception.args[0], expected)

        with self.assertRaises(TypeError) as cm:
            self.transcoder.decode(b'{"_type_":"custom_type3_as_dict","_data_":""}')
        self.assertEqual(
            cm.exception.args[0],
            "Data serialized with name 'custom_type3_as_dict' is not deserializable. "
            "Please register a custom transcoding for this type.",
        )


_UUID_HEX = "b2723fe2c01a40d2875ea3aac6a09ff5"

"""Reusable projection tests, to be subclassed once per persistence module.

The helpers keep the names code written for ``eventsourcing`` 9.x imports:

* :class:`Counter`, an aggregate that counts, and :class:`Counters`, an event-sourced
  projection that keeps one counter per event topic;
* :class:`EventCountersView`, the interface of a materialised view of event counts that
  each persistence module implements as a tracking recorder, and
  :class:`AggregateEventCountersProjection`, which projects into it;
* :class:`SpannerThrown` and :class:`SpannerThrownError`, an event that the projection
  refuses with an error, to test how runners report failures.

Subclass :class:`EventCountersViewTestCase` (implement ``construct_event_counters_view``),
:class:`AggregateEventCountersProjectionTestCase` (set ``view_class`` and ``env``) and
:class:`EventSourcedProjectionTestCase` (set ``env``) for a persistence module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar
from unittest import TestCase
from uuid import NAMESPACE_URL, UUID, uuid5

from typing_extensions import deprecated

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from eventsourcing.projection import (
    EventSourcedProjection,
    EventSourcedProjectionRunner,
    Projection,
    ProjectionRunner,
)
from eventsourcing.utils import get_topic

__all__ = [
    "AggregateEventCountersProjection",
    "AggregateEventCountersProjectionTestCase",
    "Counter",
    "Counters",
    "EventCountersInterface",
    "EventCountersView",
    "EventCountersViewTestCase",
    "EventSourcedProjectionTestCase",
    "SpannerThrown",
    "SpannerThrownError",
]


class Counter(Aggregate):
    """Counts occurrences of something ``name`` identifies; one counter per name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    @classmethod
    def create_id(cls, name: str) -> UUID:
        """Return the id of the counter for ``name`` (the same for the same name)."""
        return uuid5(NAMESPACE_URL, f"/counters/{name}")

    @event("Incremented")
    def increment(self) -> None:
        """Add one to the count."""
        self.count += 1


class EventCountersView(TrackingRecorder):
    """A view that counts "created" events and the events that follow them.

    Each ``incr_*`` method records its tracking object in the same transaction as the new
    count, and raises ``IntegrityError`` (changing nothing) if that position is recorded.
    """

    @abstractmethod
    def get_created_event_counter(self) -> int:
        """Return how many aggregate-created events have been counted."""

    @abstractmethod
    def get_subsequent_event_counter(self) -> int:
        """Return how many other aggregate events have been counted."""

    @abstractmethod
    def incr_created_event_counter(self, tracking: Tracking) -> None:
        """Count a created event processed at ``tracking``, atomically with it."""

    @abstractmethod
    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        """Count another event processed at ``tracking``, atomically with it."""


@deprecated("Use EventCountersView instead")
class EventCountersInterface(EventCountersView, ABC):
    """Deprecated name of :class:`EventCountersView`."""


class Counters(EventSourcedProjection[UUID]):
    """Counts the processed events of each topic, in one :class:`Counter` per topic."""

    @singledispatchmethod
    def policy(
        self,
        domain_event: DomainEventProtocol[UUID],
        processing_event: ProcessingEvent[UUID],
    ) -> None:
        """Increment the counter of the event's topic, creating it the first time."""
        topic = get_topic(type(domain_event))
        try:
            counter: Counter = self.repository.get(Counter.create_id(topic))
        except AggregateNotFoundError:
            counter = Counter(topic)
        counter.increment()
        processing_event.collect_events(counter)

    def get_count(self, domain_event_class: type[DomainEventProtocol[UUID]]) -> int:
        """Return how many events of ``domain_event_class`` have been processed."""
        counter_id = Counter.create_id(get_topic(domain_event_class))
        try:
            counter: Counter = self.repository.get(counter_id)
        except AggregateNotFoundError:
            return 0
        return counter.count


class SpannerThrown(Aggregate.Event):
    """An event that :class:`AggregateEventCountersProjection` fails to process."""


class SpannerThrownError(Exception):
    """The deliberate failure of processing a :class:`SpannerThrown` event."""


class AggregateEventCountersProjection(Projection[EventCountersView]):
    """Counts created and subsequent aggregate events into an :class:`EventCountersView`."""

    name = "eventcounters"
    topics: tuple[str, ...] = (
        get_topic(Aggregate.Created),
        get_topic(Aggregate.Event),
        get_topic(SpannerThrown),
    )

    @singledispatchmethod
    def process_event(self, domain_event: Aggregate.Event, tracking: Tracking) -> None:
        """Record the position only: the event is of no interest to the counts."""
        self.view.insert_tracking(tracking)

    @process_event.register
    def aggregate_created(self, domain_event: Aggregate.Created, tracking: Tracking) -> None:
        """Count a created event."""
        self.view.incr_created_event_counter(tracking)

    @process_event.register
    def aggregate_event(self, domain_event: Aggregate.Event, tracking: Tracking) -> None:
        """Count a subsequent event."""
        self.view.incr_subsequent_event_counter(tracking)

    @process_event.register
    def spanner_thrown(self, domain_event: SpannerThrown, tracking: Tracking) -> None:
        """Fail, deliberately."""
        msg = "This is a deliberate bug"
        raise SpannerThrownError(msg)


class EventCountersViewTestCase(TestCase):
    """Checks an :class:`EventCountersView` implementation."""

    def construct_event_counters_view(self) -> EventCountersView:
        """Return a new, empty view of the persistence module under test."""
        raise NotImplementedError

    def test(self) -> None:
        """Counts and tracking move together, uniquely, and ``wait`` sees the position."""
        view = self.construct_event_counters_view()
        self.assertIsInstance(view, TrackingRecorder)
        self.assertIsNone(view.max_tracking_id("upstream"))
        self.assertEqual(
            (view.get_created_event_counter(), view.get_subsequent_event_counter()), (0, 0)
        )

        view.incr_created_event_counter(Tracking("upstream", 1))
        self.assertEqual(
            (view.get_created_event_counter(), view.get_subsequent_event_counter()), (1, 0)
        )
        view.incr_subsequent_event_counter(Tracking("upstream", 2))
        view.incr_subsequent_event_counter(Tracking("upstream", 3))
        self.assertEqual(
            (view.get_created_event_counter(), view.get_subsequent_event_counter()), (1, 2)
        )
        self.assertEqual(view.max_tracking_id("upstream"), 3)

        # A position already recorded is refused, and the count is left as it was.
        with self.assertRaises(IntegrityError):
            view.incr_created_event_counter(Tracking("upstream", 3))
        self.assertEqual(view.get_created_event_counter(), 1)
        with self.assertRaises(IntegrityError):
            view.incr_subsequent_event_counter(Tracking("upstream", 3))
        self.assertEqual(view.get_subsequent_event_counter(), 2)

        view.wait("upstream", 3)
        with self.assertRaises(TimeoutError):
            view.wait("upstream", 4, timeout=0.3)


class AggregateEventCountersProjectionTestCase(TestCase, ABC):
    """Runs :class:`AggregateEventCountersProjection` with a :class:`ProjectionRunner`."""

    view_class: type[EventCountersView]
    env: ClassVar[dict[str, str]] = {}

    def test_event_counters_projection(self) -> None:
        """The view counts what the application records, as it is recorded."""
        with ProjectionRunner(
            application_class=Application[UUID],
            projection_class=AggregateEventCountersProjection,
            view_class=self.view_class,
            env=self.env,
        ) as runner:
            app, view = runner.app, runner.projection.view
            for expected in ((1, 2), (2, 4)):
                aggregate = Aggregate()
                aggregate.trigger_event(event_class=Aggregate.Event)
                aggregate.trigger_event(event_class=Aggregate.Event)
                recordings = app.save(aggregate)
                view.wait(app.name, recordings[-1].notification.id)
                self.assertEqual(
                    (view.get_created_event_counter(), view.get_subsequent_event_counter()),
                    expected,
                )

    def test_run_forever_raises_projection_error(self) -> None:
        """A failing projection stops the runner; ``run_forever`` raises its error."""
        with ProjectionRunner(
            application_class=Application[UUID],
            projection_class=AggregateEventCountersProjection,
            view_class=self.view_class,
            env=self.env,
        ) as runner:
            aggregate = Aggregate()
            aggregate.trigger_event(event_class=SpannerThrown)
            recordings = runner.app.save(aggregate)
            with self.assertRaises(SpannerThrownError):
                runner.run_forever(timeout=5)
            # The failed event was not processed, so its position is never reached.
            with self.assertRaises(TimeoutError):
                runner.projection.view.wait(
                    runner.app.name, recordings[-1].notification.id, timeout=0.3
                )


class EventSourcedProjectionTestCase(TestCase):
    """Runs :class:`Counters` with an :class:`EventSourcedProjectionRunner`."""

    env: ClassVar[dict[str, str]] = {}

    def test_event_sourced_projection(self) -> None:
        """The projection's counters follow the application's events."""
        with EventSourcedProjectionRunner(
            application_class=Application, projection_class=Counters, env=self.env
        ) as runner:
            for created in (1, 2, 3):
                recordings = runner.app.save(Aggregate())
                runner.wait(recordings[-1].notification.id)
                self.assertEqual(runner.projection.get_count(Aggregate.Created), created)
                self.assertEqual(runner.projection.get_count(Aggregate.Event), 0)

            aggregate = Aggregate()
            aggregate.trigger_event(Aggregate.Event)
            recordings = runner.app.save(aggregate)
            runner.wait(recordings[-1].notification.id)
            self.assertEqual(runner.projection.get_count(Aggregate.Created), 4)
            self.assertEqual(runner.projection.get_count(Aggregate.Event), 1)

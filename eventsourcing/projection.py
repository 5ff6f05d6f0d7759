"""Projections: keep a view, or another event-sourced application, in step with an application.

A projection processes an application's events in the order of its notification log and
records, with each result, how far it has got (a :class:`~eventsourcing.persistence.Tracking`
record). Because the result and the tracking record are written in one transaction, each
event is processed exactly once, however often processing is interrupted and resumed.

* :class:`ApplicationSubscription` yields ``(domain_event, tracking)`` pairs from an
  application's recorder, blocking for new events.
* :class:`Projection` updates a materialised view, which is a tracking recorder.
* :class:`EventSourcedProjection` is an application whose ``policy`` turns processed events
  into new events of its own. It can process a *batch* of events as one unit of work: one
  transaction holds every new event of the batch and one tracking record.
* :class:`ProjectionRunner` and :class:`EventSourcedProjectionRunner` run a projection of an
  application in a background thread.

This module does not depend on ``eventsourcing.dcb``: it projects :class:`Application`
subclasses only.
"""

from __future__ import annotations

import contextlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, cast, get_origin

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    LRUCache,
    ProcessingEvent,
    ProjectorFunction,
    Repository,
    project_aggregate,
)
from eventsourcing.deadletters import RetryTracking
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import DomainEventProtocol, MutableOrImmutableAggregate, TAggregateID
from eventsourcing.persistence import (
    BatchTracking,
    InfrastructureFactory,
    IntegrityError,
    Mapper,
    ProcessRecorder,
    Recording,
    Subscription,
    Tracking,
    TrackingRecorder,
    TTrackingRecorder,
    WaitInterruptedError,
)
from eventsourcing.utils import Environment, EnvType

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

__all__ = [
    "ApplicationSubscription",
    "BaseProjectionRunner",
    "EventSourcedProjection",
    "EventSourcedProjectionRunner",
    "ProcessingFailure",
    "ProcessingJob",
    "Projection",
    "ProjectionRunner",
    "TApplication",
    "TEventSourcedProjection",
    "processing_failure",
]

ProcessingJob = tuple[DomainEventProtocol[TAggregateID], Tracking]
"""A domain event to process, with the position it was recorded at in its application."""


class ApplicationSubscription(Iterator[tuple[DomainEventProtocol[TAggregateID], Tracking]]):
    """Iterates over an application's events after notification ``gt``, then waits for more.

    Each item is ``(domain_event, Tracking(app.name, notification_id))``. Use it as a
    context manager; :meth:`stop` ends the iteration from any thread.
    """

    def __init__(
        self,
        app: Application[TAggregateID],
        gt: int | None = None,
        topics: Sequence[str] = (),
    ):
        """Subscribe to ``app``'s recorder for notifications after ``gt`` of ``topics``."""
        self.name = app.name
        self.recorder = app.recorder
        self.mapper: Mapper[TAggregateID] = app.mapper
        self.subscription: Subscription[Any] = self.recorder.subscribe(gt=gt, topics=topics)

    def stop(self) -> None:
        """End the iteration."""
        self.subscription.stop()

    def __enter__(self) -> Self:
        """Enter the underlying subscription."""
        self.subscription.__enter__()
        return self

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        """Stop and leave the underlying subscription."""
        self.subscription.__exit__(*args, **kwargs)

    def __iter__(self) -> Self:
        """Return the subscription itself."""
        return self

    def __next__(self) -> tuple[DomainEventProtocol[TAggregateID], Tracking]:
        """Return the next event and its position, blocking until there is one."""
        notification = next(self.subscription)
        domain_event: DomainEventProtocol[TAggregateID] = self.mapper.to_domain_event(notification)
        return domain_event, Tracking(self.name, notification.id)

    def __del__(self) -> None:
        """Stop the subscription's background work when garbage collected."""
        with contextlib.suppress(AttributeError):
            self.stop()


class Projection(ABC, Generic[TTrackingRecorder]):
    """Processes an application's events into a materialised view.

    ``name`` (the class name unless set) names the view's environment and tables;
    ``topics``, when not empty, restricts the events the projection is given.
    :meth:`process_event` must update the view and record the tracking object in one
    transaction, for example through view methods that take the tracking object.
    """

    name: str = ""
    topics: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Name each subclass after itself, unless its body sets ``name``."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def __init__(self, view: TTrackingRecorder):
        """Project into ``view``."""
        self._view = view

    @property
    def view(self) -> TTrackingRecorder:
        """The materialised view this projection updates."""
        return self._view

    @singledispatchmethod
    @abstractmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Update the view for ``domain_event`` and record ``tracking``, atomically."""


class _BatchRepository(Repository[TAggregateID]):
    """The repository as a policy sees it while a batch is processed.

    Nothing the policy collected earlier in the batch is stored yet, so the policy is given
    aggregates as the batch has left them: an aggregate it collected is served as it is,
    and events it collected on their own are applied to the aggregate they belong to.
    Aggregates come from ``recorded`` (those earlier batches recorded, see
    :class:`EventSourcedProjection`) when there, else from the application's repository.
    Each aggregate handed out is remembered in ``lent`` (and taken out of ``recorded``
    meanwhile, since the policy may change it and then fail). A request for a specific
    version, or with another projector, goes to the application's repository.
    """

    def __init__(
        self,
        repository: Repository[TAggregateID],
        batch: ProcessingEvent[TAggregateID],
        recorded: LRUCache[TAggregateID, MutableOrImmutableAggregate] | None,
    ):
        # Share the repository's stores, cache and settings, so attributes read the same.
        self.__dict__.update(vars(repository))
        self._repository = repository
        self._batch = batch
        self._recorded = recorded
        self.lent: dict[TAggregateID, MutableOrImmutableAggregate] = {}
        self.used_recorded = False
        self._batch_events: dict[TAggregateID, list[DomainEventProtocol[TAggregateID]]] = {}
        self._num_indexed = 0

    def get(
        self,
        aggregate_id: TAggregateID,
        *,
        version: int | None = None,
        projector_func: ProjectorFunction[Any, Any] = project_aggregate,
        fastforward_skipping: bool = False,
        deepcopy_from_cache: bool = True,
    ) -> Any:
        """Return the aggregate as the batch has left it, else as last recorded."""
        if version is not None or projector_func is not project_aggregate:
            return self._repository.get(
                aggregate_id,
                version=version,
                projector_func=projector_func,
                fastforward_skipping=fastforward_skipping,
                deepcopy_from_cache=deepcopy_from_cache,
            )
        aggregate = self._latest(aggregate_id)
        newer = self._newer_batch_events(aggregate_id, aggregate)
        if newer:
            aggregate = project_aggregate(aggregate, newer)
        if aggregate is None:
            msg = f"Aggregate {aggregate_id!r} version None not found."
            raise AggregateNotFoundError(msg)
        self.lent[aggregate_id] = aggregate
        return aggregate

    def _latest(self, aggregate_id: TAggregateID) -> Any:
        """The aggregate as the batch last had it, or as last recorded (None if new)."""
        aggregate = self._batch.aggregates.get(aggregate_id)
        if aggregate is None:
            aggregate = self.lent.get(aggregate_id)
        if aggregate is not None:
            return aggregate
        if self._recorded is not None:
            try:
                aggregate = self._recorded.get(aggregate_id, evict=True)
            except KeyError:
                pass
            else:
                self.used_recorded = True
                return aggregate
        try:
            return self._repository.get(aggregate_id)
        except AggregateNotFoundError:
            if aggregate_id in self._events_by_aggregate():
                return None  # created by events collected earlier in the batch
            raise

    def _newer_batch_events(
        self, aggregate_id: TAggregateID, aggregate: Any
    ) -> list[DomainEventProtocol[TAggregateID]]:
        events = self._events_by_aggregate().get(aggregate_id)
        if not events:
            return []
        version = 0 if aggregate is None else getattr(aggregate, "version", 0)
        return [e for e in events if e.originator_version > version]

    def _events_by_aggregate(self) -> dict[TAggregateID, list[DomainEventProtocol[TAggregateID]]]:
        """Index the batch's collected events by aggregate (only those new since last time)."""
        events = self._batch.events
        index = self._batch_events
        for event in events[self._num_indexed :]:
            index.setdefault(event.originator_id, []).append(event)
        self._num_indexed = len(events)
        return index

    def keep_recorded(self) -> None:
        """After the batch is recorded, keep its aggregates that are as recorded."""
        recorded = self._recorded
        if recorded is None:
            return
        last_versions = {e.originator_id: e.originator_version for e in self._batch.events}
        # None of these is in `recorded` now: lent ones were taken out, new ones are new.
        for aggregate_id, aggregate in {**self.lent, **self._batch.aggregates}.items():
            if getattr(aggregate, "_pending_events", None):
                continue  # changed after it was collected: ahead of the store
            last_version = last_versions.get(aggregate_id)
            if last_version is not None and getattr(aggregate, "version", None) != last_version:
                continue  # changed by events collected on their own: behind the store
            recorded.put(aggregate_id, aggregate)


class EventSourcedProjection(Application[TAggregateID], ABC):
    """An application that processes another application's events with its ``policy``.

    New events from the policy are recorded in the same transaction as the tracking
    record of what was processed, using a process recorder, so each event is processed
    exactly once. :meth:`process_events` processes a batch of events in one transaction.

    The policy's ``repository.get()`` serves aggregates that earlier batches recorded from
    memory, up to ``policy_cache_maxsize`` of them (environment variable
    ``POLICY_CACHE_MAXSIZE``; 0 turns this off). They are checked by the store as any
    save is: if one turns out to be out of date (another writer changed it), the version
    conflict makes the batch run once more, with every aggregate loaded from the store.
    9.5.6 difference: policy cache.
    """

    topics: Sequence[str] = ()
    policy_cache_maxsize = 10_000
    POLICY_CACHE_MAXSIZE = "POLICY_CACHE_MAXSIZE"

    def __init__(self, env: EnvType | None = None) -> None:
        """Construct the application, with a process recorder."""
        # Set before the application's own construction, which may read `repository`.
        self._batch_state = threading.local()
        super().__init__(env)
        self.recorder: ProcessRecorder
        self.processing_lock = threading.Lock()
        maxsize = self._env_policy_cache_maxsize()
        self._recorded_aggregates: LRUCache[TAggregateID, MutableOrImmutableAggregate] | None = (
            LRUCache(maxsize) if maxsize > 0 else None
        )
        self._batch_used_recorded = False
        # The positions this instance recorded (or found recorded), per leader.
        self._positions: dict[str, int] = {}

    def _env_policy_cache_maxsize(self) -> int:
        value = self.env.get(self.POLICY_CACHE_MAXSIZE)
        if not value:
            return type(self).policy_cache_maxsize
        try:
            return int(value)
        except ValueError:
            msg = (
                f"Invalid {self.POLICY_CACHE_MAXSIZE} value {value!r} for {self.name!r}: set "
                "the number of aggregates to keep for the policy (0 keeps none)"
            )
            raise ValueError(msg) from None

    def construct_recorder(self) -> ProcessRecorder:
        """Construct a process recorder, which records events and tracking together."""
        return self.factory.process_recorder()

    @property
    def repository(self) -> Repository[TAggregateID]:
        """The repository; inside a batch, one that also serves the batch's new aggregates."""
        view: Repository[TAggregateID] | None = getattr(self._batch_state, "view", None)
        return self._repository if view is None else view

    def process_event(
        self, domain_event: DomainEventProtocol[TAggregateID], tracking: Tracking
    ) -> None:
        """Apply the policy to one event; record its new events with ``tracking``.

        The tracking record is stored even when the policy collects no events.
        """
        self.process_events([(domain_event, tracking)])

    def process_events(
        self,
        jobs: Sequence[ProcessingJob[TAggregateID]],
        tracking: Tracking | None = None,
    ) -> list[Recording[TAggregateID]]:
        """Apply the policy to a batch of events and record the outcome in one transaction.

        Every event the policy collects for the batch is stored together with one
        tracking record: ``tracking`` if given (it may be beyond the last job, to track
        notifications that were filtered out), else the last job's. If the policy raises,
        nothing of the batch is recorded; the error gets a note naming the event, its
        application and its notification id. Within the batch, the policy's
        ``repository.get()`` returns aggregates it changed earlier in the batch as changed.
        """
        if tracking is None:
            if not jobs:
                return []
            tracking = jobs[-1][1]
        tracking = _batch_tracking(jobs, tracking)
        with self.processing_lock:
            # Not ProcessingEvent[TAggregateID](...): calling the alias costs a batch more.
            processing_event: ProcessingEvent[TAggregateID] = ProcessingEvent(tracking=tracking)
            try:
                recordings = self._process_batch(jobs, processing_event)
            except IntegrityError:
                if not self._forget_recorded_aggregates():
                    raise
                # Kept aggregates were out of date: run the batch again from the store.
                processing_event = ProcessingEvent(tracking=tracking)
                recordings = self._process_batch(jobs, processing_event)
            if not isinstance(tracking, RetryTracking):  # a retry leaves the position
                self._positions[tracking.application_name] = tracking.notification_id
            self._take_snapshots(processing_event)
            self.notify(processing_event.events)  # deprecated hook, kept for subclasses
            self._notify(recordings)
        return recordings

    def _process_batch(
        self,
        jobs: Sequence[ProcessingJob[TAggregateID]],
        processing_event: ProcessingEvent[TAggregateID],
    ) -> list[Recording[TAggregateID]]:
        tracking = processing_event.tracking
        view = _BatchRepository(self._repository, processing_event, self._recorded_aggregates)
        state = self._batch_state
        state.view = view
        try:
            self._apply_policy(jobs, processing_event)
        finally:
            state.view = None
        processing_event.tracking = tracking
        self._batch_used_recorded = view.used_recorded
        recordings = self._record_batch(processing_event, jobs)
        view.keep_recorded()
        return recordings

    def recorded_position(self, leader_name: str) -> int | None:
        """Return the position recorded for ``leader_name`` (None if nothing is).

        If it isn't the position this instance last recorded, another process has recorded
        one since, and may have changed aggregates the policy cache holds: they are dropped.
        """
        position = self.recorder.max_tracking_id(leader_name)
        if position != self._positions.get(leader_name):
            self.forget_policy_cache()
            if position is not None:
                self._positions[leader_name] = position
        return position

    def forget_policy_cache(self) -> None:
        """Drop the aggregates kept for the policy (another process may have changed them)."""
        if self._recorded_aggregates is not None:
            self._recorded_aggregates.clear()

    def _forget_recorded_aggregates(self) -> bool:
        """Forget every kept aggregate; say whether the failed batch had used any."""
        if self._recorded_aggregates is None or not self._batch_used_recorded:
            return False
        self._recorded_aggregates.clear()
        return True

    def _apply_policy(
        self,
        jobs: Sequence[ProcessingJob[TAggregateID]],
        processing_event: ProcessingEvent[TAggregateID],
    ) -> None:
        policy = self.policy  # look the dispatcher up once per batch, not once per event
        for domain_event, tracking in jobs:
            # Policies may read the position of the event they are processing.
            processing_event.tracking = tracking
            try:
                policy(domain_event, processing_event)
            except Exception as error:
                ProcessingFailure.of(self.name, domain_event, tracking, jobs).attach(error)
                raise

    def _record_batch(
        self,
        processing_event: ProcessingEvent[TAggregateID],
        jobs: Sequence[ProcessingJob[TAggregateID]],
    ) -> list[Recording[TAggregateID]]:
        try:
            return self._record(processing_event)
        except Exception as error:
            tracking = processing_event.tracking
            if tracking is not None and len(jobs) > 1:
                error.add_note(
                    f"{self.name!r} could not record the outcome of a batch of {len(jobs)} "
                    f"notifications of {tracking.application_name!r} (ids "
                    f"{jobs[0][1].notification_id} to {tracking.notification_id}); none of "
                    "the batch was recorded"
                )
            raise

    def _record(
        self, processing_event: ProcessingEvent[TAggregateID]
    ) -> list[Recording[TAggregateID]]:
        """Record as the application does; a save outside a batch outdates kept copies."""
        recordings = super()._record(processing_event)
        recorded = self._recorded_aggregates
        if recorded is not None and processing_event.tracking is None:
            for event in processing_event.events:
                with contextlib.suppress(KeyError):
                    recorded.get(event.originator_id, evict=True)
        return recordings

    @singledispatchmethod
    def policy(
        self,
        domain_event: DomainEventProtocol[TAggregateID],
        processing_event: ProcessingEvent[TAggregateID],
    ) -> None:
        """Turn a processed event into new events; this default ignores every event.

        Override it, or register handlers per event class. Collect new events with
        ``processing_event.collect_events(...)``, never with ``save()``, so that they are
        recorded atomically with the tracking record.
        """


def _batch_tracking(jobs: Sequence[ProcessingJob[Any]], tracking: Tracking) -> Tracking:
    """The tracking record of a batch: refused if any notification of it was recorded."""
    ids = tuple(job_tracking.notification_id for _, job_tracking in jobs)
    if ids in ((), (tracking.notification_id,)) or type(tracking) is not Tracking:
        return tracking
    return BatchTracking(tracking.application_name, tracking.notification_id, ids)


class ProcessingFailure(NamedTuple):
    """Where a policy raised: the follower, the notification's tracking record, the event,
    and the batch the event was processed in (rolled back as a whole).

    :meth:`attach` gives it to the error the policy raised, with a note saying the same in
    words; :func:`processing_failure` reads it back, so that whoever deals with the error
    (a runner's feed, a worker) reads these attributes rather than the note.
    """

    follower_name: str
    tracking: Tracking
    domain_event: Any
    batch_size: int = 1
    batch_first_id: int | None = None
    batch_last_id: int | None = None

    @classmethod
    def of(
        cls,
        follower_name: str,
        domain_event: DomainEventProtocol[Any],
        tracking: Tracking,
        jobs: Sequence[ProcessingJob[Any]],
    ) -> ProcessingFailure:
        """The failure of ``follower_name``'s policy on ``domain_event`` (at ``tracking``),
        processed in the batch ``jobs``."""
        first, last = jobs[0][1].notification_id, jobs[-1][1].notification_id
        return cls(follower_name, tracking, domain_event, len(jobs), first, last)

    @property
    def leader_name(self) -> str:
        """The application whose notification it was."""
        return self.tracking.application_name

    @property
    def notification_id(self) -> int:
        """The notification's id in the leader's log."""
        return self.tracking.notification_id

    @property
    def originator_id(self) -> Any:
        """The id of the aggregate the event belongs to (None if the event has none)."""
        return getattr(self.domain_event, "originator_id", None)

    @property
    def originator_version(self) -> Any:
        """The event's version of its aggregate (None if the event has none)."""
        return getattr(self.domain_event, "originator_version", None)

    @property
    def event_name(self) -> str:
        """The event's class, as ``module.QualifiedName``."""
        event_cls = type(self.domain_event)
        return f"{event_cls.__module__}.{event_cls.__qualname__}"

    @property
    def note(self) -> str:
        """Where the policy failed, and what became of its batch, in words."""
        note = (
            f"Policy of {self.follower_name!r} raised while processing notification "
            f"{self.notification_id} of {self.leader_name!r}: {self.event_name} event of "
            f"originator {self.originator_id} at version {self.originator_version}."
        )
        if self.batch_size > 1:
            return note + (
                f" The whole batch of {self.batch_size} notifications (ids "
                f"{self.batch_first_id} to {self.batch_last_id}) was rolled back: none of "
                "it was recorded, and it will be processed again."
            )
        return note + " Nothing was recorded; the notification will be processed again."

    def attach(self, error: BaseException) -> None:
        """Give this failure to ``error``, the error the policy raised, with its note."""
        error.add_note(self.note)
        # Exceptions with __slots__ can't carry it: their failure is then found by retrying.
        with contextlib.suppress(AttributeError, TypeError):
            setattr(error, _FAILURE_ATTRIBUTE, self)


_FAILURE_ATTRIBUTE = "_eventsourcing_processing_failure"


def processing_failure(error: BaseException) -> ProcessingFailure | None:
    """Where the policy that raised ``error`` failed, if it was a follower's policy."""
    failure = getattr(error, _FAILURE_ATTRIBUTE, None)
    return failure if isinstance(failure, ProcessingFailure) else None


TApplication = TypeVar("TApplication")
TEventSourcedProjection = TypeVar("TEventSourcedProjection", bound=EventSourcedProjection[Any])


class BaseProjectionRunner(Generic[TApplication]):
    """Runs a projection of an application in a background thread.

    The runner constructs the application, subscribes to it after the position the
    tracking recorder has reached, and calls ``projection.process_event`` for each event.
    An error in the projection interrupts the runner and is re-raised by
    :meth:`run_forever`, :meth:`wait` or on leaving the context manager.
    """

    def __init__(
        self,
        *,
        projection: EventSourcedProjection[Any] | Projection[Any],
        application_class: type[TApplication],
        tracking_recorder: TrackingRecorder,
        topics: Sequence[str],
        env: EnvType | None = None,
    ) -> None:
        """Construct the application and start processing its events in a thread."""
        self._projection = projection
        self._tracking_recorder = tracking_recorder
        self._is_interrupted = threading.Event()
        self._has_called_stop = False
        self._thread_error: BaseException | None = None
        app = _construct_application(application_class, env)
        self.app = cast("TApplication", app)
        self.app_name: str = app.name
        try:
            self._subscription: ApplicationSubscription[Any] = ApplicationSubscription(
                app=app, gt=tracking_recorder.max_tracking_id(app.name), topics=topics
            )
        except BaseException:
            app.close()
            raise
        self._processing_thread = threading.Thread(
            target=self._process_events_loop,
            name=f"projection of {app.name}",
            daemon=True,
        )
        self._processing_thread.start()

    @property
    def is_interrupted(self) -> threading.Event:
        """Set when the runner has been stopped or its projection has failed."""
        return self._is_interrupted

    @staticmethod
    def _construct_env(name: str, env: EnvType | None = None) -> Environment:
        """Return the projection's environment: ``os.environ`` updated with ``env``."""
        merged: dict[str, str] = dict(os.environ)
        if env is not None:
            merged.update(env)
        return Environment(name, merged)

    def stop(self) -> None:
        """Interrupt the runner: processing ends after the current event."""
        self._has_called_stop = True
        self._interrupt()

    def _interrupt(self) -> None:
        self._is_interrupted.set()
        self._subscription.stop()

    def _process_events_loop(self) -> None:
        try:
            process_event = self._projection.process_event
            for domain_event, tracking in self._subscription:
                process_event(domain_event, tracking)
        except BaseException as error:
            self._thread_error = error
        finally:
            self._interrupt()

    def _take_error(self) -> BaseException | None:
        error, self._thread_error = self._thread_error, None
        return error

    def run_forever(self, timeout: float | None = None) -> None:
        """Block until the runner is interrupted or ``timeout`` passes.

        Re-raises (once) an error from the projection.
        """
        if self._is_interrupted.wait(timeout=timeout):
            error = self._take_error()
            if error is not None:
                raise error from None

    def wait(self, notification_id: int | None, timeout: float = 1.0) -> None:
        """Block until the projection has processed ``notification_id``.

        Raises ``TimeoutError`` after ``timeout`` seconds, re-raises a projection error,
        returns quietly if the runner was stopped, and otherwise raises
        :class:`~eventsourcing.persistence.WaitInterruptedError` if interrupted.
        """
        try:
            self._tracking_recorder.wait(
                application_name=self.app_name,
                notification_id=notification_id,
                timeout=timeout,
                interrupt=self._is_interrupted,
            )
        except WaitInterruptedError:
            error = self._take_error()
            if error is not None:
                raise error from None
            if self._has_called_stop:
                return
            raise

    def __enter__(self) -> Self:
        """Enter the subscription's context."""
        self._subscription.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Stop, wait for the processing thread, close the application, re-raise errors."""
        self.stop()
        self._subscription.__exit__(exc_type, exc_val, exc_tb)
        self._processing_thread.join()
        cast("Application[Any]", self.app).close()
        error = self._take_error()
        if error is not None:
            raise error

    def __del__(self) -> None:
        """Interrupt the processing thread when garbage collected."""
        with contextlib.suppress(AttributeError):
            self.stop()


def _construct_application(application_class: type[Any], env: EnvType | None) -> Application[Any]:
    """Construct the projected application; generic aliases like ``Application[UUID]`` work."""
    cls = get_origin(application_class) or application_class
    if not (isinstance(cls, type) and issubclass(cls, Application)):
        msg = (
            f"Unsupported application type: {application_class!r} is not a subclass of "
            f"{Application.__module__}.Application; pass an application class"
        )
        raise TypeError(msg)
    return cast("Application[Any]", application_class(env))


class ProjectionRunner(
    BaseProjectionRunner[TApplication], Generic[TApplication, TTrackingRecorder]
):
    """Runs a :class:`Projection` of an application into a view of ``view_class``.

    The view is constructed by the infrastructure factory of the persistence module the
    environment selects, with the environment named after the projection, so
    ``view_class`` must subclass that module's tracking recorder class.
    """

    def __init__(
        self,
        *,
        application_class: type[TApplication],
        projection_class: type[Projection[TTrackingRecorder]],
        view_class: type[TTrackingRecorder],
        env: EnvType | None = None,
    ):
        """Construct the view, the projection and the application; start processing."""
        factory = InfrastructureFactory[TTrackingRecorder].construct(
            env=self._construct_env(name=projection_class.name, env=env)
        )
        self.view: TTrackingRecorder = factory.tracking_recorder(view_class)
        self.projection = projection_class(view=self.view)
        super().__init__(
            projection=self.projection,
            application_class=application_class,
            tracking_recorder=self.view,
            topics=self.projection.topics,
            env=env,
        )


class EventSourcedProjectionRunner(
    BaseProjectionRunner[TApplication], Generic[TApplication, TEventSourcedProjection]
):
    """Runs an :class:`EventSourcedProjection` of an application."""

    def __init__(
        self,
        *,
        application_class: type[TApplication],
        projection_class: type[TEventSourcedProjection],
        env: EnvType | None = None,
    ):
        """Construct the projection and the application; start processing."""
        self.projection: TEventSourcedProjection = projection_class(
            env=self._construct_env(name=projection_class.name, env=env)
        )
        super().__init__(
            projection=self.projection,
            application_class=application_class,
            tracking_recorder=self.projection.recorder,
            topics=self.projection.topics,
            env=env,
        )

    def __enter__(self) -> Self:
        """Enter the subscription's and the projection's contexts."""
        runner = super().__enter__()
        self.projection.__enter__()
        return runner

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Stop the runner, then leave the projection's context."""
        # The processing thread uses the projection, so the projection closes last.
        try:
            super().__exit__(exc_type, exc_val, exc_tb)
        finally:
            self.projection.__exit__(exc_type, exc_val, exc_tb)

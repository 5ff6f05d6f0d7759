"""Systems of applications that follow each other, and the in-process runners that run them.

A :class:`System` is a set of pipes, such as ``[[Orders, Reservations, Payments]]``: each
application in a pipe follows the one before it. A :class:`Leader` prompts its followers
after each save; a :class:`Follower` reads the leader's notification log after the position
it has recorded, runs its ``policy`` on each event, and records the new events together with
its new position. A :class:`ProcessApplication` is both.

Followers process notifications in batches: up to ``process_batch_size`` notifications of one
leader are processed as one unit of work, whose new events and one tracking record (the last
notification id) are recorded in one transaction. Processing is therefore exactly once: a
batch that fails records nothing and is processed again; a batch that was recorded is never
processed again, because its tracking record is there.

Four runners run a system in this process. They share one implementation and differ on two
axes only:

================================  ==========================  ============================
runner                            where processing runs       what a prompt delivers
================================  ==========================  ============================
:class:`SingleThreadedRunner`     inside the leader's save()  "read my log" (re-read)
:class:`NewSingleThreadedRunner`  inside the leader's save()  the new events themselves
:class:`MultiThreadedRunner`      one thread per follower     "read my log" (re-read)
:class:`NewMultiThreadedRunner`   one thread per follower     the new events themselves
================================  ==========================  ============================

When a prompt carries events, they are used as they are unless they do not continue from the
follower's position, in which case the gap is read from the log first. Notification ids
decide, not the order prompts arrive in (9.5.6 difference: prompts judged by notification
id). Every runner catches up with the backlog when it starts, and can be stopped and started
again.
"""

from __future__ import annotations

import enum
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from queue import Full, Queue
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast

from eventsourcing.application import (
    Application,
    NotificationLog,
    ProgrammingError,
    Section,
    TApplication,
)
from eventsourcing.domain import DomainEventProtocol, MutableOrImmutableAggregate, TAggregateID
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    Notification,
    Recording,
    Tracking,
)
from eventsourcing.projection import EventSourcedProjection, ProcessingJob
from eventsourcing.utils import EnvType, get_topic

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "ConvertingJob",
    "ConvertingThread",
    "EventProcessingError",
    "Follower",
    "Leader",
    "MultiThreadedRunner",
    "MultiThreadedRunnerThread",
    "NewMultiThreadedRunner",
    "NewSingleThreadedRunner",
    "NotificationConvertingError",
    "NotificationLogReader",
    "NotificationPullingError",
    "ProcessApplication",
    "ProcessingJob",
    "ProcessingThread",
    "PullingThread",
    "RecordingEvent",
    "RecordingEventReceiver",
    "Runner",
    "RunnerAlreadyStartedError",
    "SingleThreadedRunner",
    "System",
    "UnknownApplicationError",
]


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------


class RecordingEvent(Generic[TAggregateID]):
    """What a leader tells its followers after recording new events.

    ``recordings`` are the new events with their notifications, and
    ``previous_max_notification_id`` is the leader's last notified id before them, so a
    receiver can tell whether it has missed anything.
    """

    __slots__ = ("application_name", "previous_max_notification_id", "recordings")

    def __init__(
        self,
        application_name: str,
        recordings: list[Recording[TAggregateID]],
        previous_max_notification_id: int | None,
    ):
        """Describe ``recordings`` newly recorded by the application ``application_name``."""
        self.application_name = application_name
        self.recordings = recordings
        self.previous_max_notification_id = previous_max_notification_id


class RecordingEventReceiver(ABC, Generic[TAggregateID]):
    """Anything a leader can prompt: followers' runners and threads."""

    @abstractmethod
    def receive_recording_event(self, new_recording_event: RecordingEvent[TAggregateID]) -> None:
        """Take note of newly recorded events; must not block for long."""


# ---------------------------------------------------------------------------
# Reading notification logs
# ---------------------------------------------------------------------------


class NotificationLogReader:
    """Reads a notification log in sections or in selections of ``section_size``."""

    DEFAULT_SECTION_SIZE = 10

    def __init__(self, notification_log: NotificationLog, section_size: int = DEFAULT_SECTION_SIZE):
        """Read ``notification_log``, ``section_size`` notifications at a time."""
        self.notification_log = notification_log
        self.section_size = section_size

    def read(self, *, start: int) -> Iterator[Notification]:
        """Yield every notification from ``start`` on, following the sections' links."""
        section_id: str | None = f"{start},{start + self.section_size - 1}"
        while section_id is not None:
            section: Section = self.notification_log[section_id]
            yield from section.items
            section_id = section.next_id

    def select(
        self,
        *,
        start: int | None,
        stop: int | None = None,
        topics: Sequence[str] = (),
        inclusive_of_start: bool = True,
    ) -> Iterator[Sequence[Notification]]:
        """Yield lists of notifications from ``start`` (up to ``stop``), until one is empty."""
        while True:
            notifications = self.notification_log.select(
                start=start,
                limit=self.section_size,
                stop=stop,
                topics=topics,
                inclusive_of_start=inclusive_of_start,
            )
            if not notifications:
                return
            start = notifications[-1].id + 1 if inclusive_of_start else notifications[-1].id
            yield notifications


# ---------------------------------------------------------------------------
# Application roles
# ---------------------------------------------------------------------------


class Follower(EventSourcedProjection[TAggregateID]):
    """An application that processes the events of the applications it follows.

    :meth:`follow` gives it a leader's notification log; :meth:`pull_and_process` then
    processes the leader's notifications after the recorded position, in batches of up to
    ``process_batch_size`` notifications (environment variable ``PROCESS_BATCH_SIZE``), each
    batch recorded in one transaction with one tracking record.

    A follower whose recorder extends ``_insert_events`` (to write rows of its own from the
    keyword arguments a policy collects) processes one notification per transaction.

    Within a batch the policy's ``repository.get()`` sees what the policy did earlier in
    the batch; other reads (the follower's own notification log, a query on its recorder)
    see only what is recorded, that is, not the rest of the batch. Set the batch size to 1
    where a policy depends on such reads. 9.5.6 difference: processing in batches.

    ``topics``, when set, restricts processing to events of those topics (the legacy class
    attribute ``follow_topics`` is accepted too).
    """

    pull_section_size = 10
    process_batch_size = 100
    PROCESS_BATCH_SIZE = "PROCESS_BATCH_SIZE"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Accept the legacy ``follow_topics`` class attribute as ``topics``."""
        super().__init_subclass__(**kwargs)
        cls.topics = getattr(cls, "follow_topics", cls.topics)

    def __init__(self, env: EnvType | None = None) -> None:
        """Construct the application; it follows no leader until :meth:`follow` is called."""
        super().__init__(env)
        self.readers: dict[str, NotificationLogReader] = {}
        self.mappers: dict[str, Mapper[TAggregateID]] = {}
        self.is_threading_enabled = False
        self.process_batch_size = self._env_batch_size()
        if getattr(self.recorder, "_has_insert_hook", False):
            # A recorder that extends _insert_events reads the keyword arguments a policy
            # collects with its events, which are per notification (as in 9.x): batching
            # would merge them, so each notification gets a transaction of its own
            # (9.5.6 difference: one notification per transaction with an insert hook).
            self.process_batch_size = 1
        # A subclass that overrides process_event() gets it called for each event.
        self.processes_each_event = type(self).process_event is not Follower.process_event

    def _env_batch_size(self) -> int:
        value = self.env.get(self.PROCESS_BATCH_SIZE)
        if not value:
            return type(self).process_batch_size
        try:
            size = int(value)
        except ValueError:
            size = 0
        if size < 1:
            msg = (
                f"Invalid {self.PROCESS_BATCH_SIZE} value {value!r} for {self.name!r}: set a "
                "positive integer (the most notifications processed in one transaction)"
            )
            raise ValueError(msg)
        return size

    def follow(self, name: str, log: NotificationLog) -> None:
        """Read the events of the leader ``name`` from its notification ``log`` from now on.

        The leader's events are decoded with a mapper configured from this application's
        environment under the leader's name, so ``LEADERNAME_CIPHER_KEY`` and the like apply.
        """
        self.readers[name] = NotificationLogReader(log, section_size=self.pull_section_size)
        factory = self.construct_factory(self.construct_env(name, self.env))
        try:
            self.mappers[name] = factory.mapper(
                self.construct_transcoder(), mapper_class=type(self.mapper)
            )
        finally:
            # Only the mapper is needed: release whatever the factory opened.
            factory.close()

    def pull_and_process(
        self, leader_name: str, start: int | None = None, stop: int | None = None
    ) -> None:
        """Process ``leader_name``'s notifications after ``start`` (up to ``stop``), in batches.

        ``start`` defaults to the position recorded for the leader.
        """
        if start is None:
            start = self.recorded_position(leader_name)
        _LeaderFeed(self, leader_name, start).catch_up(stop=stop)

    def process_event(
        self, domain_event: DomainEventProtocol[TAggregateID], tracking: Tracking
    ) -> None:
        """Process one event, under the processing lock, recording ``tracking`` with it."""
        self.process_events([(domain_event, tracking)])

    def pull_notifications(
        self,
        leader_name: str,
        start: int | None,
        stop: int | None = None,
        *,
        inclusive_of_start: bool = True,
    ) -> Iterator[Sequence[Notification]]:
        """Yield lists of ``leader_name``'s notifications of this follower's topics."""
        try:
            reader = self.readers[leader_name]
        except KeyError:
            msg = (
                f"{self.name!r} does not follow {leader_name!r}: call follow() with the "
                "leader's notification log first, or add the leader to a pipe of the System"
            )
            raise ProgrammingError(msg) from None
        return reader.select(
            start=start, stop=stop, topics=self.topics, inclusive_of_start=inclusive_of_start
        )

    def filter_received_notifications(
        self, notifications: Sequence[Notification]
    ) -> Sequence[Notification]:
        """Keep the notifications of this follower's topics (all, if it has none)."""
        topics = self.topics
        if topics:
            return [n for n in notifications if n.topic in topics]
        return notifications

    def convert_notifications(
        self, leader_name: str, notifications: Iterable[Notification]
    ) -> list[ProcessingJob[TAggregateID]]:
        """Decode notifications into ``(domain_event, tracking)`` pairs."""
        to_domain_event = self.mappers[leader_name].to_domain_event
        return [
            (to_domain_event(notification), Tracking(leader_name, notification.id))
            for notification in notifications
        ]


class Leader(Application[TAggregateID]):
    """An application that prompts its followers after recording new events.

    ``notify_topics``, when set, restricts the prompts to events of those topics.
    """

    def __init__(self, env: EnvType | None = None) -> None:
        """Construct the application, with no followers yet."""
        super().__init__(env)
        self.previous_max_notification_id: int | None = None
        self.followers: list[RecordingEventReceiver[TAggregateID]] = []
        # Keeps each prompt's previous id consistent with the prompt before it.
        self._prompt_lock = threading.Lock()
        # Saves started and ended, counted once a follower waits for the saves in flight
        # (until then a save pays nothing for it).
        self._counts_saves = False
        self._saves_started = 0
        self._saves_ended = 0
        self._saves_lock = threading.Lock()
        self._save_ended = threading.Condition(self._saves_lock)
        self._save_waiters = 0

    def lead(self, follower: RecordingEventReceiver[TAggregateID]) -> None:
        """Prompt ``follower`` after each recording of new events."""
        self.followers.append(follower)

    def save(
        self,
        *objs: MutableOrImmutableAggregate | DomainEventProtocol[TAggregateID] | None,
        **kwargs: Any,
    ) -> list[Recording[TAggregateID]]:
        """Record events as :meth:`Application.save` does, then prompt the followers."""
        if self.previous_max_notification_id is None:
            self.previous_max_notification_id = self.recorder.max_notification_id()
        if not self._counts_saves:  # read once: a save counts both its ends or neither
            return super().save(*objs, **kwargs)
        saves_lock = self._saves_lock
        with saves_lock:
            self._saves_started += 1
        try:
            return super().save(*objs, **kwargs)
        finally:
            with saves_lock:
                self._saves_ended += 1
                if self._save_waiters:
                    self._save_ended.notify_all()

    def wait_for_saves_in_flight(self, timeout: float, linger: float = 0.0) -> None:
        """Wait (up to ``timeout`` seconds) until the saves started by now have ended.

        A follower that does this before processing commits the events of those saves in
        one batch instead of one commit each; it waits only while saves are in flight.
        With ``linger``, it goes on waiting for the saves that start meanwhile, back to
        back, for up to ``linger`` seconds in all: when saves come without a pause, one
        batch then takes in several, where each would otherwise bring a commit of its own.
        """
        self._counts_saves = True  # from now on (saves already in flight aren't waited for)
        save_ended = self._save_ended
        deadline = time.monotonic() + linger
        with save_ended:
            while True:
                started = self._saves_started
                if self._saves_ended >= started:
                    return
                self._save_waiters += 1
                try:
                    ended = save_ended.wait_for(partial(self._have_ended, started), timeout)
                finally:
                    self._save_waiters -= 1
                if not ended or time.monotonic() >= deadline:
                    return

    def _have_ended(self, saves: int) -> bool:
        return self._saves_ended >= saves

    def _notify(self, recordings: list[Recording[TAggregateID]]) -> None:
        """Prompt every follower with the new recordings (of ``notify_topics``, if set)."""
        super()._notify(recordings)
        if self.notify_topics:
            notify_topics = self.notify_topics
            recordings = [r for r in recordings if r.notification.topic in notify_topics]
        if not recordings:
            return
        with self._prompt_lock:
            previous = self.previous_max_notification_id
            recording_event = RecordingEvent(self.name, recordings, previous)
            last_id = recordings[-1].notification.id
            # Concurrent saves may notify out of order: never move backwards.
            if previous is None or last_id > previous:
                self.previous_max_notification_id = last_id
        for follower in self.followers:
            follower.receive_recording_event(recording_event)


class ProcessApplication(Leader[TAggregateID], Follower[TAggregateID]):
    """Follows applications, and leads others with the events its policy records."""


# ---------------------------------------------------------------------------
# System
# ---------------------------------------------------------------------------


class System:
    """The applications of a system, and which follows which.

    Each pipe is a chain of application classes, each following the one before it.
    Applications are identified by their ``name``.
    """

    def __init__(self, pipes: Iterable[Iterable[type[Application[Any]]]]):
        """Define the system; raise TypeError if an application cannot play its role."""
        # Remember where the system was defined, so that `topic` can find it.
        caller = sys._getframe(1)
        self._module_name: str = caller.f_globals.get("__name__", "")
        self._classes: dict[str, type[Application[Any]]] = {}
        self._leader_classes: dict[str, type[Leader[Any]]] = {}
        self.edges: list[tuple[str, str]] = []
        for pipe in pipes:
            previous: str | None = None
            for cls in pipe:
                self._classes.setdefault(cls.name, cls)
                if previous is not None and (previous, cls.name) not in self.edges:
                    self.edges.append((previous, cls.name))
                previous = cls.name
        self.nodes: dict[str, str] = {name: get_topic(c) for name, c in self._classes.items()}
        self.follows: defaultdict[str, list[str]] = defaultdict(list)
        self.leads: defaultdict[str, list[str]] = defaultdict(list)
        for leader_name, follower_name in self.edges:
            self.leads[leader_name].append(follower_name)
            self.follows[follower_name].append(leader_name)
        self.singles = [n for n in self._classes if n not in self.leads and n not in self.follows]
        self._check_roles()

    def _check_roles(self) -> None:
        for name in self.follows:
            if not issubclass(self._classes[name], Follower):
                msg = f"Not a follower class: {self._classes[name]}"
                raise TypeError(msg)
        for name in self.processors:
            if not issubclass(self._classes[name], ProcessApplication):
                msg = f"Not a process application class: {self._classes[name]}"
                raise TypeError(msg)

    @property
    def leaders(self) -> list[str]:
        """The names of the applications that others follow."""
        return list(self.leads)

    @property
    def leaders_only(self) -> list[str]:
        """The names of the applications that lead and do not follow."""
        return [name for name in self.leads if name not in self.follows]

    @property
    def followers(self) -> list[str]:
        """The names of the applications that follow others."""
        return list(self.follows)

    @property
    def processors(self) -> list[str]:
        """The names of the applications that both lead and follow."""
        return [name for name in self.leads if name in self.follows]

    def get_app_cls(self, name: str) -> type[Application[Any]]:
        """Return the application class named ``name``."""
        try:
            return self._classes[name]
        except KeyError:
            msg = f"No application named {name!r} in this system; it has {list(self._classes)}"
            raise KeyError(msg) from None

    def leader_cls(self, name: str) -> type[Leader[Any]]:
        """Return the class named ``name``, made a :class:`Leader` if it is not one.

        A plain application class is extended with :class:`Leader` (once), so an instance is
        still an instance of the class the system was defined with.
        """
        cls = self.get_app_cls(name)
        if issubclass(cls, Leader):
            return cls
        leader_cls = self._leader_classes.get(name)
        if leader_cls is None:
            leader_cls = type(cls.__name__, (Leader, cls), {"name": cls.name})
            self._leader_classes[name] = leader_cls
        return leader_cls

    def follower_cls(self, name: str) -> type[Follower[Any]]:
        """Return the follower class named ``name``."""
        cls = self.get_app_cls(name)
        if not issubclass(cls, Follower):
            msg = f"Not a follower class: {cls}"
            raise TypeError(msg)
        return cls

    @property
    def topic(self) -> str:
        """The topic of this system, when it is assigned to a module attribute.

        Raises :class:`~eventsourcing.application.ProgrammingError` otherwise.
        """
        module = sys.modules.get(self._module_name)
        for attr, value in vars(module).items() if module is not None else ():
            if value is self:
                return f"{self._module_name}:{attr}"
        msg = (
            f"Unable to compute topic for system object: {self} is not assigned to an "
            f"attribute of module {self._module_name!r}; define it at module level"
        )
        raise ProgrammingError(msg)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class RunnerAlreadyStartedError(Exception):
    """Raised by ``start()`` when the runner is already started."""


class NotificationPullingError(Exception):
    """A follower failed to read a leader's notification log (in a runner's thread)."""


class NotificationConvertingError(Exception):
    """A follower failed to decode a leader's notifications (in a runner's thread)."""


class EventProcessingError(Exception):
    """A follower failed to process events (in a runner's thread)."""


class UnknownApplicationError(KeyError):
    """Raised by ``Runner.get()`` for an application the runner does not have."""

    def __str__(self) -> str:
        """Return the message without the quotes KeyError would add."""
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------
# Processing one leader's notifications: the single implementation of every runner
# ---------------------------------------------------------------------------

# The stages of processing, which the threaded runners report their errors by.
PULL, CONVERT, PROCESS = "pull", "convert", "process"


class _LeaderFeed(Generic[TAggregateID]):
    """One follower's progress through one leader's log, and how it is advanced.

    ``position`` is the last notification id processed (or passed over as not of the
    follower's topics). Prompts are received from any thread; the work is done by one
    thread at a time. A prompt either asks the feed to read the leader's log after
    ``position`` or, with ``keep_recordings``, delivers the new events to process directly.

    With ``as_read`` as well, what is delivered is processed exactly as a read of the log
    would be: the delivered notifications (the bytes the leader wrote) are decoded with the
    follower's mapper, and any id a prompt doesn't carry (of a topic the leader doesn't
    notify, written by another process, or left by a rolled-back transaction) is read from
    the log first. So only the read itself is skipped (9.5.6 difference: delivered
    notifications processed without reading them back).

    A batch is recorded only if nothing of it was recorded meanwhile (the tracking record
    is a compare-and-set, see :class:`~eventsourcing.persistence.BatchTracking`). A batch
    refused because another process recorded a later position is not an error: the feed
    moves on to that position, and the policy's cached aggregates, which the other process
    may have changed, are dropped (9.5.6 difference: refused batches are not errors).
    """

    def __init__(
        self,
        follower: Follower[TAggregateID],
        leader_name: str,
        position: int | None,
        *,
        keep_recordings: bool = False,
        as_read: bool = False,
        max_inbox: int = 10_000,
    ):
        self.follower = follower
        self.leader_name = leader_name
        self.position = position
        self.stage = PULL
        # 9.5.6's runners have the follower pull_and_process() on every prompt: an
        # override of it is called so (and an override of pull_notifications() for every
        # event), with nothing delivered kept.
        follower_cls = type(follower)
        self.calls_pull_and_process = (
            as_read and follower_cls.pull_and_process is not Follower.pull_and_process
        )
        overrides_pull = (
            follower_cls.pull_notifications is not Follower.pull_notifications
            or self.calls_pull_and_process
        )
        self.keep_recordings = keep_recordings and not (as_read and overrides_pull)
        self.as_read = as_read
        self.max_inbox = max_inbox
        self._lock = threading.Lock()
        self._must_read_log = False
        self._inbox: list[RecordingEvent[TAggregateID]] = []
        self._inbox_events = 0  # held in the inbox: at most about max_inbox

    # -- receiving (any thread) ------------------------------------------------------

    def receive(self, recording_event: RecordingEvent[TAggregateID]) -> None:
        """Note newly recorded events of the leader."""
        with self._lock:
            if not self.keep_recordings:
                self._must_read_log = True
            elif self._inbox_events < self.max_inbox:
                self._inbox.append(recording_event)
                self._inbox_events += len(recording_event.recordings)
            else:
                # Too far behind to hold the events: they are all in the log anyway.
                self._inbox.clear()
                self._inbox_events = 0
                self._must_read_log = True

    def request_catch_up(self) -> None:
        """Ask for everything after ``position`` to be read from the log."""
        with self._lock:
            self._must_read_log = True

    @property
    def has_work(self) -> bool:
        """Whether anything has been received and not yet processed."""
        return self._must_read_log or bool(self._inbox)

    # -- working (one thread at a time) -----------------------------------------------

    def process_pending(self, should_stop: Callable[[], bool] = bool) -> None:
        """Process what has been received, in batches, checking ``should_stop`` between."""
        with self._lock:
            must_read_log, self._must_read_log = self._must_read_log, False
            recording_events, self._inbox = self._inbox, []
            self._inbox_events = 0
        if must_read_log:
            self.catch_up(should_stop=should_stop)
        if recording_events:
            self._process_recording_events(recording_events, should_stop)

    def catch_up(self, stop: int | None = None, should_stop: Callable[[], bool] = bool) -> None:
        """Read and process the log after ``position`` (up to ``stop``), batch by batch."""
        if self.calls_pull_and_process:
            self.stage = PROCESS
            self.follower.pull_and_process(self.leader_name)
            self.position = self.follower.recorder.max_tracking_id(self.leader_name)
            return
        batch_size = self.follower.process_batch_size
        while True:
            self.stage = PULL
            notifications, exhausted = self._pull(stop, batch_size)
            for i in range(0, len(notifications), batch_size):
                if not self._process_notifications(notifications[i : i + batch_size]):
                    # Refused: another process recorded a position, perhaps inside this
                    # batch. What it didn't process must be read again from there.
                    exhausted = False
                    break
            if exhausted or should_stop():
                return

    def _pull(self, stop: int | None, batch_size: int) -> tuple[list[Notification], bool]:
        """Read about a batch of notifications; also say whether the log was exhausted."""
        follower = self.follower
        pages = follower.pull_notifications(
            self.leader_name, start=self.position, stop=stop, inclusive_of_start=False
        )
        reader = follower.readers.get(self.leader_name)
        page_size = reader.section_size if reader is not None else 1
        pulled: list[Notification] = []
        for page in pages:
            pulled.extend(page)
            # A short page is the end of the log: don't ask again just to get nothing.
            if len(page) < page_size:
                return pulled, True
            if len(pulled) >= batch_size:
                return pulled, False
        return pulled, True

    def _process_notifications(self, notifications: Sequence[Notification]) -> bool:
        """Process and record a batch; say whether it was recorded (not refused)."""
        follower = self.follower
        self.stage = CONVERT
        selected = follower.filter_received_notifications(notifications)
        jobs = follower.convert_notifications(self.leader_name, selected)
        return self._record(jobs, notifications[-1].id)

    def _process_recording_events(
        self,
        recording_events: list[RecordingEvent[TAggregateID]],
        should_stop: Callable[[], bool],
    ) -> None:
        """Process delivered events, reading gaps from the log; batch across prompts.

        Ids decide, not the order prompts arrive in (concurrent saves can notify out of
        order): events at or before the position are passed over as processed, and
        anything missing before a prompt's first event (with ``as_read``, before any of
        its events) is read from the log.
        """
        topics = self.follower.topics
        batch_size = self.follower.process_batch_size
        as_read = self.as_read
        taken: list[Recording[TAggregateID]] = []
        horizon = self.position or 0  # the last id taken into the batch (or processed)
        for recording_event in recording_events:
            recordings = recording_event.recordings
            if not recordings or recordings[-1].notification.id <= horizon:
                continue  # stale: seen already
            previous = recording_event.previous_max_notification_id
            first_id = recordings[0].notification.id
            if previous is None or previous > horizon or first_id > horizon + 1:
                # Something was recorded that no prompt delivered: read it from the log.
                horizon = self._read_gap(taken, horizon, first_id, should_stop)
            for recording in recordings:
                notification = recording.notification
                notification_id = notification.id
                if notification_id <= horizon:
                    continue
                if as_read and notification_id > horizon + 1:
                    horizon = self._read_gap(taken, horizon, notification_id, should_stop)
                    if notification_id <= horizon:
                        continue
                horizon = notification_id
                if not topics or notification.topic in topics:
                    taken.append(recording)
            if len(taken) >= batch_size:
                horizon = self._flush(taken, horizon)
            if should_stop():
                break
        self._flush(taken, horizon)

    def _read_gap(
        self,
        taken: list[Recording[TAggregateID]],
        horizon: int,
        next_id: int,
        should_stop: Callable[[], bool],
    ) -> int:
        """Record what is taken, then read the log up to ``next_id``; return the position."""
        self._flush(taken, horizon)
        self.catch_up(stop=next_id - 1, should_stop=should_stop)
        return self.position or 0

    def _flush(self, taken: list[Recording[TAggregateID]], horizon: int) -> int:
        """Record the events taken so far, up to ``horizon``; return the new position."""
        if horizon > (self.position or 0):
            if not self._record(self._jobs(taken), horizon):
                # Refused: what another process left undone is read from the log.
                self.request_catch_up()
            taken.clear()
        return self.position or 0

    def _jobs(self, taken: list[Recording[TAggregateID]]) -> list[ProcessingJob[TAggregateID]]:
        """The processing jobs of delivered events (decoded afresh, with ``as_read``)."""
        leader_name = self.leader_name
        if self.as_read:
            self.stage = CONVERT
            follower = self.follower
            notifications = [recording.notification for recording in taken]
            selected = follower.filter_received_notifications(notifications)
            return follower.convert_notifications(leader_name, selected)
        return [
            (recording.domain_event, Tracking(leader_name, recording.notification.id))
            for recording in taken
        ]

    def _record(self, jobs: list[ProcessingJob[TAggregateID]], last_id: int) -> bool:
        """Process ``jobs`` and record them with the position ``last_id``, atomically.

        Return False if the batch was refused because another process had recorded a
        later position meanwhile (which is then the feed's position).
        """
        follower = self.follower
        self.stage = PROCESS
        try:
            if follower.processes_each_event:
                for domain_event, tracking in jobs:
                    follower.process_event(domain_event, tracking)
                    self.position = tracking.notification_id
            elif jobs:
                follower.process_events(jobs, Tracking(self.leader_name, last_id))
        except IntegrityError:
            if not self._resynchronise():
                raise
            return False
        # With no jobs (all of other topics), moving on needs no write: the
        # notifications would be passed over again.
        self.position = last_id
        return True

    def _resynchronise(self) -> bool:
        """After a refused batch, adopt a position recorded by someone else, if any."""
        recorded = self.follower.recorder.max_tracking_id(self.leader_name)
        if recorded is not None and (self.position is None or recorded > self.position):
            self.position = recorded
            self.follower.forget_policy_cache()
            return True
        return False


# ---------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------


class RunnerState(enum.Enum):
    """The lifecycle of a runner: READY -> STARTED -> STOPPED -> STARTED -> ..."""

    READY = "ready"
    STARTED = "started"
    STOPPED = "stopped"


class Runner(ABC, Generic[TAggregateID]):
    """Runs a :class:`System` with the environment ``env``.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. A stopped runner
    can be started again.
    """

    def __init__(self, system: System, env: EnvType | None = None):
        """Prepare to run ``system``."""
        self.system = system
        self.env = env
        self.state = RunnerState.READY

    @property
    def is_started(self) -> bool:
        """Whether the runner is started (and not stopped since)."""
        return self.state is RunnerState.STARTED

    @abstractmethod
    def start(self) -> None:
        """Start the runner; subclasses call this first.

        Raises :class:`RunnerAlreadyStartedError` if the runner is started already.
        """
        if self.state is RunnerState.STARTED:
            msg = (
                f"{type(self).__name__} is already started: stop() it before starting it "
                "again, or use a new runner"
            )
            raise RunnerAlreadyStartedError(msg)
        self.state = RunnerState.STARTED

    @abstractmethod
    def stop(self) -> None:
        """Stop the runner; subclasses call this last. Stopping twice does nothing more."""
        self.state = RunnerState.STOPPED

    @abstractmethod
    def get(self, cls: type[TApplication]) -> TApplication:
        """Return the runner's instance of the application class ``cls``."""

    def __enter__(self) -> Self:
        """Start the runner."""
        self.start()
        return self

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        """Stop the runner."""
        self.stop()


class _InProcessRunner(Runner[TAggregateID]):
    """What the in-process runners share: the applications, their wiring and their feeds.

    Every application is constructed in ``__init__`` (followers, then leaders, then the
    others) and again when a stopped runner is started. Starting wires each follower to
    its leaders' notification logs and gives it one feed per leader, which first catches
    up with the backlog. Subclasses decide where feeds are processed.
    """

    # Feeds process the notifications prompts deliver as if read from the log (see
    # _LeaderFeed); the New runners process the delivered domain events themselves.
    keep_recordings: ClassVar[bool] = True
    as_read: ClassVar[bool] = True
    QUEUE_MAX_SIZE: ClassVar[int] = 0  # events held per feed; 0 means 10,000

    def __init__(self, system: System, env: EnvType | None = None):
        """Construct every application of ``system``."""
        super().__init__(system, env)
        self.apps: dict[str, Application[Any]] = {}
        self._feeds: dict[str, list[_LeaderFeed[Any]]] = {}
        self._feeds_by_leader: dict[str, list[_LeaderFeed[Any]]] = {}
        self._construct_apps()

    def _construct_apps(self) -> None:
        system = self.system
        try:
            for name in system.followers:
                self.apps[name] = system.follower_cls(name)(env=self.env)
            for name in system.leaders_only:
                self.apps[name] = system.leader_cls(name)(env=self.env)
            for name in system.singles:
                self.apps[name] = system.get_app_cls(name)(env=self.env)
        except BaseException:
            self._close_apps()
            raise

    def start(self) -> None:
        """Wire the applications together, then start processing (and catching up).

        A stopped runner constructs its applications again. If starting fails (for example
        a policy error while catching up, with a single-threaded runner), the runner is
        left stopped, with its applications closed, and can be started again.
        """
        super().start()
        try:
            if not self.apps:
                self._construct_apps()
            self._wire()
            self._start_processing()
        except BaseException:
            self._halt()
            raise

    def _wire(self) -> None:
        max_inbox = self.QUEUE_MAX_SIZE or 10_000
        self._feeds = {}
        self._feeds_by_leader = {}
        for leader_name, follower_name in self.system.edges:
            leader = self._leader(leader_name)
            follower = cast("Follower[Any]", self.apps[follower_name])
            follower.follow(leader_name, leader.notification_log)
            feed: _LeaderFeed[Any] = _LeaderFeed(
                follower,
                leader_name,
                follower.recorder.max_tracking_id(leader_name),
                keep_recordings=self.keep_recordings,
                as_read=self.as_read,
                max_inbox=max_inbox,
            )
            feed.request_catch_up()
            self._feeds.setdefault(follower_name, []).append(feed)
            self._feeds_by_leader.setdefault(leader_name, []).append(feed)

    def _leader(self, name: str) -> Leader[Any]:
        return cast("Leader[Any]", self.apps[name])

    @abstractmethod
    def _start_processing(self) -> None:
        """Have the leaders prompt, and process the feeds."""

    def stop(self) -> None:
        """Stop processing and close every application."""
        if self.state is not RunnerState.STOPPED:
            self._halt()

    def _halt(self) -> None:
        try:
            self._stop_processing()
        finally:
            self._close_apps()
            self._feeds = {}
            self._feeds_by_leader = {}
            super().stop()

    def _stop_processing(self) -> None:
        """Stop processing the feeds (nothing to do when it happens inside save())."""

    def _close_apps(self) -> None:
        apps = list(self.apps.values())
        self.apps.clear()
        for app in apps:
            app.close()

    def get(self, cls: type[TApplication]) -> TApplication:
        """Return the runner's instance of ``cls``, which is looked up by ``cls.name``."""
        name = getattr(cls, "name", None)
        app = self.apps.get(name) if isinstance(name, str) else None
        if app is None:
            raise UnknownApplicationError(self._unknown_application_message(cls))
        if not isinstance(app, cls):
            msg = (
                f"The application named {name!r} in this runner is {type(app)}, which is not "
                f"an instance of {cls}: two classes share the name {name!r}"
            )
            raise TypeError(msg)
        return app

    def _unknown_application_message(self, cls: type[Any]) -> str:
        if self.state is RunnerState.STOPPED:
            return (
                f"Can't get {cls}: {type(self).__name__} is stopped and its applications "
                "are closed; start() it again first"
            )
        return (
            f"Application class {cls} is not in this runner's system, which has "
            f"{list(self.system.nodes)}; add it to a pipe of the System"
        )


class SingleThreadedRunner(_InProcessRunner[TAggregateID], RecordingEventReceiver[TAggregateID]):
    """Runs a system in the threads that save: processing happens inside ``save()``.

    Every leader prompts the runner; the runner has each follower of the leader process
    what is new, and carries on until nothing is left, so a whole system settles before
    ``save()`` returns and a policy error propagates out of ``save()``. Prompts that arrive
    while processing (from process applications) are queued, not nested.
    """

    def __init__(self, system: System, env: EnvType | None = None):
        """Construct every application of ``system``."""
        super().__init__(system, env)
        self._recording_events_received: list[RecordingEvent[TAggregateID]] = []
        self._recording_events_received_lock = threading.Lock()
        self._processing_lock = threading.Lock()

    def _start_processing(self) -> None:
        with self._recording_events_received_lock:
            # Prompts left from before a restart are about applications closed since.
            self._recording_events_received = []
        for name in self.system.leaders:
            self._leader(name).lead(self)
        self._process_received()  # catch up with the backlog

    def receive_recording_event(self, new_recording_event: RecordingEvent[TAggregateID]) -> None:
        """Queue the prompt; process everything queued unless already doing so."""
        with self._recording_events_received_lock:
            self._recording_events_received.append(new_recording_event)
        self._process_received()

    def _process_received(self) -> None:
        # Whoever holds the lock processes everything queued, including prompts from
        # other threads; after releasing it, look again for prompts that came too late.
        while self._processing_lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._processing_lock.release()
            if not self._recording_events_received:
                return

    def _drain(self) -> None:
        feeds_by_leader = self._feeds_by_leader
        all_feeds = [feed for feeds in self._feeds.values() for feed in feeds]
        while True:
            with self._recording_events_received_lock:
                received, self._recording_events_received = self._recording_events_received, []
            for recording_event in received:
                for feed in feeds_by_leader.get(recording_event.application_name, ()):
                    feed.receive(recording_event)
            busy = [feed for feed in all_feeds if feed.has_work]
            if not busy and not received:
                return
            for feed in busy:
                feed.process_pending()


class NewSingleThreadedRunner(SingleThreadedRunner[TAggregateID]):
    """A :class:`SingleThreadedRunner` whose followers process the events a prompt carries.

    The log is read only to fill a gap (events recorded without a prompt reaching the
    follower); a prompt older than one already seen is ignored. 9.5.6 difference: New
    runners' internals.
    """

    as_read = False


class MultiThreadedRunnerThread(RecordingEventReceiver[TAggregateID], threading.Thread):
    """Processes one follower's feeds in its own thread, woken by its leaders' prompts.

    An error ends the thread: it is kept in ``error``, wrapped in the exception class the
    runner gives for the stage that failed, and ``has_errored`` is set.
    """

    # The longest wait for a leader's saves in flight (a save blocked on a lock).
    GROUP_COMMIT_TIMEOUT: ClassVar[float] = 1.0
    # How long the thread goes on waiting while its leaders save back to back, so that
    # one commit takes in several saves (it never waits when no save is in flight).
    GROUP_COMMIT_LINGER: ClassVar[float] = 0.005

    def __init__(
        self,
        follower: Follower[Any],
        has_errored: threading.Event,
        *,
        feeds: Sequence[_LeaderFeed[Any]] | None = None,
        error_classes: Mapping[str, type[Exception]] | None = None,
        leaders: Sequence[Leader[Any]] = (),
    ):
        """Process ``follower``'s ``feeds`` (by default, one per leader it follows).

        Before processing, the thread waits for the saves of ``leaders`` in flight to end
        (a group commit: their events are then processed in one batch, not one commit each;
        when no save is in flight, as at low rates, it doesn't wait).
        """
        super().__init__(daemon=True, name=f"{follower.name} follower")
        self.follower = follower
        self.has_errored = has_errored
        self.error: Exception | None = None
        self.is_stopping = threading.Event()
        self.has_started = threading.Event()
        self.is_prompted = threading.Event()
        if feeds is None:
            feeds = [
                _LeaderFeed(follower, name, follower.recorder.max_tracking_id(name))
                for name in follower.readers
            ]
        self.feeds = {feed.leader_name: feed for feed in feeds}
        self.error_classes = error_classes or {}
        self.leaders = list(leaders)
        if any(feed.has_work for feed in feeds):
            self.is_prompted.set()

    def run(self) -> None:
        """Wait for prompts and process the feeds, until stopped or failed."""
        self.has_started.set()
        feed: _LeaderFeed[Any] | None = None
        should_stop = self.is_stopping.is_set
        try:
            while True:
                self.is_prompted.wait()
                if should_stop():
                    return
                for leader in self.leaders:
                    leader.wait_for_saves_in_flight(
                        self.GROUP_COMMIT_TIMEOUT, self.GROUP_COMMIT_LINGER
                    )
                # Cleared before processing, so a prompt that comes meanwhile is not lost.
                self.is_prompted.clear()
                for feed in self.feeds.values():
                    if feed.has_work:
                        feed.process_pending(should_stop)
        except Exception as error:
            self._fail(error, feed.stage if feed is not None else PROCESS)

    def _fail(self, error: Exception, stage: str) -> None:
        error_class = self.error_classes.get(stage, EventProcessingError)
        wrapped = error_class(str(error))
        wrapped.__cause__ = error
        for note in getattr(error, "__notes__", ()):
            wrapped.add_note(note)
        self.error = wrapped
        self.has_errored.set()

    def receive_recording_event(self, new_recording_event: RecordingEvent[TAggregateID]) -> None:
        """Hand the prompt to the feed of its leader and wake the thread."""
        feed = self.feeds.get(new_recording_event.application_name)
        if feed is not None:
            feed.receive(new_recording_event)
            self.is_prompted.set()

    def stop(self) -> None:
        """Ask the thread to finish after the current batch."""
        self.is_stopping.set()
        self.is_prompted.set()


class MultiThreadedRunner(_InProcessRunner[TAggregateID]):
    """Runs each follower in its own thread; leaders' prompts wake the threads.

    A woken thread first waits for its leaders' saves in flight, so that their events are
    processed in one batch: one commit where there would be one per save. While saves
    follow one another without a pause, it waits for those too, for up to
    ``GROUP_COMMIT_LINGER`` seconds of :class:`MultiThreadedRunnerThread`. When no save is
    in flight (at low rates) it doesn't wait.

    ``save()`` returns as soon as the events are recorded. A processing error stops the
    follower's thread and sets ``has_errored``; :meth:`stop` (and :meth:`watch_for_errors`)
    re-raise it as :class:`EventProcessingError`.
    """

    JOIN_TIMEOUT: ClassVar[float] = 10.0
    error_classes: ClassVar[Mapping[str, type[Exception]]] = {
        PULL: EventProcessingError,
        CONVERT: EventProcessingError,
        PROCESS: EventProcessingError,
    }

    def __init__(self, system: System, env: EnvType | None = None):
        """Construct every application of ``system``."""
        self.has_errored = threading.Event()
        self.threads: dict[str, MultiThreadedRunnerThread[TAggregateID]] = {}
        try:
            super().__init__(system, env)
        except BaseException:
            self.has_errored.set()
            raise

    def _start_processing(self) -> None:
        self.has_errored.clear()
        self.threads = {
            name: MultiThreadedRunnerThread(
                cast("Follower[Any]", self.apps[name]),
                self.has_errored,
                feeds=self._feeds.get(name, ()),
                error_classes=self.error_classes,
                leaders=[self._leader(leader) for leader in self.system.follows.get(name, ())],
            )
            for name in self.system.followers
        }
        # Prompts that come before a thread runs wait in its feeds.
        for leader_name, follower_name in self.system.edges:
            self._leader(leader_name).lead(self.threads[follower_name])
        for thread in self.threads.values():
            thread.start()
        for thread in self.threads.values():
            thread.has_started.wait()

    @property
    def all_threads(self) -> list[MultiThreadedRunnerThread[TAggregateID]]:
        """Every thread of the runner."""
        return list(self.threads.values())

    def watch_for_errors(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` for a thread to fail; if one did, stop (which raises).

        Returns False when nothing failed within the timeout.
        """
        if self.has_errored.wait(timeout=timeout):
            self.stop()
        return self.has_errored.is_set()

    def _stop_processing(self) -> None:
        for thread in self.threads.values():
            thread.stop()
        for thread in self.threads.values():
            if thread.is_alive():
                thread.join(timeout=self.JOIN_TIMEOUT)

    def stop(self) -> None:
        """Stop the threads, close the applications, and re-raise a thread's error."""
        if self.state is not RunnerState.STOPPED:
            self._halt()
            self.reraise_thread_errors()

    def reraise_thread_errors(self) -> None:
        """Raise the error of the first thread that failed, if any did."""
        for thread in self.threads.values():
            if thread.error is not None:
                raise thread.error


class NewMultiThreadedRunner(
    MultiThreadedRunner[TAggregateID], RecordingEventReceiver[TAggregateID]
):
    """A :class:`MultiThreadedRunner` whose followers process the events a prompt carries.

    The log is read only to fill a gap. Errors are reported by stage, as
    :class:`NotificationPullingError`, :class:`NotificationConvertingError` or
    :class:`EventProcessingError`. 9.5.6 difference: New runners' internals (one thread
    per follower, no :class:`PullingThread` or :class:`ConvertingThread`).
    """

    as_read = False
    QUEUE_MAX_SIZE: ClassVar[int] = 0
    error_classes: ClassVar[Mapping[str, type[Exception]]] = {
        PULL: NotificationPullingError,
        CONVERT: NotificationConvertingError,
        PROCESS: EventProcessingError,
    }

    def receive_recording_event(self, new_recording_event: RecordingEvent[TAggregateID]) -> None:
        """Pass a prompt to the threads of the leader's followers."""
        for follower_name in self.system.leads.get(new_recording_event.application_name, ()):
            thread = self.threads.get(follower_name)
            if thread is not None:
                thread.receive_recording_event(new_recording_event)


# ---------------------------------------------------------------------------
# Pipeline threads: the building blocks of 9.x's NewMultiThreadedRunner, for code that
# assembles its own pipeline (our runners use _LeaderFeed instead)
# ---------------------------------------------------------------------------

#: What a :class:`PullingThread` passes on: new events as a leader delivered them, a list
#: of notifications read from its log, or None to stop.
ConvertingJob = RecordingEvent[TAggregateID] | Sequence[Notification] | None


class _PipelineThread(threading.Thread):
    """A daemon thread that takes jobs from a queue until it is stopped or fails.

    A failure is kept in ``error``, wrapped in ``error_class`` with the original as its
    cause, and ``has_errored`` is set.
    """

    error_class: ClassVar[type[Exception]] = EventProcessingError

    def __init__(self, has_errored: threading.Event, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.error: Exception | None = None
        self.has_errored = has_errored
        self.is_stopping = threading.Event()
        self.has_started = threading.Event()

    def run(self) -> None:
        """Do the work until stopped; keep the first error and signal it."""
        self.has_started.set()
        try:
            self._work()
        except Exception as error:
            self.error = self.error_class(str(error))
            self.error.__cause__ = error
            self.has_errored.set()

    @abstractmethod
    def _work(self) -> None:
        """Take and do jobs until told to stop."""


class PullingThread(_PipelineThread, Generic[TAggregateID]):
    """Passes one leader's new events on to a converting queue, in notification id order.

    The leader prompts it (:meth:`receive_recording_event`) with the events it recorded.
    Events at or before the last notification id passed on are dropped as seen; anything
    before a prompt's first event that no prompt delivered is read from the leader's log
    first and passed on as lists of notifications. Ids decide, not the order in which
    prompts arrive, so an out-of-order prompt is never lost (9.5.6 difference: prompts
    judged by notification id). At most 100
    prompts wait; more set ``overflow_event`` and are dropped, to be read from the log.
    Errors are :class:`NotificationPullingError`.
    """

    error_class = NotificationPullingError

    def __init__(
        self,
        converting_queue: Queue[ConvertingJob[TAggregateID]],
        follower: Follower[Any],
        leader_name: str,
        has_errored: threading.Event,
    ):
        """Pass ``leader_name``'s events for ``follower`` on to ``converting_queue``."""
        super().__init__(has_errored, name=f"{follower.name} pulling {leader_name}")
        self.converting_queue = converting_queue
        self.follower = follower
        self.leader_name = leader_name
        self.overflow_event = threading.Event()
        self.recording_event_queue: Queue[RecordingEvent[TAggregateID] | None] = Queue(100)
        self.mapper = follower.mappers[leader_name]
        self.previous_max_notification_id = follower.recorder.max_tracking_id(leader_name)

    def _work(self) -> None:
        while not self.is_stopping.is_set():
            recording_event = self.recording_event_queue.get()
            if recording_event is None:
                return
            self._pass_on(recording_event)

    def _pass_on(self, recording_event: RecordingEvent[TAggregateID]) -> None:
        recordings = self._unseen(recording_event.recordings)
        if not recordings:
            return
        first_id = recordings[0].notification.id
        previous = recording_event.previous_max_notification_id
        position = self.previous_max_notification_id or 0
        if previous is None or previous > position or first_id > position + 1:
            self._pull(stop=first_id - 1)
            recordings = self._unseen(recordings)
        self.converting_queue.put(RecordingEvent(self.leader_name, recordings, position))
        self.previous_max_notification_id = recordings[-1].notification.id

    def _unseen(self, recordings: list[Recording[TAggregateID]]) -> list[Recording[TAggregateID]]:
        position = self.previous_max_notification_id or 0
        return [r for r in recordings if r.notification.id > position]

    def _pull(self, stop: int) -> None:
        """Pass on what the leader's log holds after the position, up to ``stop``."""
        for notifications in self.follower.pull_notifications(
            self.leader_name,
            start=self.previous_max_notification_id,
            stop=stop,
            inclusive_of_start=False,
        ):
            self.converting_queue.put(notifications)
            self.previous_max_notification_id = notifications[-1].id

    def receive_recording_event(self, recording_event: RecordingEvent[TAggregateID]) -> None:
        """Queue a prompt of the leader without blocking (see ``overflow_event``)."""
        try:
            self.recording_event_queue.put(recording_event, timeout=0)
        except Full:
            self.overflow_event.set()

    def stop(self) -> None:
        """Ask the thread to finish."""
        self.is_stopping.set()
        self.recording_event_queue.put(None)


class ConvertingThread(_PipelineThread, Generic[TAggregateID]):
    """Turns what a :class:`PullingThread` passes on into processing jobs for the follower.

    Each job is a ``(domain_event, tracking)`` pair; events of topics the follower does not
    follow are left out. Errors are :class:`NotificationConvertingError`.
    """

    error_class = NotificationConvertingError

    def __init__(
        self,
        converting_queue: Queue[ConvertingJob[TAggregateID]],
        processing_queue: Queue[list[ProcessingJob[TAggregateID]] | None],
        follower: Follower[Any],
        leader_name: str,
        has_errored: threading.Event,
    ):
        """Convert ``leader_name``'s events from ``converting_queue`` to ``processing_queue``."""
        super().__init__(has_errored, name=f"{follower.name} converting {leader_name}")
        self.converting_queue = converting_queue
        self.processing_queue = processing_queue
        self.follower = follower
        self.leader_name = leader_name
        self.mapper = follower.mappers[leader_name]

    def _work(self) -> None:
        while True:
            job = self.converting_queue.get()
            if job is None or self.is_stopping.is_set():
                return
            processing_jobs = self._convert(job)
            if processing_jobs:
                self.processing_queue.put(processing_jobs)

    def _convert(
        self, job: RecordingEvent[TAggregateID] | Sequence[Notification]
    ) -> list[ProcessingJob[TAggregateID]]:
        if not isinstance(job, RecordingEvent):
            return self.follower.convert_notifications(self.leader_name, job)
        topics = self.follower.topics
        return [
            (r.domain_event, Tracking(job.application_name, r.notification.id))
            for r in job.recordings
            if not topics or r.notification.topic in topics
        ]

    def stop(self) -> None:
        """Ask the thread to finish."""
        self.is_stopping.set()
        self.converting_queue.put(None)


class ProcessingThread(_PipelineThread, Generic[TAggregateID]):
    """Has the follower process each job from a processing queue, one event at a time.

    Errors are :class:`EventProcessingError`.
    """

    def __init__(
        self,
        processing_queue: Queue[list[ProcessingJob[TAggregateID]] | None],
        follower: Follower[Any],
        has_errored: threading.Event,
    ):
        """Process ``follower``'s jobs from ``processing_queue``."""
        super().__init__(has_errored, name=f"{follower.name} processing")
        self.processing_queue = processing_queue
        self.follower = follower

    def _work(self) -> None:
        while True:
            jobs = self.processing_queue.get()
            if jobs is None or self.is_stopping.is_set():
                return
            for domain_event, tracking in jobs:
                self.follower.process_event(domain_event, tracking)

    def stop(self) -> None:
        """Ask the thread to finish."""
        self.is_stopping.set()
        self.processing_queue.put(None)

"""The in-process runners: single-threaded and multi-threaded, re-reading or delivered."""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast

from eventsourcing.application import (
    Application,
    TApplication,
)
from eventsourcing.domain import TAggregateID
from eventsourcing.system.definition import System
from eventsourcing.system.errors import (
    EventProcessingError,
    NotificationConvertingError,
    NotificationPullingError,
    RunnerAlreadyStartedError,
    UnknownApplicationError,
)
from eventsourcing.system.feed import CONVERT, PROCESS, PULL, LeaderFeed
from eventsourcing.system.prompts import RecordingEvent, RecordingEventReceiver
from eventsourcing.system.roles import Follower, Leader
from eventsourcing.utils import EnvType

if TYPE_CHECKING:
    from typing import Self


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
    # LeaderFeed); the New runners process the delivered domain events themselves.
    keep_recordings: ClassVar[bool] = True
    as_read: ClassVar[bool] = True
    QUEUE_MAX_SIZE: ClassVar[int] = 0  # events held per feed; 0 means 10,000

    def __init__(self, system: System, env: EnvType | None = None):
        """Construct every application of ``system``."""
        super().__init__(system, env)
        self.apps: dict[str, Application[Any]] = {}
        self._feeds: dict[str, list[LeaderFeed[Any]]] = {}
        self._feeds_by_leader: dict[str, list[LeaderFeed[Any]]] = {}
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
            feed: LeaderFeed[Any] = LeaderFeed(
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
        feeds: Sequence[LeaderFeed[Any]] | None = None,
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
                LeaderFeed(follower, name, follower.recorder.max_tracking_id(name))
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
        feed: LeaderFeed[Any] | None = None
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

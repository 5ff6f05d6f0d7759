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

from eventsourcing.projection import ProcessingJob as ProcessingJob

# The names of the module this package was, as explicit re-exports.
# isort: off
from eventsourcing.system.prompts import (
    RecordingEvent as RecordingEvent,
    RecordingEventReceiver as RecordingEventReceiver,
)
from eventsourcing.system.reader import NotificationLogReader as NotificationLogReader
from eventsourcing.system.roles import (
    Follower as Follower,
    Leader as Leader,
    ProcessApplication as ProcessApplication,
)
from eventsourcing.system.definition import System as System
from eventsourcing.system.errors import (
    EventProcessingError as EventProcessingError,
    NotificationConvertingError as NotificationConvertingError,
    NotificationPullingError as NotificationPullingError,
    RunnerAlreadyStartedError as RunnerAlreadyStartedError,
    UnknownApplicationError as UnknownApplicationError,
)
from eventsourcing.system.feed import (
    CONVERT as CONVERT,
    PROCESS as PROCESS,
    PULL as PULL,
    LeaderFeed as LeaderFeed,
    _LeaderFeed as _LeaderFeed,
)
from eventsourcing.system.runners import (
    MultiThreadedRunner as MultiThreadedRunner,
    MultiThreadedRunnerThread as MultiThreadedRunnerThread,
    NewMultiThreadedRunner as NewMultiThreadedRunner,
    NewSingleThreadedRunner as NewSingleThreadedRunner,
    Runner as Runner,
    RunnerState as RunnerState,
    SingleThreadedRunner as SingleThreadedRunner,
    _InProcessRunner as _InProcessRunner,
)
from eventsourcing.system.pipeline import (
    ConvertingJob as ConvertingJob,
    ConvertingThread as ConvertingThread,
    ProcessingThread as ProcessingThread,
    PullingThread as PullingThread,
    _PipelineThread as _PipelineThread,
)
# isort: on

__all__ = [
    "ConvertingJob",
    "ConvertingThread",
    "EventProcessingError",
    "Follower",
    "Leader",
    "LeaderFeed",
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

# The classes keep the topics they had when this package was one module, and have in 9.x
# ("eventsourcing.system:ProcessApplication"...): topics may be stored, and are compared,
# and errors are pickled between processes by them.
for _public_class in (
    ConvertingThread,
    EventProcessingError,
    Follower,
    Leader,
    MultiThreadedRunner,
    MultiThreadedRunnerThread,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    NotificationConvertingError,
    NotificationLogReader,
    NotificationPullingError,
    ProcessApplication,
    ProcessingThread,
    PullingThread,
    RecordingEvent,
    RecordingEventReceiver,
    Runner,
    RunnerAlreadyStartedError,
    RunnerState,
    SingleThreadedRunner,
    System,
    UnknownApplicationError,
):
    _public_class.__module__ = __name__
del _public_class

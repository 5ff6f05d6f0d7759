"""Every runner of a System, from one thread to worker processes on many machines.

- :class:`SingleThreadedRunner` (one process, processing inside ``save()``) and
  :class:`MultiThreadedRunner` (a thread per follower), with their ``New*`` variants;
- :class:`MultiProcessRunner`: an OS process per follower, prompted through
  ``PROMPT_TRANSPORT`` or multiprocessing queues;
- :class:`Worker`: the loop behind ``eventsourcing-runner run``, one per application on any
  machine, prompted through ``PROMPT_TRANSPORT`` (Redis Streams, kombu, LISTEN/NOTIFY) or
  polling; :class:`WorkerThreads` and :class:`WorkerLoop` run workers in threads of one
  process, :class:`WorkerProcesses` each in a process of its own.

:data:`RUNNERS` (:mod:`runners.table`) is the one table of them by name, which the command
line's ``--runner``, the pytest plugin's ``run_system(runner=...)`` and the runner tests use.

The in-process runners live in :mod:`eventsourcing.system` (for compatibility) and are
re-exported here, so that this is the one place to pick any runner from.
"""

from eventsourcing.system import (
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    Runner,
    SingleThreadedRunner,
)
from runners.errors import (
    ConfigurationError,
    NotShareableError,
    PolicyError,
    PromptTransportError,
    RunnerError,
    SystemTopicError,
    TransportConnectionError,
    UnknownApplicationNameError,
)
from runners.multiprocess import MultiProcessRunner
from runners.subprocesses import WorkerProcesses
from runners.table import RUNNERS
from runners.threads import WorkerLoop, WorkerThreads
from runners.transports import PromptTransport, open_transport
from runners.worker import Worker

__all__ = [
    "RUNNERS",
    "ConfigurationError",
    "MultiProcessRunner",
    "MultiThreadedRunner",
    "NewMultiThreadedRunner",
    "NewSingleThreadedRunner",
    "NotShareableError",
    "PolicyError",
    "PromptTransport",
    "PromptTransportError",
    "Runner",
    "RunnerError",
    "SingleThreadedRunner",
    "SystemTopicError",
    "TransportConnectionError",
    "UnknownApplicationNameError",
    "Worker",
    "WorkerLoop",
    "WorkerProcesses",
    "WorkerThreads",
    "open_transport",
]

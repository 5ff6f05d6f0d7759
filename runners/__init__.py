"""Every runner of a System, from one thread to worker processes on many machines.

- :class:`SingleThreadedRunner` (one process, processing inside ``save()``) and
  :class:`MultiThreadedRunner` (a thread per follower), with their ``New*`` variants;
- :class:`MultiProcessRunner`: an OS process per follower, prompted through
  ``PROMPT_TRANSPORT`` or multiprocessing queues;
- :class:`Worker`: the loop behind ``eventsourcing-runner run``, one per application on any
  machine, prompted through ``PROMPT_TRANSPORT`` (Redis Streams, kombu, LISTEN/NOTIFY) or
  polling.

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
from runners.transports import PromptTransport, open_transport
from runners.worker import Worker

__all__ = [
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
    "open_transport",
]

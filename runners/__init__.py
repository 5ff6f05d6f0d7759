"""Every runner of a System, from one thread to worker processes on many machines.

=========================  ===============================  ==================================
runner                     applications                     prompts
=========================  ===============================  ==================================
SingleThreadedRunner       one process, inside save()       direct call
MultiThreadedRunner        one thread per follower          in-process events
MultiProcessRunner         one OS process per follower      PROMPT_TRANSPORT, else queues
Worker (the CLI's ``run``)  one loop per worker, any machine  PROMPT_TRANSPORT (Redis Streams,
                                                            kombu, LISTEN/NOTIFY), or polling
=========================  ===============================  ==================================

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
    LeaseLostError,
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
    "LeaseLostError",
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

"""The one table of runners: every way to run a System, by the name users type.

``single``          :class:`~eventsourcing.system.SingleThreadedRunner`: in this process,
                    inside each ``save()``
``new-single``      :class:`~eventsourcing.system.NewSingleThreadedRunner`: the same, on the
                    events delivered
``threads``         :class:`~eventsourcing.system.MultiThreadedRunner`: a thread each
``new-threads``     :class:`~eventsourcing.system.NewMultiThreadedRunner`: the same, on the
                    events delivered
``processes``       :class:`~runners.multiprocess.MultiProcessRunner`: an OS process each
``workers``         :class:`~runners.subprocesses.WorkerProcesses`: ``eventsourcing-runner
                    run SYSTEM --app NAME`` each
``worker-loop``     :class:`~runners.threads.WorkerLoop`: one worker for all, in one thread
``worker-threads``  :class:`~runners.threads.WorkerThreads`: a worker each, in threads

The first four run followers that this process's own saves prompt; the others run
followers whose leaders write in any process (prompted through ``PROMPT_TRANSPORT``, or
polling). Each name means one runner. Two front ends keep the spellings their users have
always typed:

- the pytest plugin's ``run_system(runner=...)`` takes :data:`PLUGIN_RUNNERS`, names of this
  table;
- ``eventsourcing-runner run --runner`` takes the keys of :data:`CLI_RUNNERS`, where
  ``processes`` is this table's, and ``single`` and ``threads`` are the command line's own
  spellings of ``worker-loop`` and ``worker-threads`` (a command line runs workers: its
  leaders write in other processes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.system import (
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    SingleThreadedRunner,
)
from runners.errors import ConfigurationError, did_you_mean
from runners.multiprocess import MultiProcessRunner
from runners.subprocesses import WorkerProcesses
from runners.threads import WorkerLoop, WorkerThreads

__all__ = ["CLI_RUNNERS", "IN_PROCESS", "PLUGIN_RUNNERS", "RUNNERS", "runner_class"]

#: Every runner, by name.
RUNNERS: dict[str, type[Any]] = {
    "single": SingleThreadedRunner,
    "new-single": NewSingleThreadedRunner,
    "threads": MultiThreadedRunner,
    "new-threads": NewMultiThreadedRunner,
    "processes": MultiProcessRunner,
    "workers": WorkerProcesses,
    "worker-loop": WorkerLoop,
    "worker-threads": WorkerThreads,
}

#: The runners whose followers are prompted by the saves of this process (in memory too).
IN_PROCESS = ("single", "new-single", "threads", "new-threads")

#: The runners of the pytest plugin's ``run_system``.
PLUGIN_RUNNERS = ("single", "threads", "processes", "workers")

#: ``eventsourcing-runner run --runner`` choices, and the runner each names.
CLI_RUNNERS: dict[str, str] = {
    "single": "worker-loop",
    "threads": "worker-threads",
    "processes": "processes",
}


def runner_class(name: str, choices: Sequence[str] = tuple(RUNNERS)) -> type[Any]:
    """The runner called ``name``, one of ``choices`` (default: any), or raise
    :class:`~runners.errors.ConfigurationError` with the choices and the closest one."""
    if name not in choices:
        hint = did_you_mean(name, choices)
        raise ConfigurationError(f"Unknown runner {name!r}: choose from {choices}.{hint}")
    return RUNNERS[name]
